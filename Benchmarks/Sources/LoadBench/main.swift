// LoadBench: a load tool that speaks the leasehold protocol, on our own transport.
//
//   LoadBench cycles  --port P [--clients 200] [--seconds 10] [--type bench] [--close frame|rst]
//       acquire → granted → close, as fast as possible; cycles/s and grant latency p50/p99
//   LoadBench handoff --port P [--rounds 1000] [--waiters 10] [--name bench-7]
//       time from a holder's close to the head waiter's grant, p50/p99, FIFO checked
//   LoadBench watch   --port P [--watchers 100] [--changes 50] [--seconds 20]
//       grant and GET /v1/status latency while watchers follow a changing lab, and how long a
//       change takes to reach a watcher (see WatchBench.swift)
//   LoadBench hold    --port P --server-pid PID [--connections 19000] [--type bench]
//                     [--checkpoints 1000,5000]
//       opens that many lease connections, each granted one resource. At each checkpoint and at
//       the end: server RSS per held lease, how long GET /v1/status takes, and how long one more
//       acquire takes to be granted (grants still flowing)
//
// Generate a large inventory with `LoadBench inventory N > bench.yaml`.
import Dispatch
import LeaseProtocol
import Transport
#if canImport(Glibc)
import Glibc
#endif

func now() -> UInt64 { SystemClock.system.now() }

func fail(_ message: String) -> Never {
    fputs("LoadBench: \(message)\n", stderr)
    exit(2)
}

struct Arguments {
    var values: [String: String] = [:]
    var command = ""

    init() {
        var list = Array(CommandLine.arguments.dropFirst())
        guard !list.isEmpty else { fail("usage: LoadBench cycles|handoff|hold|inventory ... (see the header of main.swift)") }
        command = list.removeFirst()
        var index = 0
        while index < list.count {
            let key = list[index]
            if key.hasPrefix("--"), index + 1 < list.count {
                values[String(key.dropFirst(2))] = list[index + 1]
                index += 2
            } else {
                values["_\(index)"] = key
                index += 1
            }
        }
    }

    func int(_ key: String, _ fallback: Int) -> Int { values[key].flatMap { Int($0) } ?? fallback }
    func string(_ key: String, _ fallback: String) -> String { values[key] ?? fallback }
}

func percentile(_ sorted: [UInt64], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    let index = min(sorted.count - 1, Int(Double(sorted.count) * p))
    return Double(sorted[index]) / 1e6
}

func format(_ value: Double) -> String {
    let scaled = (value * 1000).rounded() / 1000
    return String(scaled)
}

/// One connection that acquires, and reports what the server said.
final class LeaseClient: WebSocketHandler, @unchecked Sendable {
    let request: String
    var onGranted: (LeaseClient) -> Void = { _ in }
    var onQueued: (LeaseClient) -> Void = { _ in }
    var onClosed: (LeaseClient, UInt16) -> Void = { _, _ in }
    var socket: WebSocketConnection?
    var sentAt: UInt64 = 0

    init(request: String) { self.request = request }

    func webSocketDidOpen(_ socket: WebSocketConnection) {
        self.socket = socket
        sentAt = now()
        socket.send(text: request)
    }

    func webSocket(_ socket: WebSocketConnection, didReceiveText text: [UInt8]) {
        // Cheap check: the event name is near the start.
        let head = String(decoding: text.prefix(24), as: UTF8.self)
        if head.contains("granted") { onGranted(self) } else if head.contains("queued") { onQueued(self) } else {
            fputs("LoadBench: server said \(String(decoding: text, as: UTF8.self))\n", stderr)
        }
    }

    func webSocketDidClose(_ socket: WebSocketConnection, code: UInt16, reason: String) {
        onClosed(self, code)
    }
}

let arguments = Arguments()
let port = UInt16(arguments.int("port", 7400))
let host = arguments.string("host", "127.0.0.1")
let group = EventLoopGroup(count: 1, label: "loadbench")
let loop = group.loops[0]
var configuration = WebSocketConfiguration()
configuration.pingInterval = nil
configuration.deadAfter = nil
configuration.closeTimeout = .seconds(2)

