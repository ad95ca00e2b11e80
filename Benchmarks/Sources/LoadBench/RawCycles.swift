// The `cycles` load: connect → upgrade → acquire → granted → close frame (or RST), over and over, on a bare
// epoll loop with frames built once. Benchmark code: it trusts the server's answers.
import CEpoll
import LeaseProtocol
import WebSocketCodec
#if canImport(Glibc)
import Glibc
#endif

struct RawReport {
    var cycles = 0
    var elapsed = 0.0
    var latencies: [UInt64] = []
}

nonisolated(unsafe) var rawReport = RawReport()

private enum Phase { case connecting, handshake, waitingGrant, closing }

private struct RawClient {
    var fd: Int32 = -1
    var phase = Phase.connecting
    var buffer: [UInt8] = []
    var sentAt: UInt64 = 0
}

private func monotonic() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
}

private func send(_ fd: Int32, _ bytes: [UInt8]) {
    _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
}

/// The bytes a raw lease client sends: its upgrade request, its acquire and its close frame.
func prebuiltLeaseFrames(host: String, port: UInt16, request: String) -> (handshake: [UInt8], acquire: [UInt8], close: [UInt8]) {
    let handshake = Array("GET /v1/lease HTTP/1.1\r\nHost: \(host):\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".utf8)
    var acquire: [UInt8] = []
    WebSocketEncoder.appendFrame(opcode: .text, payload: Array(request.utf8), maskingKey: (1, 2, 3, 4), into: &acquire)
    var close: [UInt8] = []
    WebSocketEncoder.appendFrame(opcode: .close, payload: WebSocketEncoder.closePayload(code: 1000, reason: ""),
                                 maskingKey: (5, 6, 7, 8), into: &close)
    return (handshake, acquire, close)
}

func runRawCycles(host: String, port: UInt16, clients: Int, seconds: Int, request: String, resetInsteadOfClose: Bool) {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { fail("cycles needs a numeric IPv4 --host") }

    let (handshake, acquireFrame, closeFrame) = prebuiltLeaseFrames(host: host, port: port, request: request)
    let granted = Array("\"granted\"".utf8)

    let epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
    var states = [Int32: RawClient]()
    let start = monotonic()
    let stop = start + UInt64(seconds) * 1_000_000_000
    var latencies: [UInt64] = []
    latencies.reserveCapacity(200_000)
    var running = 0

    func open() {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { fail("socket: \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 || errno == EINPROGRESS else { fail("connect: \(errno)") }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLET.rawValue
        event.data.fd = fd
        epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event)
        states[fd] = RawClient(fd: fd)
        running += 1
    }

    func finish(_ fd: Int32) {
        epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil)
        close(fd)
        states[fd] = nil
        running -= 1
        if monotonic() < stop { open() }
    }

    for _ in 0..<clients { open() }
    var events = [epoll_event](repeating: epoll_event(), count: 256)
    var readBuffer = [UInt8](repeating: 0, count: 16 * 1024)
    while running > 0 {
        let count = epoll_wait(epoll, &events, Int32(events.count), 1000)
        if count < 0 { if errno == EINTR { continue }; fail("epoll_wait: \(errno)") }
        for index in 0..<Int(count) {
            let fd = events[index].data.fd
            guard var client = states[fd] else { continue }
            if client.phase == .connecting, events[index].events & EPOLLOUT.rawValue != 0 {
                client.phase = .handshake
                send(fd, handshake)
            }
            var closed = false
            while true {
                let n = readBuffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 { client.buffer.append(contentsOf: readBuffer[0..<n]); continue }
                if n == 0 { closed = true }
                break
            }
            if client.phase == .handshake, let end = client.buffer.firstRange(of: [13, 10, 13, 10]) {
                client.buffer.removeSubrange(0..<end.upperBound)
                client.phase = .waitingGrant
                client.sentAt = monotonic()
                send(fd, acquireFrame)
            }
            if client.phase == .waitingGrant, client.buffer.firstRange(of: granted) != nil {
                latencies.append(monotonic() - client.sentAt)
                client.buffer.removeAll(keepingCapacity: true)
                client.phase = .closing
                if resetInsteadOfClose {
                    // The abrupt end: RST, no close frame (a crashed client).
                    var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
                    setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
                    closed = true
                } else {
                    send(fd, closeFrame)
                }
            }
            if closed {
                finish(fd)
            } else {
                states[fd] = client
            }
        }
    }
    close(epoll)
    latencies.sort()
    rawReport = RawReport(cycles: latencies.count, elapsed: Double(monotonic() - start) / 1e9, latencies: latencies)
}
