import HTTPCodec
import Transport
#if canImport(Glibc)
import Glibc
#endif

extension Duration {
    public var secondsValue: Double { Double(saturatedNanoseconds) / 1e9 }

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

        init(_ message: HTTPResponseMessage) {
            status = message.head.status
            headers = message.head.headers.map { ($0.name, $0.value) }
            body = message.body
        }
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
        let tlsContext = try server.tlsContext()
        let deadline = monotonicNow().addingSaturated(timeout)
        let fd = try connect(deadline: deadline)
        defer { Glibc.close(fd) }
        var tls: TLSClientStream?
        if let tlsContext {
            guard let stream = tlsContext.stream(fd: fd, serverName: server.host) else {
                throw .tls(server, "cannot create a TLS session")
            }
            tls = stream
        }
        defer { tls?.shutdown() }
        var head = "\(method) \(server.path(path)) HTTP/1.1\r\nHost: \(server.authority)\r\nConnection: close\r\n"
        head += "User-Agent: leasehold-client\r\nContent-Length: \(body.count)\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        try send(fd, Array(head.utf8) + body, tls: tls, deadline: deadline)
        return try receiveAll(fd, tls: tls, deadline: deadline)
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

    private func send(_ fd: Int32, _ bytes: [UInt8], tls: TLSClientStream?, deadline: UInt64) throws(LeaseholdError) {
        var offset = 0
        if let tls {
            // The handshake runs inside the first write.
            while offset < bytes.count {
                switch bytes.withUnsafeBytes({ tls.write(UnsafeRawBufferPointer(rebasing: $0[offset...])) }) {
                case .bytes(let count): offset += count
                case .wantRead: try wait(fd, for: Int16(POLLIN), deadline: deadline, "in the TLS handshake")
                case .wantWrite: try wait(fd, for: Int16(POLLOUT), deadline: deadline, "sending the request")
                case .closed: throw .connectionRefused(server, "the server closed the connection during the TLS handshake")
                case .failed(let reason): throw .tls(server, reason)
                }
            }
            return
        }
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

    /// Reads until one whole answer is parsed (or the server closes the connection).
    private func receiveAll(_ fd: Int32, tls: TLSClientStream?, deadline: UInt64) throws(LeaseholdError) -> Response {
        var parser = HTTPResponseParser(maxHeadSize: 64 * 1024, maxBodySize: maxResponseBytes)
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let count: Int
            if let tls {
                switch chunk.withUnsafeMutableBytes({ tls.read(into: $0) }) {
                case .bytes(let read): count = read
                case .closed: count = 0
                case .wantRead:
                    try wait(fd, for: Int16(POLLIN), deadline: deadline, "reading the answer")
                    continue
                case .wantWrite:
                    try wait(fd, for: Int16(POLLOUT), deadline: deadline, "reading the answer")
                    continue
                case .failed(let reason): throw .tls(server, reason)
                }
            } else {
                count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            }
            do throws(HTTPParseError) {
                if count == 0 {
                    guard let answer = try parser.finish() else {
                        throw HTTPParseError(status: 0, message: "the server closed the connection without answering")
                    }
                    return Response(answer)
                }
                if count > 0 {
                    parser.feed(Array(chunk[0..<count]))
                    if let answer = try parser.nextResponse() { return Response(answer) }
                    continue
                }
            } catch {
                throw .protocolViolation(error.status == 413 ? "the answer is larger than \(maxResponseBytes) bytes" : error.message)
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
}
