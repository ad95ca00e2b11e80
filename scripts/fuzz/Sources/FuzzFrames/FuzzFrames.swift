import FuzzDriver
import WebSocketCodec

/// The frame decoder (server role, the protocol's limits), fed in the pieces the first byte
/// chooses, so a frame split anywhere is exercised too. It must end in an event, nil or an error,
/// never a trap.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrames(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let step = Int(data[0] % 16) + 1
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    var decoder = WebSocketDecoder(role: .server, maxMessageSize: 64 * 1024)
    var offset = 0
    while offset < bytes.count {
        let end = min(bytes.count, offset + step)
        decoder.feed(Array(bytes[offset..<end]))
        offset = end
        do {
            while let event = try decoder.nextEvent() { _ = event }
        } catch {
            return 0
        }
    }
    return 0
}

@_cdecl("FuzzFrames_main")
public func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc, argv) { data, size in data.map { fuzzFrames($0, size) } ?? 0 }
}