func acquireText(_ group: String) -> String { "{\"op\":\"acquire\",\"holder\":\"loadbench\",\"want\":[\(group)]}" }

func connect(_ client: LeaseClient, path: String = "/v1/lease") {
    WebSocketClient.connect(host: host, port: port, path: path, loop: loop, configuration: configuration,
                            handler: client) { result in
        if case .failure(let error) = result { fail("connect: \(error)") }
    }
}

func rssKiB(pid: Int) -> Int {
    guard let file = fopen("/proc/\(pid)/status", "r") else { return -1 }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, Int32(line.count), file) != nil {
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if text.hasPrefix("VmRSS:") {
            return Int(text.split(separator: " ").dropFirst().first ?? "") ?? -1
        }
    }
    return -1
}

func cpuSeconds(pid: Int) -> Double {
    guard let file = fopen("/proc/\(pid)/stat", "r") else { return -1 }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 1024)
    guard fgets(&line, Int32(line.count), file) != nil else { return -1 }
    let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    guard let close = text.lastIndex(of: ")") else { return -1 }
    let fields = text[text.index(after: close)...].split(separator: " ")
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return -1 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// A blocking GET over a fresh connection; returns the body's size (-1 on failure).
func httpGet(port: UInt16, path: String) -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return -1 }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { return -1 }
    let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
    guard send(fd, request, request.count, 0) == request.count else { return -1 }
    var total = 0
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let count = recv(fd, &buffer, buffer.count, 0)
        if count <= 0 { break }
        total += count
    }
    return total
}

