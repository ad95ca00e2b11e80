// An in-process HTTPServer on 127.0.0.1, port 0, with a handler that serves a few plain HTTP
// routes, upgrades /ws* to an echo WebSocket, and records what its sockets report.
import Dispatch
import HTTPCodec
import TransportTesting
import Testing
import Transport
#if canImport(Glibc)
import Glibc
#endif

/// What a WebSocket handler heard, in order.
enum SocketEvent: Sendable, Equatable {
    case opened(ObjectIdentifier)
    case text(ObjectIdentifier, String)
    case binary(ObjectIdentifier, Int)
    case closed(ObjectIdentifier, code: UInt16, reason: String)
}

final class EventLog: Sendable {
    private let events = Locked<[SocketEvent]>([])

    func append(_ event: SocketEvent) { events.withLock { $0.append(event) } }
    var all: [SocketEvent] { events.withLock { $0 } }

    var opened: Int { all.filter { if case .opened = $0 { true } else { false } }.count }
    /// Every close the handler heard: (socket, code, reason).
    var closes: [(socket: ObjectIdentifier, code: UInt16, reason: String)] {
        all.compactMap { if case .closed(let id, let code, let reason) = $0 { (id, code, reason) } else { nil } }
    }
    var texts: [String] {
        all.compactMap { if case .text(_, let text) = $0 { text } else { nil } }
    }
}

/// How long a wait for something that should happen may take before the test fails: it runs out
/// only when a test is failing anyway, so it is far longer than a loaded 2-core machine can stall
/// a test's task or the server's loop. Waits that expect nothing to happen name their own duration.
let hangGuard: Double = 60

/// Polls `condition` every 10 ms until it holds or `timeout` passes; returns whether it held.
/// For liveness only: a generous deadline, never a speed assertion.
func eventually(timeout: Duration = .seconds(hangGuard), _ condition: () -> Bool) async -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return condition()
}

/// The blocking variant, for code that cannot await.
func eventuallyBlocking(timeout: Duration = .seconds(hangGuard), _ condition: () -> Bool) -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Server-side application: HTTP routes and an echo WebSocket with a few test commands.
///
/// - `GET /hello` → 200 "hello"; `POST /body` → 200 echoing the body;
///   `GET /r/NAME` → 200 "/r/NAME"; `GET /delay/MS/NAME` → 200 "NAME" after MS ms, from another queue;
///   `GET /big/N` → 200 with N bytes of "a".
/// - `/ws…` upgrades. Text and binary messages are echoed, except the texts
///   `cmd:close:CODE` (the server closes with CODE) and `cmd:flood` (the server sends 16 KiB
///   binary messages, one per loop turn, until the socket closes or 512 MiB went out).
final class TestHandler: HTTPRequestHandler, WebSocketHandler {
    let log = EventLog()
    /// Every WebSocket this handler has seen open, for tests that look at a connection's state.
    let sockets = Locked<[WebSocketConnection]>([])
    static let floodChunk = [UInt8](repeating: 0x5A, count: 16 * 1024)

    func handle(_ request: HTTPRequest, responder: HTTPResponder) {
        let path = request.head.path
        if path.hasPrefix("/ws") {
            responder.upgradeToWebSocket(handler: self)
        } else if path == "/hello" {
            responder.respond(.text(200, "hello"))
        } else if path == "/body" {
            responder.respond(HTTPResponse(status: 200, body: request.body))
        } else if path.hasPrefix("/r/") {
            responder.respond(.text(200, path))
        } else if path.hasPrefix("/big/"), let size = Int(path.dropFirst("/big/".count)), size <= 64 << 20 {
            responder.respond(HTTPResponse(status: 200, body: [UInt8](repeating: 0x61, count: size)))
        } else if path.hasPrefix("/delay/") {
            let parts = path.split(separator: "/")
            let milliseconds = parts.count == 3 ? Int(parts[1]) ?? 0 : 0
            let name = parts.count == 3 ? String(parts[2]) : ""
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(milliseconds)) {
                responder.respond(.text(200, name))
            }
        } else {
            responder.respond(.text(404, "no route \(path)"))
        }
    }

    func webSocketDidOpen(_ socket: WebSocketConnection) {
        sockets.withLock { $0.append(socket) }
        log.append(.opened(ObjectIdentifier(socket)))
    }

    func webSocket(_ socket: WebSocketConnection, didReceiveText text: [UInt8]) {
        let string = String(decoding: text, as: UTF8.self)
        log.append(.text(ObjectIdentifier(socket), string.count <= 256 ? string : "<\(text.count) bytes>"))
        if string.hasPrefix("cmd:close:"), let code = UInt16(string.dropFirst("cmd:close:".count)) {
            socket.close(code: code, reason: "closing as asked")
        } else if string == "cmd:flood" {
            flood(socket, remaining: 32 * 1024)
        } else {
            socket.send(text: text)
        }
    }

    func webSocket(_ socket: WebSocketConnection, didReceiveBinary data: [UInt8]) {
        log.append(.binary(ObjectIdentifier(socket), data.count))
        socket.send(binary: data)
    }

    func webSocketDidClose(_ socket: WebSocketConnection, code: UInt16, reason: String) {
        log.append(.closed(ObjectIdentifier(socket), code: code, reason: reason))
    }

    private func flood(_ socket: WebSocketConnection, remaining: Int) {
        guard remaining > 0, socket.isOpen else { return }
        socket.send(binary: Self.floodChunk)
        socket.loop.execute { [self] in flood(socket, remaining: remaining - 1) }
    }
}

