import FuzzDriver
import LeaseholdServer

/// The inventory loader, as reload runs it on a file an admin wrote: an entry list or an error
/// naming the problem, never a trap, an endless walk or unbounded memory.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzInventory(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    _ = try? InventoryFile.parse(text)
    return 0
}

@_cdecl("FuzzInventory_main")
public func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc, argv) { data, size in data.map { fuzzInventory($0, size) } ?? 0 }
}
