// The `watch` load: a big lab that changes while many watchers follow it. Measures what a user
// of that lab sees: grant latency, GET /v1/status latency, and how long a change takes to show
// in a watcher's stream. Benchmark code: it trusts the server's answers.
//
// - passive watchers (permessage-deflate offered) read and drop every snapshot;
// - one measuring watcher (uncompressed) scans its stream for holders named `tick-N`;
// - the change maker grants bench-(N mod 50) to holder `tick-N` every 1/rate·2 s after releasing
//   the same resource's previous holder (two changes a tick);
// - a prober acquires a resource of its own and releases it, over and over (grant latency);
// - a status prober fetches /v1/status five times a second.
#if canImport(Glibc)
import Glibc
#endif
import CEpoll
import Dispatch
import WebSocketCodec

private let tickMarker = Array("\"holder\":\"tick-".utf8)

private func upgradeRequest(_ path: String, port: UInt16, extensions: String?) -> [UInt8] {
    let offer = extensions.map { "Sec-WebSocket-Extensions: \($0)\r\n" } ?? ""
    return Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\(offer)\r\n".utf8)
}

private final class Ticks: @unchecked Sendable {
    private var lock = pthread_mutex_t()
    private var grantedAt: [Int: UInt64] = [:]
    private var lastSeen = -1
    private(set) var lags: [UInt64] = []

    init() { pthread_mutex_init(&lock, nil) }

    func granted(_ tick: Int, at time: UInt64) {
        pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }
        grantedAt[tick] = time
    }

    /// The watcher saw holder tick-`tick` at `time`: every tick up to it that it had not seen yet
    /// has now shown.
    func seen(_ tick: Int, at time: UInt64) {
        pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }
        guard tick > lastSeen else { return }
        for shown in (lastSeen + 1)...tick {
            if let at = grantedAt.removeValue(forKey: shown) { lags.append(time > at ? time - at : 0) }
        }
        lastSeen = tick
    }

    var unseen: Int {
        pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }
        return grantedAt.count
    }
}

/// A thread of its own for blocking work (Dispatch's global pool is as wide as the machine).
private func startThread(_ body: @escaping () -> Void) {
    final class Box { let body: () -> Void; init(_ body: @escaping () -> Void) { self.body = body } }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    guard pthread_create(&thread, nil, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        box.body()
        return nil
    }, box) == 0 else { fail("pthread_create failed") }
    pthread_detach(thread)
}

