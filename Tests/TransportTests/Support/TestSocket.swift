// A TCP client for integration tests on blocking sockets: every read and write has a timeout
// (SO_RCVTIMEO / SO_SNDTIMEO), so a test that waits for bytes that never come fails instead of
// hanging. Raw bytes only; HTTP and WebSocket helpers are layered on top.
//
// The blocking calls run on `blockingQueue`, never on Swift's cooperative pool: that pool has one
// thread per core (2 here), and a test parked in read(2) on it would starve every other async test
// in the process (seen: LeaseholdServerTests' ping deadlines missed while these tests ran).
import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Where blocking socket calls run: a private concurrent queue, which Dispatch backs with extra
/// threads when its workers block.
private let blockingQueue = DispatchQueue(label: "transport-tests.blocking", attributes: .concurrent)

/// Runs a blocking call off the cooperative pool and awaits its result.
func blocking<R: Sendable>(_ body: @escaping @Sendable () throws -> R) async throws -> R {
    try await withCheckedThrowingContinuation { continuation in
        blockingQueue.async { continuation.resume(with: Result { try body() }) }
    }
}

struct TestClientError: Error, CustomStringConvertible {
    let description: String
    /// A read or write ran into its SO_RCVTIMEO / SO_SNDTIMEO.
    let timedOut: Bool
    init(_ description: String, timedOut: Bool = false) {
        self.description = description
        self.timedOut = timedOut
    }
}

/// How a read that returned no data ended.
enum ReadEnd: Equatable {
    /// read(2) returned 0: the peer sent FIN.
    case endOfFile
    /// ECONNRESET: the peer sent RST.
    case reset
}

final class TestSocket {
    let fd: Int32
    /// Bytes received but not yet consumed by a reader.
    var pending: [UInt8] = []

