import CPosix
#if canImport(Glibc)
import Glibc
#endif

/// A failed system call, with errno captured before anything else could overwrite it.
public struct SocketError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Int32

    public var description: String {
        let message = String(cString: strerror(errno))
        return "\(call): \(message) (errno \(errno))"
    }

    static func lastError(_ call: String) -> SocketError {
        SocketError(call: call, errno: Glibc.errno)
    }
}

/// An IPv4 or IPv6 socket address.
public struct SocketAddress: Sendable, CustomStringConvertible {
    /// Room for an IPv4 or an IPv6 address: every connection keeps its peer's, and a
    /// `sockaddr_storage` is 128 bytes.
    var storage: sockaddr_in6
    public let length: socklen_t

    init(storage full: sockaddr_storage, length: socklen_t) {
        var compact = sockaddr_in6()
        let kept = min(Int(length), MemoryLayout<sockaddr_in6>.size)
        withUnsafeMutableBytes(of: &compact) { target in
            withUnsafeBytes(of: full) { source in
                target.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[0..<kept]))
            }
        }
        storage = compact
        self.length = socklen_t(kept)
    }

    public var family: Int32 { Int32(storage.sin6_family) }

    /// Parses `HOST:PORT`, `[V6HOST]:PORT`, or `:PORT`, resolving names such as `localhost`.
    public init(parsing text: String) throws(AddressError) {
        let host: String
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw AddressError(text: text, problem: "missing ']'") }
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw AddressError(text: text, problem: "missing ':PORT'") }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw AddressError(text: text, problem: "expected HOST:PORT") }
            host = String(text[..<colon])
            portText = text[text.index(after: colon)...]
        }
        guard let port = UInt16(portText) else { throw AddressError(text: text, problem: "port must be 0-65535") }
        try self.init(host: host.isEmpty ? "0.0.0.0" : host, port: port)
    }

    public init(host: String, port: UInt16) throws(AddressError) {
        // Numeric addresses need no resolver (getaddrinfo reads files and costs microseconds).
        var storage = sockaddr_storage()
        let numeric: socklen_t? = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { v4 -> socklen_t? in
                guard inet_pton(AF_INET, host, &v4.pointee.sin_addr) == 1 else { return nil }
                v4.pointee.sin_family = sa_family_t(AF_INET)
                v4.pointee.sin_port = port.bigEndian
                return socklen_t(MemoryLayout<sockaddr_in>.size)
            } ?? pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { v6 -> socklen_t? in
                guard inet_pton(AF_INET6, host, &v6.pointee.sin6_addr) == 1 else { return nil }
                v6.pointee.sin6_family = sa_family_t(AF_INET6)
                v6.pointee.sin6_port = port.bigEndian
                return socklen_t(MemoryLayout<sockaddr_in6>.size)
            }
        }
        if let numeric {
            self.init(storage: storage, length: numeric)
            return
        }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &result)
        guard status == 0, let first = result else {
            throw AddressError(text: "\(host):\(port)", problem: String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(result) }
        // Prefer IPv4 for names like "localhost" that resolve both ways: it is what users mean here.
        var chosen = first
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let entry = cursor {
            if entry.pointee.ai_family == AF_INET { chosen = entry; break }
            cursor = entry.pointee.ai_next
        }
        storage = sockaddr_storage()
        let length = chosen.pointee.ai_addrlen
        withUnsafeMutableBytes(of: &storage) { raw in
            if let source = chosen.pointee.ai_addr {
                raw.copyMemory(from: UnsafeRawBufferPointer(start: source, count: Int(length)))
            }
        }
        self.init(storage: storage, length: length)
    }

    public var port: UInt16 {
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET6 {
                return UInt16(bigEndian: raw.load(fromByteOffset: MemoryLayout<sockaddr_in6>.offset(of: \sockaddr_in6.sin6_port) ?? 2, as: UInt16.self))
            }
            return UInt16(bigEndian: raw.load(fromByteOffset: MemoryLayout<sockaddr_in>.offset(of: \sockaddr_in.sin_port) ?? 2, as: UInt16.self))
        }
    }

    public var host: String {
        var copy = storage
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let ok: Bool = withUnsafeMutablePointer(to: &copy) { pointer in
            if family == AF_INET6 {
                return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { v6 in
                    inet_ntop(AF_INET6, &v6.pointee.sin6_addr, &buffer, socklen_t(buffer.count)) != nil
                }
            }
            return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { v4 in
                inet_ntop(AF_INET, &v4.pointee.sin_addr, &buffer, socklen_t(buffer.count)) != nil
            }
        }
        guard ok else { return "?" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var description: String {
        family == AF_INET6 ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafePointer(to: storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }
}

public struct AddressError: Error, CustomStringConvertible, Sendable {
    public let text: String
    public let problem: String
    public var description: String { "invalid address '\(text)': \(problem)" }
}

/// Thin wrappers, one per libc call, that turn errno into `SocketError` and retry EINTR.
enum Posix {
    static func makeListeningSocket(address: SocketAddress, backlog: Int32) throws(SocketError) -> Int32 {
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .lastError("socket") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if address.family == AF_INET6 {
            // "[::]" should serve IPv6 only; IPv4 gets its own --listen.
            setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        let bound = address.withSockaddr { bind(fd, $0, $1) }
        guard bound == 0 else {
            let error = SocketError.lastError("bind \(address)")
            Glibc.close(fd)
            throw error
        }
        guard listen(fd, backlog) == 0 else {
            let error = SocketError.lastError("listen")
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    /// Throws unless `fd` is a TCP socket (IPv4 or IPv6) in the listening state.
    static func checkListeningStreamSocket(_ fd: Int32) throws(SocketError) {
        func option(_ level: Int32, _ name: Int32) -> Int32? {
            var value: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            return getsockopt(fd, level, name, &value, &length) == 0 ? value : nil
        }
        guard let type = option(SOL_SOCKET, SO_TYPE) else { throw .lastError("descriptor \(fd) is not a socket") }
        let family = localAddress(of: fd)?.family
        guard type == Int32(SOCK_STREAM.rawValue), family == AF_INET || family == AF_INET6,
              option(SOL_SOCKET, SO_ACCEPTCONN) == 1 else {
            throw SocketError(call: "descriptor \(fd) is not a listening TCP socket", errno: EINVAL)
        }
    }

    static func makeNonBlockingAndCloseOnExec(_ fd: Int32) {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC)
    }

    static func localAddress(of fd: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return result == 0 ? SocketAddress(storage: storage, length: length) : nil
    }

    enum AcceptResult { case accepted(Int32, SocketAddress), wouldBlock, failed(SocketError) }

    static func accept(_ listener: Int32) -> AcceptResult {
        while true {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &storage) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    leasehold_accept4(listener, $0, &length, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
                }
            }
            if fd >= 0 { return .accepted(fd, SocketAddress(storage: storage, length: length)) }
            let code = errno
            switch code {
            case EINTR, ECONNABORTED: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            default: return .failed(SocketError(call: "accept4", errno: code))
            }
        }
    }

    /// Starts a non-blocking connect. Returns the descriptor; completion is signalled by writability.
    static func startConnect(to address: SocketAddress) throws(SocketError) -> Int32 {
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .lastError("socket") }
        while true {
            let result = address.withSockaddr { connect(fd, $0, $1) }
            if result == 0 { return fd }
            let code = errno
            if code == EINTR { continue }
            if code == EINPROGRESS { return fd }
            Glibc.close(fd)
            throw SocketError(call: "connect \(address)", errno: code)
        }
    }

    static func pendingError(_ fd: Int32) -> Int32 {
        var code: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length)
        return code
    }

    static func isConnected(_ fd: Int32) -> Bool {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        return withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) == 0 }
        }
    }

    static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Lets the kernel end a connection whose peer is gone while we are not talking to it
    /// (keepalive probes after a third of `deadAfter`) or while our data sits unacknowledged
    /// (TCP_USER_TIMEOUT = `deadAfter`): a cut link then fails the socket even if pings are off.
    static func setDeadPeerTimeouts(_ fd: Int32, deadAfter: Duration) {
        let milliseconds = max(1000, min(Int64(Int32.max), deadAfter.saturatedNanoseconds / 1_000_000))
        func set(_ level: Int32, _ name: Int32, _ value: Int32) {
            var value = value
            setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size))
        }
        let seconds = Int32(milliseconds / 1000)
        set(SOL_SOCKET, SO_KEEPALIVE, 1)
        set(Int32(IPPROTO_TCP), TCP_KEEPIDLE, max(1, seconds / 3))
        set(Int32(IPPROTO_TCP), TCP_KEEPINTVL, max(1, seconds / 9))
        set(Int32(IPPROTO_TCP), TCP_KEEPCNT, 3)
        set(Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, Int32(milliseconds))
    }

    /// Makes the next close send RST instead of FIN (abortive close).
    static func setLingerZero(_ fd: Int32) {
        var option = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
    }

    enum IOResult { case bytes(Int), wouldBlock, endOfFile, failed(SocketError) }

    static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> IOResult {
        while true {
            let count = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if count > 0 { return .bytes(count) }
            if count == 0 { return .endOfFile }
            let code = errno
            switch code {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            default: return .failed(SocketError(call: "read", errno: code))
            }
        }
    }

    /// `writev` on a socket, with MSG_NOSIGNAL: a peer gone is EPIPE, not SIGPIPE for the
    /// whole process.
    static func send(_ fd: Int32, _ vectors: UnsafeBufferPointer<iovec>) -> IOResult {
        var message = msghdr()
        message.msg_iov = UnsafeMutablePointer(mutating: vectors.baseAddress)
        message.msg_iovlen = vectors.count
        while true {
            let count = sendmsg(fd, &message, Int32(MSG_NOSIGNAL))
            if count >= 0 { return .bytes(count) }
            let code = errno
            switch code {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            default: return .failed(SocketError(call: "sendmsg", errno: code))
            }
        }
    }

    static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    /// One non-blocking attempt to send `bytes` (a refusal on a socket about to be closed).
    static func sendOnce(_ fd: Int32, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Raises the soft descriptor limit to the hard one; a server with many leases needs it.
    @discardableResult
    static func raiseDescriptorLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        return Int(clamping: limit.rlim_cur)
    }

    /// Monotonic time in nanoseconds.
    static func monotonicNanoseconds() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) &* 1_000_000_000 &+ UInt64(spec.tv_nsec)
    }
}
