// Bounded, resumable HTTP/1.x request parser (RFC 9112) for a server that only needs small
// requests: Content-Length bodies, no chunked encoding, pipelining and upgrade hand-off.

public struct HTTPRequestHead: Sendable {
    public var method: String
    /// The request target as sent.
    public var target: String
    /// The target without query (and without scheme and authority for absolute-form); not percent-decoded.
    public var path: String
    /// What follows the first `?`, nil when there is none.
    public var query: String?
    /// x of HTTP/1.x.
    public var versionMinor: Int
    public var headers: HTTPHeaders
    /// HTTP/1.1: true unless `Connection: close`; HTTP/1.0: only with `Connection: keep-alive`.
    public var keepAlive: Bool

    public init(method: String, target: String, versionMinor: Int = 1, headers: HTTPHeaders = HTTPHeaders()) {
        self.method = method
        self.target = target
        (self.path, self.query) = HTTPRequestHead.split(target: target)
        self.versionMinor = versionMinor
        self.headers = headers
        self.keepAlive = HTTPRequestHead.keepAlive(versionMinor: versionMinor, headers: headers)
    }

    /// Whether this is a WebSocket opening handshake (RFC 6455 §4.2.1: `Connection` includes
    /// `Upgrade` and `Upgrade` includes `websocket`). The key, version and method are the caller's to check.
    public var isWebSocketUpgrade: Bool {
        headers.containsToken("upgrade", in: "Connection") && headers.containsToken("websocket", in: "Upgrade")
    }

    static func keepAlive(versionMinor: Int, headers: HTTPHeaders) -> Bool {
        if headers.containsToken("close", in: "Connection") { return false }
        return versionMinor >= 1 || headers.containsToken("keep-alive", in: "Connection")
    }

    static func split(target: String) -> (path: String, query: String?) {
        var pathPart = Substring(target)
        var query: String?
        if let mark = target.firstIndex(of: "?") {
            pathPart = target[..<mark]
            query = String(target[target.index(after: mark)...])
        }
        // absolute-form (RFC 9112 §3.2.2): keep only the path.
        let lowered = pathPart.prefix(8).lowercased()
        if lowered.hasPrefix("http://") || lowered.hasPrefix("https://") {
            let afterScheme = pathPart[pathPart.index(pathPart.startIndex, offsetBy: lowered.hasPrefix("http://") ? 7 : 8)...]
            if let slash = afterScheme.firstIndex(of: "/") {
                pathPart = afterScheme[slash...]
            } else {
                pathPart = "/"
            }
        }
        return (String(pathPart), query)
    }
}

public struct HTTPRequest: Sendable {
    public var head: HTTPRequestHead
    public var body: [UInt8]

    public init(head: HTTPRequestHead, body: [UInt8] = []) {
        self.head = head
        self.body = body
    }
}

/// Why a request was refused, with the status to answer before closing the connection.
public struct HTTPParseError: Error, Equatable, Sendable, CustomStringConvertible {
    /// 400 malformed, 413 body too large, 431 head too large, 501 unsupported Transfer-Encoding, 505 not HTTP/1.x.
    public let status: Int
    public let message: String

    public init(status: Int, message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { "HTTPParseError(\(status): \(message))" }

    static func malformed(_ message: String) -> HTTPParseError { HTTPParseError(status: 400, message: message) }
    static func headTooLarge(_ message: String) -> HTTPParseError { HTTPParseError(status: 431, message: message) }
}

public struct HTTPRequestParser: Sendable {
    public var maxHeadSize: Int { reader.maxHeadSize }
    public let maxBodySize: Int
    public var maxHeaderCount: Int { reader.maxHeaderCount }

    private var reader: HeadReader

    private var phase: Phase = .requestLine
    private var method = ""
    private var target = ""
    private var versionMinor = 1
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var bodyRemaining = 0

    private enum Phase: Sendable {
        case requestLine
        case headerLines
        case body
        case failed(HTTPParseError)
    }

    public init(maxHeadSize: Int = 16 * 1024, maxBodySize: Int = 1 << 20, maxHeaderCount: Int = 100) {
        reader = HeadReader(kind: "request", maxHeadSize: maxHeadSize, maxHeaderCount: maxHeaderCount)
        self.maxBodySize = max(0, maxBodySize)
    }

    /// True when no partial request is buffered.
    public var isIdle: Bool {
        if case .requestLine = phase { return reader.isAtStart }
        return false
    }

    /// Drops buffer capacity while idle, so an idle keep-alive connection costs little memory.
    public mutating func releaseIdleBuffers() {
        guard isIdle else { return }
        reader.release()
        body = []
    }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        if case .failed = phase { return }
        reader.append(bytes)
    }

