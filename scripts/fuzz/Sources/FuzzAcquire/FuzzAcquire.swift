import FuzzDriver
import LeaseProtocol

/// A client message as the server reads it: JSON, then the acquire/release decoding. Whatever
/// parses must serialize and parse back to the same value.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAcquire(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    _ = ClientMessage.parse(bytes)
    if let value = try? JSONValue.parse(bytes) {
        guard let again = try? JSONValue.parse(value.serialized()), again == value else {
            fatalError("JSON does not round-trip: \(value.serialized())")
        }
    }
    return 0
}

@_cdecl("FuzzAcquire_main")
public func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc, argv) { data, size in data.map { fuzzAcquire($0, size) } ?? 0 }
}
