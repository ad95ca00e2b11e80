import WebSocketCodec

/// The application side of a WebSocket. Every call arrives on the socket's loop.
public protocol WebSocketHandler: AnyObject, Sendable {
    func webSocketDidOpen(_ socket: WebSocketConnection)
    /// A complete text message; its UTF-8 is already validated.
    func webSocket(_ socket: WebSocketConnection, didReceiveText text: [UInt8])
    func webSocket(_ socket: WebSocketConnection, didReceiveBinary data: [UInt8])
    /// The socket is closed for messages, whatever the cause. Called exactly once, never from
    /// inside another callback of this handler. `code` is what was sent or received (1006 when the
    /// connection ended without a close frame).
    func webSocketDidClose(_ socket: WebSocketConnection, code: UInt16, reason: String)
    /// `socket.applicationDeadline` has come.
    func webSocketDeadlineReached(_ socket: WebSocketConnection)
}

extension WebSocketHandler {
    public func webSocketDidOpen(_ socket: WebSocketConnection) {}
    public func webSocket(_ socket: WebSocketConnection, didReceiveBinary data: [UInt8]) {
        socket.close(code: 1003, reason: "binary messages are not accepted")
    }
    public func webSocketDeadlineReached(_ socket: WebSocketConnection) {}
}

/// Why a WebSocket ended, as the handler hears it (`WebSocketConnection.end`, set before
/// `webSocketDidClose`).
public enum WebSocketEnd: Sendable, Equatable {
    /// `close(code:)` on this side.
    case closedByUs
    /// The peer sent a close frame.
    case closedByPeer
    /// The peer broke RFC 6455; we closed with the error's code.
    case protocolViolation
    /// Nothing heard, not even a pong or an acknowledgement of our output, for `deadAfter`.
    case deadPeer
    /// The peer left more output unread than the connection may hold.
    case slowReader
    /// TCP ended (FIN or reset) without a close frame.
    case connectionLost
    /// `abort()` on this side.
    case aborted
}

/// One RFC 6455 connection (server or client role) over a `Connection`: decodes frames, answers
/// pings, runs the close handshake, pings a quiet peer and drops a dead one.
public final class WebSocketConnection: ConnectionDelegate, @unchecked Sendable {
    private enum State { case open, closeSent, closed }

    public let loop: EventLoop
    public let role: WebSocketRole
    public let subprotocol: String?
    public var peer: SocketAddress { connection.peer }

    private let connection: Connection
    private var handler: WebSocketHandler?
    private var decoder: WebSocketDecoder
    private var state = State.open
    /// How the socket ended for the application; nil while it is open.
    public private(set) var end: WebSocketEnd?
    private let configuration: WebSocketConfiguration
    private let pingInterval: UInt64
    private let deadAfter: UInt64
    private var lastHeardAt: UInt64
    private var lastPingAt: UInt64
    /// `connection.bytesAcknowledged` when last looked at. While we still hold a backlog for the
    /// peer, its acknowledging our output is a sign of life too: a watcher on a slow link may be
    /// busy reading snapshots, with our ping queued behind them.
    private var acknowledgedAtLastLook: UInt64 = 0
    private var closeDeadline: UInt64 = .max
    /// An application timer (e.g. "acquire within N seconds"); `.max` = none.
    public var applicationDeadline: UInt64 = .max {
        didSet { updateDeadline() }
    }

    init(connection: Connection, role: WebSocketRole, handler: WebSocketHandler,
         configuration: WebSocketConfiguration, subprotocol: String?) {
        self.connection = connection
        self.loop = connection.loop
        self.role = role
        self.handler = handler
        self.configuration = configuration
        self.subprotocol = subprotocol
        decoder = WebSocketDecoder(role: role, maxMessageSize: configuration.maxMessageSize)
        pingInterval = configuration.pingInterval.map { UInt64(max(1, $0.saturatedNanoseconds)) } ?? .max
        deadAfter = configuration.deadAfter.map { UInt64(max(1, $0.saturatedNanoseconds)) } ?? .max
        let now = connection.loop.now()
        lastHeardAt = now
        lastPingAt = now
    }

    func start(leftover: [UInt8]) {
        handler?.webSocketDidOpen(self)
        updateDeadline()
        if !leftover.isEmpty {
            leftover.withUnsafeBytes { connectionDidRead($0) }
        }
    }

    public var isOpen: Bool { state == .open }

    /// Bytes queued for the peer and not yet written (a slow reader's backlog).
    public var pendingOutputBytes: Int { connection.pendingOutputBytes }

    // MARK: sending (on `loop`)

    public func send(text: String) {
        var text = text
        text.withUTF8 { send(.text, UnsafeRawBufferPointer($0)) }
    }

    public func send(text bytes: [UInt8]) {
        bytes.withUnsafeBytes { send(.text, $0) }
    }

    public func send(binary bytes: [UInt8]) {
        bytes.withUnsafeBytes { send(.binary, $0) }
    }

    public func sendPing(_ payload: [UInt8] = []) {
        payload.withUnsafeBytes { send(.ping, $0) }
    }

    private func send(_ opcode: WebSocketOpcode, _ payload: UnsafeRawBufferPointer) {
        loop.assertOnLoop()
        guard state == .open else { return }
        var frame: [UInt8] = []
        frame.reserveCapacity(payload.count + 14)
        WebSocketEncoder.appendFrame(opcode: opcode, payload: payload, maskingKey: maskingKey(), into: &frame)
        connection.write(frame)
    }

