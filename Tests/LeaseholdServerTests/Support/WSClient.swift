import Dispatch
import Foundation
import LeaseProtocol
import Testing
import Transport

/// A FIFO that one task reads with a deadline while any thread pushes.
final class EventBuffer<Item: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [Item] = []
    private var waiter: (id: UInt64, continuation: CheckedContinuation<Item?, Never>)?
    private var nextWaiterID: UInt64 = 0

    func push(_ item: Item) {
        lock.lock()
        if let waiter {
            self.waiter = nil
            lock.unlock()
            waiter.continuation.resume(returning: item)
        } else {
            items.append(item)
            lock.unlock()
        }
    }

    /// The next item, or nil after `timeout` seconds.
    func next(timeout: Double) async -> Item? {
        await withCheckedContinuation { continuation in
            lock.lock()
            if !items.isEmpty {
                let item = items.removeFirst()
                lock.unlock()
                continuation.resume(returning: item)
                return
            }
            nextWaiterID += 1
            let id = nextWaiterID
            waiter = (id, continuation)
            lock.unlock()
            DispatchQueue.global().asyncAfter(deadline: .now() + timeout) { [self] in
                lock.lock()
                if let waiter, waiter.id == id {
                    self.waiter = nil
                    lock.unlock()
                    waiter.continuation.resume(returning: nil)
                } else {
                    lock.unlock()
                }
            }
        }
    }
}

/// Client loops shared by every test client.
enum ClientLoops {
    static let group = EventLoopGroup(count: 2, label: "leasehold-test.client")
}

/// A WebSocket client for tests: every message and the close land in a buffer that the test reads
/// in order, each read with a deadline. Pings are answered by the transport.
final class WSClient: WebSocketHandler, @unchecked Sendable {
    enum Message: Sendable, Equatable, CustomStringConvertible {
        case text(String)
        case binary([UInt8])
        case closed(code: UInt16, reason: String)

        var description: String {
            switch self {
            case .text(let text): return "text \(text)"
            case .binary(let bytes): return "binary (\(bytes.count) bytes)"
            case .closed(let code, let reason): return "close \(code) \(reason)"
            }
        }
    }

    private let buffer = EventBuffer<Message>()
    private let lock = NSLock()
    private var socketStorage: WebSocketConnection?
    let loop: EventLoop

    private init(loop: EventLoop) {
        self.loop = loop
    }

    static func connect(port: UInt16, path: String, headers: [(String, String)] = []) async throws -> WSClient {
        let result = try await connectResult(port: port, path: path, headers: headers)
        return try result.get()
    }

    /// The raw outcome of the upgrade (for tests that expect a refusal).
    static func connectResult(port: UInt16, path: String, headers: [(String, String)] = []) async throws -> Result<WSClient, WebSocketClientError> {
        let loop = ClientLoops.group.next()
        let client = WSClient(loop: loop)
        let outcome = EventBuffer<Result<WebSocketConnection, WebSocketClientError>>()
        // The server pings; a test client only answers, so what it sends is what the test sent
        // (or a pong).
        var configuration = WebSocketConfiguration()
        configuration.pingInterval = nil
        WebSocketClient.connect(host: "127.0.0.1", port: port, path: path, headers: headers, loop: loop,
                                configuration: configuration, handshakeTimeout: .seconds(Int64(liveness)),
                                handler: client) { outcome.push($0) }
        guard let result = await outcome.next(timeout: liveness + 1) else { throw TestTimeout(what: "connect \(path)") }
        switch result {
        case .success(let socket):
            client.setSocket(socket)
            return .success(client)
        case .failure(let error):
            return .failure(error)
        }
    }

    private func setSocket(_ socket: WebSocketConnection) {
        lock.lock()
        socketStorage = socket
        lock.unlock()
    }

    private var socket: WebSocketConnection? {
        lock.lock()
        defer { lock.unlock() }
        return socketStorage
    }

    // MARK: WebSocketHandler (on the loop)

    func webSocketDidOpen(_ socket: WebSocketConnection) {
        setSocket(socket)
    }

    func webSocket(_ socket: WebSocketConnection, didReceiveText text: [UInt8]) {
        buffer.push(.text(String(decoding: text, as: UTF8.self)))
    }