    /// Connects to 127.0.0.1:`port`; `timeout` bounds connect, each read and each write.
    init(port: UInt16, timeout: Double = hangGuard) async throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestClientError("socket: errno \(errno)") }
        self.fd = fd
        var time = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let target = address
        let code: Int32 = try await blocking {
            var address = target
            let result = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            return result == 0 ? 0 : errno
        }
        guard code == 0 else {
            closeNow()
            throw TestClientError("connect to 127.0.0.1:\(port): errno \(code)")
        }
    }

    /// Takes over a connected socket (one end of a socketpair, say).
    init(connectedFD fd: Int32, timeout: Double = hangGuard) {
        self.fd = fd
        var time = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { closeNow() }

    // MARK: writing

    func send(_ bytes: [UInt8]) async throws {
        let fd = fd
        try await blocking { try Self.sendAll(fd, bytes) }
    }

    private static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { raw in
                Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
            }
            if count > 0 { offset += count; continue }
            let code = errno
            if code == EINTR { continue }
            if code == EAGAIN || code == EWOULDBLOCK {
                throw TestClientError("send timed out after \(offset) of \(bytes.count) bytes", timedOut: true)
            }
            throw TestClientError("send failed: errno \(code)")
        }
    }

    func send(_ text: String) async throws { try await send(Array(text.utf8)) }

    /// Sends FIN; reading goes on.
    func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }

    /// Makes the close send RST instead of FIN (SO_LINGER 0), then closes.
    func resetAndClose() {
        var option = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
        closeNow()
    }

    private var closed = false
    /// Closes the socket now; deinit then leaves the (possibly reused) descriptor number alone.
    func closeNow() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }

    // MARK: reading

    /// One read(2) into `pending`. Returns nil when data arrived, or how the stream ended.
    /// Throws on timeout.
    @discardableResult
    func readOnce(max: Int = 64 * 1024) async throws -> ReadEnd? {
        let fd = fd
        let (chunk, end): ([UInt8], ReadEnd?) = try await blocking {
            var chunk = [UInt8](repeating: 0, count: max)
            while true {
                let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, max) }
                if count > 0 { return (Array(chunk[0..<count]), nil) }
                if count == 0 { return ([], .endOfFile) }
                let code = errno
                switch code {
                case EINTR: continue
                case EAGAIN, EWOULDBLOCK: throw TestClientError("read timed out", timedOut: true)
                case ECONNRESET: return ([], .reset)
                default: throw TestClientError("read failed: errno \(code)")
                }
            }
        }
        pending.append(contentsOf: chunk)
        return end
    }

    /// Reads until the peer ends the stream; returns how it ended. Data received meanwhile is
    /// kept in `pending`, up to `limit` bytes (more means the peer is not closing: an error).
    func readUntilEnd(limit: Int = 64 << 20) async throws -> ReadEnd {
        while true {
            if let end = try await readOnce() { return end }
            if pending.count > limit { throw TestClientError("peer sent \(pending.count) bytes and did not close") }
        }
    }

    /// Reads until `pending` holds at least `count` bytes.
    func fill(to count: Int) async throws {
        while pending.count < count {
            if let end = try await readOnce() {
                throw TestClientError("stream ended (\(end)) with \(pending.count) of \(count) bytes")
            }
        }
    }

    func take(_ count: Int) -> [UInt8] {
        let taken = Array(pending.prefix(count))
        pending.removeFirst(taken.count)
        return taken
    }

    // MARK: HTTP

    struct HTTPAnswer {
        var status: Int
        var headers: [(String, String)]
        var body: [UInt8]
        var bodyText: String { String(decoding: body, as: UTF8.self) }

        func header(_ name: String) -> String? {
            headers.first { $0.0.lowercased() == name.lowercased() }?.1
        }
        func headers(_ name: String) -> [String] {
            headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1)
        }
    }

    /// Reads one HTTP/1.1 response: head, then a Content-Length body (none for 1xx).
    /// Bytes after it stay in `pending` (WebSocket frames after a 101, a pipelined response).
    func readHTTPResponse() async throws -> HTTPAnswer {
        var headEnd: Int?
        while headEnd == nil {
            headEnd = Self.endOfHead(pending)
            if headEnd == nil {
                if pending.count > 64 * 1024 { throw TestClientError("response head over 64 KiB") }
                if let end = try await readOnce() {
                    throw TestClientError("stream ended (\(end)) before a full response head; got \(String(decoding: pending, as: UTF8.self).debugDescription)")
                }
            }
        }
        let head = String(decoding: take(headEnd! + 4), as: UTF8.self)
        var lines = head.split(bySeparator: "\r\n").filter { !$0.isEmpty }
        guard !lines.isEmpty else { throw TestClientError("empty response head") }
        let statusLine = lines.removeFirst()
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0] == "HTTP/1.1", let status = Int(parts[1]) else {
            throw TestClientError("bad status line \(statusLine.debugDescription)")
        }
        var headers: [(String, String)] = []
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { throw TestClientError("bad header line \(line.debugDescription)") }
            let value = line[line.index(after: colon)...].trimmingCharacters(in: " \t")
            headers.append((String(line[..<colon]), value))
        }
        var answer = HTTPAnswer(status: status, headers: headers, body: [])
        if status >= 200, let lengthText = answer.header("Content-Length") {
            guard let length = Int(lengthText), length >= 0, length <= 16 << 20 else {
                throw TestClientError("bad Content-Length \(lengthText)")
            }
            try await fill(to: length)
            answer.body = take(length)
        }
        return answer
    }

    private static func endOfHead(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for index in 0...(bytes.count - 4)
        where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
            return index
        }
        return nil
    }
}

extension Substring {
    func trimmingCharacters(in set: String) -> String {
        var view = self
        while let first = view.first, set.contains(first) { view = view.dropFirst() }
        while let last = view.last, set.contains(last) { view = view.dropLast() }
        return String(view)
    }
}

extension String {
    func split(bySeparator separator: String) -> [String] {
        var parts: [String] = []
        var rest = Substring(self)
        while let range = rest.firstRange(of: separator) {
            parts.append(String(rest[..<range.lowerBound]))
            rest = rest[range.upperBound...]
        }
        parts.append(String(rest))
        return parts
    }
}