func runWatchBench(host: String, port: UInt16, watchers: Int, seconds: Int, changesPerSecond: Int) {
    let stop = monotonicNow() + UInt64(seconds) * 1_000_000_000
    let ticks = Ticks()
    var finished = 0
    let done = DispatchSemaphore(value: 0)

    // Passive watchers: one epoll thread reads and drops.
    let passive = (0..<max(0, watchers - 1)).map { _ in RawSocket(host: host, port: port) }
    for socket in passive { socket.send(upgradeRequest("/v1/watch", port: port, extensions: "permessage-deflate; client_max_window_bits")) }
    startThread {
        let epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        for socket in passive {
            var event = epoll_event()
            event.events = EPOLLIN.rawValue
            event.data.fd = socket.fd
            epoll_ctl(epoll, EPOLL_CTL_ADD, socket.fd, &event)
        }
        var events = [epoll_event](repeating: epoll_event(), count: 128)
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while monotonicNow() < stop {
            let count = epoll_wait(epoll, &events, Int32(events.count), 100)
            for index in 0..<max(0, Int(count)) {
                _ = buffer.withUnsafeMutableBytes { read(events[index].data.fd, $0.baseAddress, $0.count) }
            }
        }
        for socket in passive { close(socket.fd) }
        done.signal()
    }

    // The measuring watcher.
    let measuring = RawSocket(host: host, port: port)
    measuring.send(upgradeRequest("/v1/watch", port: port, extensions: nil))
    startThread {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var carry: [UInt8] = []
        var poller = pollfd(fd: measuring.fd, events: Int16(POLLIN), revents: 0)
        while monotonicNow() < stop {
            guard poll(&poller, 1, 100) == 1 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(measuring.fd, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            let now = monotonicNow()
            let chunk = carry + buffer[0..<count]
            // memmem, not a generic search: a slow scan would measure this reader's backlog.
            let highest = chunk.withUnsafeBytes { bytes -> Int in
                guard let base = bytes.baseAddress else { return -1 }
                var highest = -1
                var from = 0
                while from < bytes.count,
                      let found = tickMarker.withUnsafeBytes({ bench_find(base + from, bytes.count - from, $0.baseAddress, $0.count) }) {
                    var at = base.distance(to: found) + tickMarker.count
                    var number = 0
                    while at < bytes.count, (48...57).contains(bytes[at]) { number = number * 10 + Int(bytes[at] - 48); at += 1 }
                    if at < bytes.count { highest = max(highest, number) }
                    from = at
                }
                return highest
            }
            if highest >= 0 { ticks.seen(highest, at: now) }
            carry = Array(chunk.suffix(32))
        }
        close(measuring.fd)
        done.signal()
    }

    // The change maker.
    startThread {
        var holders: [Int: RawSocket] = [:]
        let interval = 2_000_000_000 / UInt64(max(1, changesPerSecond))
        var tick = 0
        var next = monotonicNow()
        while monotonicNow() < stop {
            let slot = tick % 50
            if let previous = holders.removeValue(forKey: slot) { close(previous.fd) }
            let socket = RawSocket(host: host, port: port)
            socket.send(upgradeRequest("/v1/lease", port: port, extensions: nil))
            var frame: [UInt8] = []
            WebSocketEncoder.appendFrame(opcode: .text, payload: Array("{\"op\":\"acquire\",\"holder\":\"tick-\(tick)\",\"want\":[{\"name\":\"bench-\(slot)\"}]}".utf8),
                                         maskingKey: (1, 2, 3, 4), into: &frame)
            socket.send(frame)
            guard socket.read(until: Array("\"granted\"".utf8), timeoutMilliseconds: 60_000) != nil else { fail("tick \(tick) was not granted within a minute") }
            ticks.granted(tick, at: monotonicNow())
            holders[slot] = socket
            tick += 1
            next += interval
            let now = monotonicNow()
            if next > now { usleep(UInt32((next - now) / 1000)) }
        }
        for socket in holders.values { close(socket.fd) }
        done.signal()
    }

    // The status prober.
    nonisolated(unsafe) var statusTimes: [UInt64] = []
    startThread {
        while monotonicNow() < stop {
            let start = monotonicNow()
            guard httpGet(port: port, path: "/v1/status") > 0 else { fail("GET /v1/status failed") }
            statusTimes.append(monotonicNow() - start)
            usleep(200_000)
        }
        done.signal()
    }

    // The grant prober, here.
    var grantTimes: [UInt64] = []
    var acquire: [UInt8] = []
    WebSocketEncoder.appendFrame(opcode: .text, payload: Array("{\"op\":\"acquire\",\"holder\":\"prober\",\"want\":[{\"name\":\"bench-100\"}]}".utf8),
                                 maskingKey: (1, 2, 3, 4), into: &acquire)
    while monotonicNow() < stop {
        let socket = RawSocket(host: host, port: port)
        socket.send(upgradeRequest("/v1/lease", port: port, extensions: nil))
        let start = monotonicNow()
        socket.send(acquire)
        guard socket.read(until: Array("\"granted\"".utf8), timeoutMilliseconds: 60_000) != nil else { fail("the prober was not granted within a minute") }
        grantTimes.append(monotonicNow() - start)
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(socket.fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close(socket.fd)
        usleep(10_000)
    }
    while finished < 4 { done.wait(); finished += 1 }
    grantTimes.sort()
    statusTimes.sort()
    var lags = ticks.lags
    lags.sort()
    print("grant while watched: \(grantTimes.count) grants, p50 \(format(percentile(grantTimes, 0.5))) ms, p99 \(format(percentile(grantTimes, 0.99))) ms")
    print("GET /v1/status: \(statusTimes.count) requests, p50 \(format(percentile(statusTimes, 0.5))) ms, p99 \(format(percentile(statusTimes, 0.99))) ms")
    print("change → seen by a watcher: \(lags.count) changes seen, \(ticks.unseen) never seen, p50 \(format(percentile(lags, 0.5))) ms, p99 \(format(percentile(lags, 0.99))) ms, max \(format(Double(lags.last ?? 0) / 1e6)) ms")
}
