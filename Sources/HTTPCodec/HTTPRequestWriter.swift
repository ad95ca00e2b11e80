// Client side: writing a request (the WebSocket upgrade, admin calls).

extension HTTPRequest {
    /// The request as bytes: request line, headers as given (CR, LF and NUL replaced by spaces so
    /// no value can inject a header), `Content-Length` when there is a body, then the body.
    public func serialized() -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(128 + head.headers.count * 32 + body.count)
        func appendSanitised(_ text: String) {
            for byte in text.utf8 { output.append(byte == 0x0D || byte == 0x0A || byte == 0x00 ? UInt8(ascii: " ") : byte) }
        }
        appendSanitised("\(head.method) \(head.target) HTTP/1.\(head.versionMinor)")
        output += [0x0D, 0x0A]
        for (name, value) in head.headers where !ASCII.equalsIgnoringCase(name, "Content-Length") {
            appendSanitised(name)
            output += Array(": ".utf8)
            appendSanitised(value)
            output += [0x0D, 0x0A]
        }
        if !body.isEmpty || head.method == "POST" || head.method == "PUT" {
            output += Array("Content-Length: \(body.count)\r\n".utf8)
        }
        output += [0x0D, 0x0A]
        output += body
        return output
    }
}