    func webSocket(_ socket: WebSocketConnection, didReceiveBinary data: [UInt8]) {
        buffer.push(.binary(data))
    }

    func webSocketDidClose(_ socket: WebSocketConnection, code: UInt16, reason: String) {
        buffer.push(.closed(code: code, reason: reason))
    }

    // MARK: sending

    func send(_ text: String) {
        guard let socket else { return }
        loop.execute { socket.send(text: text) }
    }

    func sendBinary(_ bytes: [UInt8]) {
        guard let socket else { return }
        loop.execute { socket.send(binary: bytes) }
    }

    func close(code: UInt16 = 1000) {
        guard let socket else { return }
        loop.execute { socket.close(code: code, reason: "") }
    }

    /// Drops the TCP connection without a close frame.
    func abort() {
        guard let socket else { return }
        loop.execute { socket.abort() }
    }

    // MARK: receiving

    func next(timeout: Double = liveness) async throws -> Message {
        guard let message = await buffer.next(timeout: timeout) else { throw TestTimeout(what: "a message") }
        return message
    }

    /// The next message if one comes within `timeout`, else nil.
    func poll(timeout: Double) async -> Message? {
        await buffer.next(timeout: timeout)
    }

    /// The next message, which must be a text event; returns it parsed.
    func nextEvent(timeout: Double = liveness) async throws -> JSONValue {
        let message = try await next(timeout: timeout)
        guard case .text(let text) = message else { throw TestFailure("expected an event, got \(message)") }
        return try JSONValue.parse(text)
    }

    /// The next message must be the event `name`.
    @discardableResult
    /// The next event must be `name`. A waiter's position updates (`queued` without a `resume`
    /// token) may come first whenever its place changes, and at most one a second: on a loaded
    /// machine one more second can pass before the event a test waits for, so they are skipped.
    func expectEvent(_ name: String, timeout: Double = liveness) async throws -> JSONValue {
        var event = try await nextEvent(timeout: timeout)
        while name != "queued", event["event"]?.stringValue == "queued", event["resume"] == nil {
            event = try await nextEvent(timeout: timeout)
        }
        guard event["event"]?.stringValue == name else {
            throw TestFailure("expected a \(name) event, got \(event.serialized())")
        }
        return event
    }

    /// The next message must be `{"event":"error","code":code}`; returns the message text.
    @discardableResult
    func expectError(_ code: String, timeout: Double = liveness) async throws -> String {
        let event = try await expectEvent("error", timeout: timeout)
        guard event["code"]?.stringValue == code else {
            throw TestFailure("expected error code \(code), got \(event.serialized())")
        }
        let message = event["message"]?.stringValue ?? ""
        guard !message.isEmpty else { throw TestFailure("error event without a message: \(event.serialized())") }
        return message
    }

    /// The next message must be the close; returns its code and reason.
    @discardableResult
    func expectClose(timeout: Double = liveness) async throws -> (code: UInt16, reason: String) {
        let message = try await next(timeout: timeout)
        guard case .closed(let code, let reason) = message else { throw TestFailure("expected the close, got \(message)") }
        return (code, reason)
    }

    /// An error event with `code`, then the close with `closeCode`.
    func expectFailure(_ code: String, closeCode: UInt16, timeout: Double = liveness) async throws {
        try await expectError(code, timeout: timeout)
        let close = try await expectClose()
        #expect(close.code == closeCode, "after error \(code) the close code was \(close.code) (\(close.reason))")
    }

    /// Nothing arrives within `seconds`.
    func expectSilence(_ seconds: Double) async throws {
        if let message = await buffer.next(timeout: seconds) {
            throw TestFailure("expected nothing, got \(message)")
        }
    }

    /// Nothing but position updates arrives within `seconds` (no grant, no error, no close).
    func expectOnlyPositionUpdates(_ seconds: Double) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while deadline.timeIntervalSinceNow > 0 {
            guard let message = await buffer.next(timeout: deadline.timeIntervalSinceNow) else { return }
            if case .text(let text) = message, let event = try? JSONValue.parse(text), event["event"] == .string("queued") {
                continue
            }
            throw TestFailure("expected to keep waiting, got \(message)")
        }
    }
}