switch arguments.command {
case "inventory":
    let count = Int(arguments.values["_0"] ?? "") ?? 20_000
    var text = "resources:\n"
    for index in 0..<count {
        text += "  - name: bench-\(String(index))\n    type: bench\n    labels: {pool: \"p\(index % 10)\"}\n"
    }
    print(text, terminator: "")
    exit(0)

case "cycles":
    // A raw epoll client with precomputed frames, so that the load tool costs far less per cycle
    // than the server and the server is what limits the rate.
    let clients = arguments.int("clients", 200)
    let seconds = arguments.int("seconds", 10)
    let type = arguments.string("type", "bench")
    let serverPID = arguments.int("server-pid", 0)
    let cpuBefore = serverPID > 0 ? cpuSeconds(pid: serverPID) : 0
    let close = arguments.string("close", "frame")
    guard close == "frame" || close == "rst" else { fail("--close is frame or rst") }
    runRawCycles(host: host, port: port, clients: clients, seconds: seconds,
                 request: acquireText("{\"type\":\"\(type)\"}"), resetInsteadOfClose: close == "rst")
    let report = rawReport
    print("cycles: \(report.cycles) in \(format(report.elapsed)) s = \(Int(Double(report.cycles) / report.elapsed)) cycles/s with \(clients) clients")
    print("grant latency (acquire sent → granted): p50 \(format(percentile(report.latencies, 0.5))) ms, p99 \(format(percentile(report.latencies, 0.99))) ms")
    var usage = rusage()
    getrusage(Int32(RUSAGE_SELF.rawValue), &usage)
    let own = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    print("load tool CPU: \(format(own)) s = \(Int(own / report.elapsed * 100))% of one core")
    if serverPID > 0 {
        let cpu = cpuSeconds(pid: serverPID) - cpuBefore
        print("server CPU: \(format(cpu)) s over \(format(report.elapsed)) s = \(Int(cpu / report.elapsed * 100))% of one core")
    }
    exit(0)

case "handoff":
    // One resource, a holder and --waiters queued behind it; each round the holder closes and
    // the head of the line is granted (see RawHandoff.swift).
    let rounds = arguments.int("rounds", 1000)
    let waiters = arguments.int("waiters", 10)
    let name = arguments.string("name", "bench-7")
    var samples = runRawHandoff(host: host, port: port, rounds: rounds, waiters: waiters,
                                request: acquireText("{\"name\":\"\(name)\"}"))
    samples.sort()
    print("hand-off with \(waiters) waiters (holder's close sent → head waiter granted, FIFO checked), \(samples.count) rounds: p50 \(format(percentile(samples, 0.5))) ms, p99 \(format(percentile(samples, 0.99))) ms")
    exit(0)

case "watch":
    // Needs an inventory of at least 101 resources named bench-N (`LoadBench inventory 20000`).
    runWatchBench(host: host, port: port, watchers: arguments.int("watchers", 100), seconds: arguments.int("seconds", 20),
                  changesPerSecond: arguments.int("changes", 50))
    exit(0)

case "hold":
    let total = arguments.int("connections", 19_000)
    let type = arguments.string("type", "bench")
    let serverPID = arguments.int("server-pid", 0)
    guard serverPID > 0 else { fail("hold needs --server-pid (to read the server's RSS)") }
    let checkpoints = (arguments.string("checkpoints", "1000,5000").split(separator: ",").compactMap { Int($0) }
        .filter { $0 > 0 && $0 < total } + [total]).sorted()
    let rssBefore = rssKiB(pid: serverPID)
    let request = acquireText("{\"type\":\"\(type)\"}")
    nonisolated(unsafe) var granted = 0
    nonisolated(unsafe) var opened = 0
    nonisolated(unsafe) var clientsKept: [LeaseClient] = []
    nonisolated(unsafe) var nextCheckpoint = 0
    let start = now()

    /// RSS, a status request and one more grant, with `held` leases open; then `then`.
    @Sendable func measure(held: Int, then: @escaping @Sendable () -> Void) {
        // Let the server settle before reading its memory.
        loop.queue.asyncAfter(deadline: .now() + .seconds(2)) {
            let rss = rssKiB(pid: serverPID)
            let perLease = Double(rss - rssBefore) * 1024 / Double(held)
            DispatchQueue.global().async {
                let statusStart = now()
                let bytes = httpGet(port: port, path: "/v1/status")
                let statusMs = Double(now() - statusStart) / 1e6
                loop.execute {
                    let probe = LeaseClient(request: request)
                    probe.onGranted = { client in
                        let grantMs = Double(now() - client.sentAt) / 1e6
                        print("\(held) leases: RSS \(rss) KiB (\(Int(perLease)) bytes per lease over the \(rssBefore) KiB before); "
                              + "GET /v1/status \(format(statusMs)) ms (\(bytes) bytes); one more grant \(format(grantMs)) ms")
                        client.onClosed = { _, _ in }
                        client.socket?.close(code: 1000)
                        then()
                    }
                    probe.onClosed = { _, code in fail("the probe lease closed (code \(code))") }
                    clientsKept.append(probe)
                    connect(probe)
                }
            }
        }
    }

    // Open in batches so the accept backlog is not flooded; stop at each checkpoint to measure.
    @Sendable func openMore() {
        let target = checkpoints[nextCheckpoint]
        let batch = min(200, target - opened)
        for _ in 0..<batch {
            let client = LeaseClient(request: request)
            client.onGranted = { _ in
                granted += 1
                guard granted == checkpoints[nextCheckpoint] else { return }
                if granted == total {
                    print("held leases: \(granted) (opened in \(format(Double(now() - start) / 1e9)) s)")
                    measure(held: granted) { exit(0) }
                } else {
                    measure(held: granted) {
                        nextCheckpoint += 1
                        openMore()
                    }
                }
            }
            client.onClosed = { _, code in fail("a lease connection closed (code \(code)) after \(granted) grants") }
            clientsKept.append(client)
            connect(client)
        }
        opened += batch
        if opened < target {
            loop.queue.asyncAfter(deadline: .now() + .milliseconds(20)) { openMore() }
        }
    }
    loop.execute { openMore() }

default:
    fail("unknown command \(arguments.command): use cycles, handoff, watch, hold or inventory")
}

dispatchMain()