/// Servers, groups and handlers are kept alive for the whole test process: connections refer to
/// their server and loop unowned, so freeing one while a connection drains would crash.
private let keepAlive = Locked<[AnyObject]>([])

final class TestServer: Sendable {
    let group: EventLoopGroup
    let server: HTTPServer
    let handler: TestHandler
    let port: UInt16
    var log: EventLog { handler.log }

    init(loops: Int = 2, group: EventLoopGroup? = nil, host: String = "127.0.0.1", clock: LoopClock = .system,
         tls: TLSServerContext? = nil, configure: (inout HTTPServerConfiguration) -> Void = { _ in }) throws {
        var configuration = HTTPServerConfiguration()
        configure(&configuration)
        self.group = group ?? EventLoopGroup(count: loops, label: "test.server", clock: clock)
        handler = TestHandler()
        server = HTTPServer(group: self.group, configuration: configuration, handler: handler)
        port = try server.listen(on: SocketAddress(host: host, port: 0), tls: tls).port
        keepAlive.withLock { $0.append(self) }
    }

    var openConnections: Int { server.openConnections }

    /// closeAllConnections as an async call; returns when its completion has run.
    func closeAll(code: UInt16 = 1001, reason: String = "test over", timeout: Duration = .seconds(3)) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            server.closeAllConnections(code: code, reason: reason, timeout: timeout) {
                continuation.resume()
            }
        }
    }

    func shutdown() async {
        server.stopAccepting()
        await whileTimePasses(group.clock) { await closeAll() }
    }
}

/// Runs `body`; meanwhile a manual clock moves on by itself (see `ManualClock.passingTime`).
func whileTimePasses(_ clock: LoopClock, _ body: () async -> Void) async {
    if let manual = clock as? ManualClock { await manual.passingTime(during: body) } else { await body() }
}

/// Runs `body` with a fresh server and shuts it down afterwards, also when `body` throws.
func withServer<R>(loops: Int = 2, clock: LoopClock = .system, configure: (inout HTTPServerConfiguration) -> Void = { _ in },
                   _ body: (TestServer) async throws -> R) async throws -> R {
    let server = try TestServer(loops: loops, clock: clock, configure: configure)
    do {
        let result = try await body(server)
        await server.shutdown()
        return result
    } catch {
        await server.shutdown()
        throw error
    }
}

/// A WebSocketHandler for the transport's own client role, recording what it hears.
final class ClientHandler: WebSocketHandler {
    let log = EventLog()

    func webSocketDidOpen(_ socket: WebSocketConnection) { log.append(.opened(ObjectIdentifier(socket))) }
    func webSocket(_ socket: WebSocketConnection, didReceiveText text: [UInt8]) {
        log.append(.text(ObjectIdentifier(socket), String(decoding: text, as: UTF8.self)))
    }
    func webSocket(_ socket: WebSocketConnection, didReceiveBinary data: [UInt8]) {
        log.append(.binary(ObjectIdentifier(socket), data.count))
    }
    func webSocketDidClose(_ socket: WebSocketConnection, code: UInt16, reason: String) {
        log.append(.closed(ObjectIdentifier(socket), code: code, reason: reason))
    }
}

/// `WebSocketClient.connect` as an async call.
func connectClient(host: String = "127.0.0.1", port: UInt16, path: String = "/ws", headers: [(String, String)] = [], loop: EventLoop,
                   configuration: WebSocketConfiguration = WebSocketConfiguration(), tls: TLSClientContext? = nil,
                   handshakeTimeout: Duration = .seconds(5),
                   handler: WebSocketHandler) async -> Result<WebSocketConnection, WebSocketClientError> {
    let result = await withCheckedContinuation { continuation in
        WebSocketClient.connect(host: host, port: port, path: path, headers: headers, loop: loop,
                                configuration: configuration, handshakeTimeout: handshakeTimeout, tls: tls,
                                handler: handler) { continuation.resume(returning: $0) }
    }
    // The socket was built on the loop; a sync with the loop's queue is the hand-over that
    // ThreadSanitizer sees (it does not see the continuation's).
    loop.queue.sync {}
    return result
}

/// A client event loop group, kept alive like the servers.
func makeClientGroup() -> EventLoopGroup {
    let group = EventLoopGroup(count: 1, label: "test.client")
    keepAlive.withLock { $0.append(group) }
    return group
}