    public mutating func feed(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { feed($0) }
    }

    /// After a request that switches protocols (WebSocket upgrade): the bytes received after it,
    /// which belong to the new protocol. The parser is left empty.
    public mutating func takeUnconsumedBytes() -> [UInt8] {
        reader.takeRest()
    }

    /// The next complete request, nil when more bytes are needed. Call until nil after each
    /// `feed` (pipelined requests come out one by one). After an error the parser stays failed
    /// and throws the same error again.
    public mutating func nextRequest() throws(HTTPParseError) -> HTTPRequest? {
        do {
            return try parse()
        } catch {
            phase = .failed(error)
            reader.release()
            throw error
        }
    }

    private mutating func parse() throws(HTTPParseError) -> HTTPRequest? {
        while true {
            switch phase {
            case .failed(let error):
                throw error
            case .requestLine, .headerLines:
                guard let line = try reader.nextLine() else { return nil }
                if case .requestLine = phase {
                    // RFC 9112 §2.2: ignore empty lines before the request line.
                    if line.isEmpty { continue }
                    try parseRequestLine(line)
                    phase = .headerLines
                } else if line.isEmpty {
                    if let request = try finishHead() { return request }
                } else {
                    try reader.addField(line)
                }
            case .body:
                bodyRemaining -= reader.takeBody(upTo: bodyRemaining, into: &body)
                guard bodyRemaining == 0 else { return nil }
                return completeRequest()
            }
        }
    }

    // MARK: Request line

    /// `method SP request-target SP HTTP-version` (RFC 9112 §3).
    private mutating func parseRequestLine(_ bytes: ArraySlice<UInt8>) throws(HTTPParseError) {
        let parts = bytes.split(separator: UInt8(ascii: " "), maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw .malformed("malformed request line") }
        let (methodBytes, targetBytes, versionBytes) = (parts[0], parts[1], parts[2])
        guard !methodBytes.isEmpty, methodBytes.allSatisfy(ASCII.isTokenByte) else { throw .malformed("invalid method") }
        guard !targetBytes.isEmpty, targetBytes.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw .malformed("invalid request target")
        }
        versionMinor = try Self.parseVersion(versionBytes)
        method = String(decoding: methodBytes, as: UTF8.self)
        target = String(decoding: targetBytes, as: UTF8.self)
    }

    static func parseVersion(_ bytes: ArraySlice<UInt8>) throws(HTTPParseError) -> Int {
        let version = Array(bytes)
        let prefix = Array("HTTP/".utf8)
        guard version.count == 8, Array(version[0..<5]) == prefix, version[6] == UInt8(ascii: "."),
              let major = digit(version[5]), let minor = digit(version[7]) else {
            throw .malformed("invalid HTTP version")
        }
        guard major == 1 else { throw HTTPParseError(status: 505, message: "only HTTP/1.x is supported") }
        return minor
    }

    static func digit(_ byte: UInt8) -> Int? {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") ? Int(byte - UInt8(ascii: "0")) : nil
    }

    // MARK: End of head

    private mutating func finishHead() throws(HTTPParseError) -> HTTPRequest? {
        let headers = reader.takeFields()
        let hostCount = headers.values(for: "Host").count
        // RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one otherwise.
        guard hostCount <= 1, versionMinor == 0 || hostCount == 1 else {
            throw .malformed(hostCount == 0 ? "missing Host header" : "more than one Host header")
        }
        let hasTransferEncoding = headers.contains(name: "Transfer-Encoding")
        let contentLengthValues = headers.values(for: "Content-Length")
        if hasTransferEncoding {
            guard contentLengthValues.isEmpty else { throw .malformed("both Transfer-Encoding and Content-Length") }
            throw HTTPParseError(status: 501, message: "Transfer-Encoding is not supported; send a Content-Length body")
        }
        let contentLength = try contentLength(contentLengthValues)
        head = HTTPRequestHead(method: method, target: target, versionMinor: versionMinor, headers: headers)
        bodyRemaining = contentLength
        body = []
        if contentLength > 0 {
            // Reserve what has arrived plus a step, not what the header claims.
            body.reserveCapacity(min(contentLength, max(reader.count, 16 * 1024)))
            phase = .body
            return nil
        }
        return completeRequest()
    }

    /// All Content-Length values (repeated fields or a list) must be the same decimal number.
    private func contentLength(_ values: [String]) throws(HTTPParseError) -> Int {
        try HeaderLine.contentLength(values, maxBodySize: maxBodySize) ?? 0
    }

    private mutating func completeRequest() -> HTTPRequest? {
        guard let head else { return nil }
        let request = HTTPRequest(head: head, body: body)
        self.head = nil
        body = []
        reader.startNextHead()
        phase = .requestLine
        return request
    }
}
