// Pieces shared by the request and response parsers: a line buffer that resumes at any byte
// boundary, header-line syntax and Content-Length rules.

/// Received bytes, read line by line. Bytes before `readIndex` are consumed.
struct LineReader: Sendable {
    private var buffer: [UInt8] = []
    private var readIndex = 0
    /// Where the search for the end of the current line resumes (no LF before it).
    private var scanIndex = 0

    var isEmpty: Bool { readIndex == buffer.count }
    /// Unconsumed bytes.
    var count: Int { buffer.count - readIndex }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        compact()
        buffer.append(contentsOf: bytes)
    }

    /// The next line without its CRLF or LF, and how many bytes it used (terminator included).
    /// `.some(nil)` when the line has not all arrived; nil when the line already exceeds `limit`.
    mutating func nextLine(limit: Int) -> (ArraySlice<UInt8>, Int)?? {
        var index = max(scanIndex, readIndex)
        while index < buffer.count && buffer[index] != UInt8(ascii: "\n") { index += 1 }
        guard index < buffer.count else {
            scanIndex = index
            return buffer.count - readIndex > limit ? nil : .some(nil)
        }
        let consumed = index + 1 - readIndex
        guard consumed <= limit else { return nil }
        var end = index
        if end > readIndex && buffer[end - 1] == UInt8(ascii: "\r") { end -= 1 }
        let line = buffer[readIndex..<end]
        readIndex = index + 1
        scanIndex = readIndex
        return .some((line, consumed))
    }

    /// Moves up to `limit` unconsumed bytes to `destination`; returns how many.
    mutating func take(upTo limit: Int, into destination: inout [UInt8]) -> Int {
        let taken = min(limit, count)
        guard taken > 0 else { return 0 }
        destination.append(contentsOf: buffer[readIndex..<(readIndex + taken)])
        readIndex += taken
        scanIndex = readIndex
        return taken
    }

    /// Everything not consumed; the reader is left empty.
    mutating func takeRest() -> [UInt8] {
        let rest = Array(buffer[readIndex...])
        release()
        return rest
    }

    mutating func release() {
        buffer = []
        readIndex = 0
        scanIndex = 0
    }

    /// Before appending: drop consumed bytes, moving a partial rest only when that pays off
    /// (byte-at-a-time input would otherwise move the same partial line again and again).
    private mutating func compact() {
        guard readIndex > 0 else { return }
        if readIndex == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.capacity <= 64 * 1024)
        } else if readIndex >= 4096 || readIndex * 2 >= buffer.count {
            buffer.removeSubrange(0..<readIndex)
        } else {
            return
        }
        scanIndex = max(0, scanIndex - readIndex)
        readIndex = 0
    }
}

/// What both parsers read a message head with: lines within the head-size limit, header fields
/// within the count limit, then the body's bytes from the same buffer.
struct HeadReader: Sendable {
    let maxHeadSize: Int
    let maxHeaderCount: Int
    /// "request" or "response", for the error messages.
    let kind: String
    private var lines = LineReader()
    /// Bytes of the current head so far.
    private(set) var headBytes = 0
    private var fields = HTTPHeaders()

    init(kind: String, maxHeadSize: Int, maxHeaderCount: Int) {
        self.kind = kind
        self.maxHeadSize = max(0, maxHeadSize)
        self.maxHeaderCount = max(0, maxHeaderCount)
    }

    /// No byte of a new head has arrived.
    var isAtStart: Bool { headBytes == 0 && lines.isEmpty }
    /// Unconsumed bytes.
    var count: Int { lines.count }

    mutating func append(_ bytes: UnsafeRawBufferPointer) { lines.append(bytes) }

    /// The next complete line of the head; nil until it has all arrived. Throws 431 as soon as the
    /// head outgrows its limit.
    mutating func nextLine() throws(HTTPParseError) -> ArraySlice<UInt8>? {
        guard let line = lines.nextLine(limit: maxHeadSize - headBytes) else {
            throw .headTooLarge("\(kind) head larger than \(maxHeadSize) bytes")
        }
        guard let (bytes, consumed) = line else { return nil }
        headBytes += consumed
        return bytes
    }

    mutating func addField(_ bytes: ArraySlice<UInt8>) throws(HTTPParseError) {
        guard fields.count < maxHeaderCount else { throw .headTooLarge("more than \(maxHeaderCount) header fields") }
        let (name, value) = try HeaderLine.parse(bytes)
        fields.add(name: name, value: value)
    }

    /// The fields read since the last call.
    mutating func takeFields() -> HTTPHeaders {
        defer { fields = HTTPHeaders() }
        return fields
    }

    /// The message is complete: the next line starts a new head.
    mutating func startNextHead() {
        headBytes = 0
        fields = HTTPHeaders()
    }

    /// Moves up to `limit` body bytes to `destination`; returns how many.
    mutating func takeBody(upTo limit: Int, into destination: inout [UInt8]) -> Int {
        lines.take(upTo: limit, into: &destination)
    }

    /// Everything not consumed (what follows a protocol switch); the reader is left empty.
    mutating func takeRest() -> [UInt8] { lines.takeRest() }

    mutating func release() { lines.release() }
}

enum HeaderLine {
    /// `field-name ":" OWS field-value OWS` (RFC 9112 §5).
    static func parse(_ bytes: ArraySlice<UInt8>) throws(HTTPParseError) -> (name: String, value: String) {
        guard let first = bytes.first, !ASCII.isWhitespace(first) else {
            throw .malformed("obsolete line folding is not accepted")
        }
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")) else { throw .malformed("header line without a colon") }
        let name = bytes[..<colon]
        guard !name.isEmpty, name.allSatisfy(ASCII.isTokenByte) else { throw .malformed("invalid header name") }
        let value = ASCII.trimmingWhitespace(bytes[(colon + 1)...])
        // VCHAR, SP, HTAB and obs-text; a CTL (including a bare CR or NUL) is an error.
        guard value.allSatisfy({ $0 >= 0x20 && $0 != 0x7F || $0 == 0x09 }) else {
            throw .malformed("invalid character in header value")
        }
        return (String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self))
    }

    /// All Content-Length values (repeated fields or a list) must be the same decimal number;
    /// nil when there is none. Over `maxBodySize` (or too big for an Int) is 413.
    static func contentLength(_ values: [String], maxBodySize: Int) throws(HTTPParseError) -> Int? {
        var result: Int?
        for value in values {
            for element in value.utf8.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false) {
                let digits = ASCII.trimmingWhitespace(element)
                guard !digits.isEmpty else { throw .malformed("empty Content-Length") }
                var number = 0
                var overflow = false
                for byte in digits {
                    guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else {
                        throw .malformed("Content-Length is not a number")
                    }
                    if !overflow {
                        let (times10, o1) = number.multipliedReportingOverflow(by: 10)
                        let (sum, o2) = times10.addingReportingOverflow(Int(byte - UInt8(ascii: "0")))
                        overflow = o1 || o2
                        number = sum
                    }
                }
                if overflow { number = Int.max }   // certainly too large; still compared below
                guard result == nil || result == number else { throw .malformed("conflicting Content-Length values") }
                result = number
            }
        }
        if let result, result > maxBodySize {
            throw HTTPParseError(status: 413, message: "body larger than \(maxBodySize) bytes")
        }
        return result
    }
}