    private func maskingKey() -> (UInt8, UInt8, UInt8, UInt8)? {
        guard role == .client else { return nil }
        var generator = SystemRandomNumberGenerator()
        let key = generator.next() as UInt32
        return (UInt8(truncatingIfNeeded: key), UInt8(truncatingIfNeeded: key >> 8),
                UInt8(truncatingIfNeeded: key >> 16), UInt8(truncatingIfNeeded: key >> 24))
    }

    /// Starts the close handshake. The handler hears `webSocketDidClose` with `code` at once: for
    /// the application the socket is closed from now on.
    public func close(code: UInt16, reason: String = "") {
        loop.assertOnLoop()
        guard state == .open else { return }
        sendClose(code: code, reason: reason)
        state = .closeSent
        closeDeadline = loop.clock.deadline(after: configuration.closeTimeout)
        updateDeadline()
        finish(.closedByUs, code: code, reason: reason)
    }

    /// Closes the TCP connection at once with a reset, without a close frame.
    public func abort() {
        state = .closed
        connection.close(.abort)
        finish(.aborted, code: 1006, reason: "aborted")
    }

    private func sendClose(code: UInt16?, reason: String) {
        let payload = code.map { WebSocketEncoder.closePayload(code: $0, reason: reason) } ?? []
        var frame: [UInt8] = []
        WebSocketEncoder.appendFrame(opcode: .close, payload: payload, maskingKey: maskingKey(), into: &frame)
        connection.write(frame)
    }

    // MARK: receiving

    func connectionDidRead(_ bytes: UnsafeRawBufferPointer) {
        lastHeardAt = loop.now()
        decoder.feed(bytes)
        while state != .closed {
            let event: WebSocketEvent
            do {
                guard let next = try decoder.nextEvent() else { break }
                event = next
            } catch {
                fail(error)
                return
            }
            handle(event)
        }
        if decoder.isIdle { decoder.releaseIdleBuffers() }
    }

    private func handle(_ event: WebSocketEvent) {
        switch event {
        case .text(let bytes):
            if state == .open { handler?.webSocket(self, didReceiveText: bytes) }
        case .binary(let bytes):
            if state == .open { handler?.webSocket(self, didReceiveBinary: bytes) }
        case .ping(let payload):
            if state == .open {
                var frame: [UInt8] = []
                WebSocketEncoder.appendFrame(opcode: .pong, payload: payload, maskingKey: maskingKey(), into: &frame)
                connection.write(frame)
            }
        case .pong:
            break
        case .close(let code, let reason):
            if state == .open {
                // Echo the peer's code, as RFC 6455 §5.5.1 asks.
                sendClose(code: code, reason: "")
                state = .closed
                closeTransport()
                finish(.closedByPeer, code: code ?? 1005, reason: reason)
            } else {
                state = .closed
                closeTransport()
            }
        }
    }

    /// A protocol violation by the peer: close with the error's code and drop the connection.
    private func fail(_ error: WebSocketError) {
        if state == .open { sendClose(code: error.closeCode, reason: error.reason) }
        state = .closed
        closeTransport()
        finish(.protocolViolation, code: error.closeCode, reason: error.reason)
    }

    private func closeTransport() {
        // The server closes TCP first after the close handshake (RFC 6455 §7.1.1); a client waits
        // for the server to do so, within the drain timeout.
        connection.close(.graceful)
    }

    // MARK: timers

    private func updateDeadline() {
        var next = applicationDeadline
        switch state {
        case .open:
            if pingInterval != .max { next = min(next, max(lastHeardAt, lastPingAt) &+ pingInterval) }
            if deadAfter != .max { next = min(next, lastHeardAt &+ deadAfter) }
        case .closeSent:
            next = min(next, closeDeadline)
        case .closed:
            return
        }
        connection.deadline = next
        loop.watchDeadline(connection)
    }

    func connectionDeadlineReached(now: UInt64) {
        if state == .closeSent, now >= closeDeadline {
            state = .closed
            closeTransport()
            return
        }
        if state == .open, deadAfter != .max, now &- lastHeardAt >= deadAfter {
            // Only while a backlog of ours is still on its way: a stopped process's kernel still
            // acknowledges our pings, and that must not keep a silent peer alive.
            let acknowledged = connection.bytesAcknowledged
            if connection.outputBacklog > 0, acknowledged > acknowledgedAtLastLook {
                acknowledgedAtLastLook = acknowledged
                lastHeardAt = now
                updateDeadline()
                return
            }
            state = .closed
            connection.close(.abort)
            finish(.deadPeer, code: 1006, reason: "peer did not answer pings for \(deadAfter / 1_000_000_000) s")
            return
        }
        if state == .open, pingInterval != .max, now >= max(lastHeardAt, lastPingAt) &+ pingInterval {
            lastPingAt = now
            acknowledgedAtLastLook = connection.bytesAcknowledged
            sendPing()
        }
        if applicationDeadline <= now {
            applicationDeadline = .max
            handler?.webSocketDeadlineReached(self)
        }
        updateDeadline()
    }

    func connectionDidClose(_ reason: Connection.CloseReason) {
        state = .closed
        switch reason {
        case .outputOverflow:
            finish(.slowReader, code: 1006, reason: "peer did not read its messages")
        case .reset(let errno):
            finish(.connectionLost, code: 1006, reason: "connection reset (errno \(errno))")
        default:
            finish(.connectionLost, code: 1006, reason: "connection closed without a close frame")
        }
    }

    func connectionDidConnect() {}

    /// Tells the handler once, at a safe point of the loop's turn.
    private func finish(_ cause: WebSocketEnd, code: UInt16, reason: String) {
        guard end == nil else { return }
        end = cause
        guard let handler else { return }
        self.handler = nil
        loop.execute { handler.webSocketDidClose(self, code: code, reason: reason) }
    }
}
