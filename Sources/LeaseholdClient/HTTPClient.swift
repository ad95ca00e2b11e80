#if canImport(Glibc)
import Glibc
#endif

extension Duration {
    var totalNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds.multipliedReportingOverflow(by: 1_000_000_000).partialValue &+ attoseconds / 1_000_000_000
    }

    public var secondsValue: Double { Double(totalNanoseconds) / 1e9 }

    public static func seconds(fractional value: Double) -> Duration {
        guard value.isFinite, value > 0 else { return .zero }
        return .nanoseconds(Int64(min(value, 1e9) * 1e9))
    }
}

/// A small blocking HTTP/1.1 client for the status and admin calls: one request per connection
/// (`Connection: close`), a deadline for the whole exchange, a bounded response.
public struct HTTPClient: Sendable {
    public struct Response: Sendable {
        public let status: Int
        public let headers: [(String, String)]
        public let body: [UInt8]

        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    public let server: ServerURL
    public var timeout: Duration = .seconds(10)
    public var maxResponseBytes = 8 << 20

    public init(server: ServerURL, timeout: Duration = .seconds(10)) {
        self.server = server
        self.timeout = timeout
    }

    public func request(_ method: String, _ path: String, headers: [(String, String)] = [],
                        body: [UInt8] = []) throws(LeaseholdError) -> Response {
        guard !server.tls else { throw .tlsNotSupported(server) }
        let deadline = monotonicNow() &+ UInt64(max(0, timeout.totalNanoseconds))
        let fd = try connect(deadline: deadline)
        defer { Glibc.close(fd) }
        var head = "\(method) \(server.path(path)) HTTP/1.1\r\nHost: \(server.authority)\r\nConnection: close\r\n"
        head += "User-Agent: leasehold-client\r\nContent-Length: \(body.count)\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        try send(fd, Array(head.utf8) + body, deadline: deadline)
        let raw = try receiveAll(fd, deadline: deadline)
        return try parse(raw)
    }

    // MARK: sockets

    private func monotonicNow() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) &* 1_000_000_000 &+ UInt64(spec.tv_nsec)
    }

    /// Milliseconds left until `deadline`, for poll(2).
    private func remaining(_ deadline: UInt64, _ doing: String) throws(LeaseholdError) -> Int32 {
        let now = monotonicNow()
        guard now < deadline else {
            throw .connectionRefused(server, "no answer while \(doing) within \(timeout)")
        }
        return Int32(clamping: (deadline - now) / 1_000_000 + 1)
    }

    private func wait(_ fd: Int32, for events: Int16, deadline: UInt64, _ doing: String) throws(LeaseholdError) {
        while true {
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let result = poll(&entry, 1, try remaining(deadline, doing))
            if result > 0 { return }
            if result < 0, errno != EINTR { throw .connectionRefused(server, "poll: \(errorText(errno))") }
        }
    }

    private func errorText(_ code: Int32) -> String { String(cString: strerror(code)) }

    private func connect(deadline: UInt64) throws(LeaseholdError) -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(server.host, String(server.port), &hints, &list)
        guard status == 0, let first = list else {
            throw .connectionRefused(server, "cannot resolve \(server.host): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let entry = cursor {
            cursor = entry.pointee.ai_next
            let fd = socket(entry.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { lastError = "socket: \(errorText(errno))"; continue }
            if Glibc.connect(fd, entry.pointee.ai_addr, entry.pointee.ai_addrlen) == 0 { return fd }
            let code = errno
            guard code == EINPROGRESS || code == EINTR else {
                lastError = errorText(code)
                Glibc.close(fd)
                continue
            }
            do {
                try wait(fd, for: Int16(POLLOUT), deadline: deadline, "connecting")
            } catch {
                Glibc.close(fd)
                throw error
            }
            var soError: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &length)
            if soError == 0 { return fd }
            lastError = errorText(soError)
            Glibc.close(fd)
        }
        throw .connectionRefused(server, lastError)
    }

    private func send(_ fd: Int32, _ bytes: [UInt8], deadline: UInt64) throws(LeaseholdError) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { buffer in
                Glibc.send(fd, buffer.baseAddress.map { $0 + offset }, buffer.count - offset, Int32(MSG_NOSIGNAL))
            }
            if written > 0 { offset += written; continue }
            let code = errno
            if written < 0, code == EINTR { continue }
            if written < 0, code == EAGAIN || code == EWOULDBLOCK {
                try wait(fd, for: Int16(POLLOUT), deadline: deadline, "sending the request")
                continue
            }
            throw .connectionRefused(server, "sending the request: \(errorText(code))")
        }
    }

    private func receiveAll(_ fd: Int32, deadline: UInt64) throws(LeaseholdError) -> [UInt8] {
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count == 0 { return received }
            if count > 0 {
                received.append(contentsOf: chunk[0..<count])
                guard received.count <= maxResponseBytes else {
                    throw .protocolViolation("the answer is larger than \(maxResponseBytes) bytes")
                }
                if let complete = Self.completeLength(received), received.count >= complete {
                    return Array(received[0..<complete])
                }
                continue
            }
            let code = errno
            if code == EINTR { continue }
            if code == EAGAIN || code == EWOULDBLOCK {
                try wait(fd, for: Int16(POLLIN), deadline: deadline, "reading the answer")
                continue
            }
            throw .connectionRefused(server, "reading the answer: \(errorText(code))")
        }
    }

    // MARK: parsing

    static func endOfHead(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for index in 0...(bytes.count - 4)
        where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
            return index
        }
        return nil
    }

    /// Head plus Content-Length bytes, once the head is in and carries a Content-Length.
    static func completeLength(_ bytes: [UInt8]) -> Int? {
        guard let end = endOfHead(bytes) else { return nil }
        let head = String(decoding: bytes[0..<end], as: UTF8.self).lowercased()
        for line in head.split(separator: "\r\n") where line.hasPrefix("content-length:") {
            guard let length = Int(line.dropFirst("content-length:".count).filter { $0 != " " && $0 != "\t" }) else { return nil }
            return end + 4 + length
        }
        return nil
    }

    private func parse(_ raw: [UInt8]) throws(LeaseholdError) -> Response {
        guard let end = Self.endOfHead(raw) else {
            throw .protocolViolation(raw.isEmpty ? "the server closed the connection without answering" : "incomplete HTTP answer")
        }
        let lines = String(decoding: raw[0..<end], as: UTF8.self).split(separator: "\r\n").map(String.init)
        let parts = lines.first?.split(separator: " ", maxSplits: 2) ?? []
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            throw .protocolViolation("not an HTTP answer: '\(lines.first ?? "")'")
        }
        var headers: [(String, String)] = []
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.append((String(line[..<colon]), String(line[line.index(after: colon)...]).trimmingSpaces()))
        }
        if headers.contains(where: { $0.0.lowercased() == "transfer-encoding" }) {
            throw .protocolViolation("chunked answers are not supported by this client")
        }
        return Response(status: status, headers: headers, body: Array(raw[(end + 4)...]))
    }
}
