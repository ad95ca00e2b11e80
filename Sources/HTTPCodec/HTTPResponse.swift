// Response writer: status line, headers, Content-Length framing.

public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: HTTPHeaders
    public var body: [UInt8]

    public init(status: Int, headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public static func text(_ status: Int, _ body: String, contentType: String = "text/plain; charset=utf-8") -> HTTPResponse {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        return HTTPResponse(status: status, headers: headers, body: Array(body.utf8))
    }

    /// Statuses whose responses never carry a body or Content-Length (RFC 9110 §8.6, §15.3.5, §15.4.5).
    private var hasNoBody: Bool { status == 101 || status == 204 || status == 304 || (100..<200).contains(status) }

    /// The response as bytes. `Content-Length` and `Connection` are written here (caller-set ones
    /// are replaced), except for 101, whose `Connection: Upgrade` the caller provides.
    /// Header names and values are stripped of CR, LF and NUL so no value can inject a header.
    public func serialized(keepAlive: Bool) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(128 + headers.count * 32 + body.count)
        append("HTTP/1.1 \(status) \(Self.reasonPhrase(status))\r\n", to: &output)
        let isSwitchingProtocols = status == 101
        for (name, value) in headers {
            if !isSwitchingProtocols && (ASCII.equalsIgnoringCase(name, "Content-Length") || ASCII.equalsIgnoringCase(name, "Connection")) {
                continue
            }
            appendSanitised(name, to: &output)
            append(": ", to: &output)
            appendSanitised(value, to: &output)
            append("\r\n", to: &output)
        }
        if !isSwitchingProtocols {
            if !hasNoBody { append("Content-Length: \(body.count)\r\n", to: &output) }
            append(keepAlive ? "Connection: keep-alive\r\n" : "Connection: close\r\n", to: &output)
        }
        append("\r\n", to: &output)
        if !hasNoBody { output.append(contentsOf: body) }
        return output
    }

    private func append(_ text: String, to output: inout [UInt8]) {
        output.append(contentsOf: text.utf8)
    }

    private func appendSanitised(_ text: String, to output: inout [UInt8]) {
        for byte in text.utf8 {
            output.append(byte == 0x0D || byte == 0x0A || byte == 0x00 ? UInt8(ascii: " ") : byte)
        }
    }

    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 100: return "Continue"
        case 101: return "Switching Protocols"
        case 200: return "OK"
        case 201: return "Created"
        case 202: return "Accepted"
        case 204: return "No Content"
        case 301: return "Moved Permanently"
        case 302: return "Found"
        case 303: return "See Other"
        case 304: return "Not Modified"
        case 307: return "Temporary Redirect"
        case 308: return "Permanent Redirect"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 406: return "Not Acceptable"
        case 408: return "Request Timeout"
        case 409: return "Conflict"
        case 410: return "Gone"
        case 411: return "Length Required"
        case 413: return "Content Too Large"
        case 414: return "URI Too Long"
        case 415: return "Unsupported Media Type"
        case 416: return "Range Not Satisfiable"
        case 417: return "Expectation Failed"
        case 421: return "Misdirected Request"
        case 422: return "Unprocessable Content"
        case 426: return "Upgrade Required"
        case 428: return "Precondition Required"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default:
            switch status {
            case 100..<200: return "Informational"
            case 200..<300: return "Success"
            case 300..<400: return "Redirection"
            case 400..<500: return "Client Error"
            default: return "Server Error"
            }
        }
    }
}
