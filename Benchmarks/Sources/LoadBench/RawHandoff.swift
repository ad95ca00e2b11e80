// The `handoff` load: one holder and N queued waiters on one resource over blocking sockets. Each
// round the holder sends a close frame; the sample is the time until the head waiter reads its
// grant. No other waiter may be granted (FIFO), and the newcomer that refills the line must be
// told it is last. Benchmark code: it trusts the server's framing.
#if canImport(Glibc)
import Glibc
#endif
import WebSocketCodec

final class RawSocket {
    let fd: Int32
    var buffer: [UInt8] = []

    init(host: String, port: UInt16) {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { fail("handoff needs a numeric IPv4 --host") }
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else { fail("connect: errno \(errno)") }
    }

    func send(_ bytes: [UInt8]) {
        let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == bytes.count else { fail("send: errno \(errno)") }
    }

    /// Reads until `needle` has arrived (within `timeoutMilliseconds`, or nil), and drops the
    /// bytes up to its end; returns what came before it.
    func read(until needle: [UInt8], timeoutMilliseconds: Int32) -> [UInt8]? {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if let range = buffer.firstRange(of: needle) {
                let before = Array(buffer[..<range.lowerBound])
                buffer.removeSubrange(..<range.upperBound)
                return before
            }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, timeoutMilliseconds) == 1 else { return nil }
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            guard count > 0 else { return nil }
            buffer.append(contentsOf: chunk[0..<count])
        }
    }

    /// Reads and drops until the peer's FIN, then closes.
    func drainAndClose() {
        var chunk = [UInt8](repeating: 0, count: 4096)
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while poll(&poller, 1, 5000) == 1, chunk.withUnsafeMutableBytes({ Glibc.read(fd, $0.baseAddress, $0.count) }) > 0 {}
        close(fd)
    }
}

func runRawHandoff(host: String, port: UInt16, rounds: Int, waiters: Int, request: String) -> [UInt64] {
    let (handshake, acquireFrame, closeFrame) = prebuiltLeaseFrames(host: host, port: port, request: request)
    let granted = Array("\"granted\"".utf8)
    let queued = Array("\"queued\"".utf8)
    let position = Array("\"position\":".utf8)

    func arrive(expecting event: [UInt8]) -> RawSocket {
        let socket = RawSocket(host: host, port: port)
        socket.send(handshake)
        guard socket.read(until: Array("\r\n\r\n".utf8), timeoutMilliseconds: 5000) != nil else { fail("no handshake answer") }
        socket.send(acquireFrame)
        guard socket.read(until: event, timeoutMilliseconds: 5000) != nil else {
            fail("expected \(String(decoding: event, as: UTF8.self)), got \(String(decoding: socket.buffer, as: UTF8.self))")
        }
        return socket
    }

    var holder = arrive(expecting: granted)
    var line: [RawSocket] = []
    for _ in 0..<waiters { line.append(arrive(expecting: queued)) }
    var samples: [UInt64] = []
    samples.reserveCapacity(rounds)
    for _ in 0..<rounds {
        let start = monotonicNow()
        holder.send(closeFrame)
        guard line[0].read(until: granted, timeoutMilliseconds: 5000) != nil else { fail("the head waiter was not granted") }
        samples.append(monotonicNow() - start)
        for other in line.dropFirst() where other.read(until: granted, timeoutMilliseconds: 0) != nil {
            fail("FIFO broken: a waiter behind the head was granted")
        }
        holder.drainAndClose()
        holder = line.removeFirst()
        // The newcomer must be told it is last in line.
        let newcomer = RawSocket(host: host, port: port)
        newcomer.send(handshake)
        guard newcomer.read(until: Array("\r\n\r\n".utf8), timeoutMilliseconds: 5000) != nil else { fail("no handshake answer") }
        newcomer.send(acquireFrame)
        guard newcomer.read(until: queued, timeoutMilliseconds: 5000) != nil,
              newcomer.read(until: position, timeoutMilliseconds: 5000) != nil,
              let digits = newcomer.read(until: Array("}".utf8), timeoutMilliseconds: 5000),
              Int(String(decoding: digits.prefix(while: { (48...57).contains($0) }), as: UTF8.self)) == waiters
        else { fail("the newcomer was not queued at position \(waiters)") }
        line.append(newcomer)
    }
    return samples
}

func monotonicNow() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
}
