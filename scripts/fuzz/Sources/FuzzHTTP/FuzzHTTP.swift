import FuzzDriver
import HTTPCodec

/// The HTTP/1.1 request parser with the server's limits, fed in pieces the first byte chooses;
/// pipelined requests are read until the input runs out or the parser refuses it.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let step = Int(data[0] % 32) + 1
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    var parser = HTTPRequestParser(maxHeadSize: 16 * 1024, maxBodySize: 1 << 20)
    var offset = 0
    while offset < bytes.count {
        let end = min(bytes.count, offset + step)
        parser.feed(Array(bytes[offset..<end]))
        offset = end
        do {
            while let request = try parser.nextRequest() { _ = request.head.path }
        } catch {
            return 0
        }
    }
    return 0
}

@_cdecl("FuzzHTTP_main")
public func entryPoint(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runLibFuzzer(argc, argv) { data, size in data.map { fuzzHTTP($0, size) } ?? 0 }
}
