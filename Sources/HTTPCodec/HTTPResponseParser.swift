// Client side: a bounded, resumable HTTP/1.x response parser, enough for the WebSocket
// upgrade response (101 and the bytes after it) and small Content-Length responses.

public struct HTTPResponseHead: Sendable {
    public var status: Int
    public var reason: String
    public var versionMinor: Int
    public var headers: HTTPHeaders
    /// HTTP/1.1: true unless `Connection: close`; HTTP/1.0: only with `Connection: keep-alive`.
    public var keepAlive: Bool {
        HTTPRequestHead.keepAlive(versionMinor: versionMinor, headers: headers)
    }
}

public struct HTTPResponseMessage: Sendable {
    public var head: HTTPResponseHead
    public var body: [UInt8]
}

/// Errors use `HTTPParseError` with the same categories as requests (400 malformed, 413 body too
/// large, 431 head too large, 501 Transfer-Encoding, 505 not HTTP/1.x).
public struct HTTPResponseParser: Sendable {
    public var maxHeadSize: Int { reader.maxHeadSize }
    public let maxBodySize: Int
    public var maxHeaderCount: Int { reader.maxHeaderCount }

    private var reader: HeadReader
    private var phase: Phase = .statusLine
    private var head: HTTPResponseHead?
    private var body: [UInt8] = []
    private var bodyRemaining = 0

    private enum Phase: Sendable {
        case statusLine, headerLines
        case body
        /// No Content-Length: the body runs until the connection closes (`finish()`).
        case bodyUntilClose
        case failed(HTTPParseError)
    }

    public init(maxHeadSize: Int = 16 * 1024, maxBodySize: Int = 1 << 20, maxHeaderCount: Int = 100) {
        reader = HeadReader(kind: "response", maxHeadSize: maxHeadSize, maxHeaderCount: maxHeaderCount)
        self.maxBodySize = max(0, maxBodySize)
    }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        if case .failed = phase { return }
        reader.append(bytes)
    }

    public mutating func feed(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { feed($0) }
    }

    /// After a 101 response: the bytes that followed it (already WebSocket frames).
    public mutating func takeUnconsumedBytes() -> [UInt8] {
        reader.takeRest()
    }

    /// The next complete response, nil when more bytes are needed. Interim 1xx responses other
    /// than 101 are skipped.
    public mutating func nextResponse() throws(HTTPParseError) -> HTTPResponseMessage? {
        do {
            return try parse()
        } catch {
            phase = .failed(error)
            reader.release()
            throw error
        }
    }

    /// The peer closed the connection: completes a body that runs until close, and fails a
    /// response that was cut short. Nil when nothing was in progress.
    public mutating func finish() throws(HTTPParseError) -> HTTPResponseMessage? {
        switch phase {
        case .bodyUntilClose:
            return complete()
        case .statusLine where reader.isAtStart:
            return nil
        case .failed(let error):
            throw error
        default:
            let error = HTTPParseError.malformed("connection closed in the middle of a response")
            phase = .failed(error)
            throw error
        }
    }

    private mutating func parse() throws(HTTPParseError) -> HTTPResponseMessage? {
        while true {
            switch phase {
            case .failed(let error):
                throw error
            case .statusLine, .headerLines:
                guard let bytes = try reader.nextLine() else { return nil }
                if case .statusLine = phase {
                    try parseStatusLine(bytes)
                    phase = .headerLines
                } else if bytes.isEmpty {
                    if let response = try finishHead() { return response }
                } else {
                    try reader.addField(bytes)
                }
            case .body:
                bodyRemaining -= reader.takeBody(upTo: bodyRemaining, into: &body)
                guard bodyRemaining == 0 else { return nil }
                return complete()
            case .bodyUntilClose:
                _ = reader.takeBody(upTo: maxBodySize - body.count + 1, into: &body)
                guard body.count <= maxBodySize else {
                    throw HTTPParseError(status: 413, message: "body larger than \(maxBodySize) bytes")
                }
                return nil
            }
        }
    }

    /// `HTTP-version SP status-code SP [reason-phrase]` (RFC 9112 §4).
    private mutating func parseStatusLine(_ bytes: ArraySlice<UInt8>) throws(HTTPParseError) {
        let parts = bytes.split(separator: UInt8(ascii: " "), maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2 else { throw .malformed("malformed status line") }
        let versionMinor = try HTTPRequestParser.parseVersion(parts[0])
        let code = parts[1]
        guard code.count == 3, code.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let status = Int(String(decoding: code, as: UTF8.self)), status >= 100 else {
            throw .malformed("invalid status code")
        }
        let reason = parts.count == 3 ? String(decoding: parts[2], as: UTF8.self) : ""
        head = HTTPResponseHead(status: status, reason: reason, versionMinor: versionMinor, headers: HTTPHeaders())
    }

    private mutating func finishHead() throws(HTTPParseError) -> HTTPResponseMessage? {
        guard var head else { throw .malformed("missing status line") }
        head.headers = reader.takeFields()
        self.head = head
        body = []
        let status = head.status
        if status < 200 && status != 101 {
            // Interim response (100 Continue, 103 Early Hints): the real one follows.
            self.head = nil
            reader.startNextHead()
            phase = .statusLine
            return nil
        }
        if status == 101 || status == 204 || status == 304 {
            return complete()
        }
        if head.headers.contains(name: "Transfer-Encoding") {
            throw HTTPParseError(status: 501, message: "Transfer-Encoding is not supported")
        }
        guard let length = try HeaderLine.contentLength(head.headers.values(for: "Content-Length"), maxBodySize: maxBodySize) else {
            phase = .bodyUntilClose
            return try parse()
        }
        guard length > 0 else { return complete() }
        bodyRemaining = length
        body.reserveCapacity(min(length, max(reader.count, 16 * 1024)))
        phase = .body
        return try parse()
    }

    private mutating func complete() -> HTTPResponseMessage? {
        guard let head else { return nil }
        let response = HTTPResponseMessage(head: head, body: body)
        self.head = nil
        body = []
        reader.startNextHead()
        phase = .statusLine
        return response
    }
}
