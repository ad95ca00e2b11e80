import PerMessageDeflate
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

/// One RFC 6455 connection (server or client role) over a `Connection`: carries out what its
/// `WebSocketStateMachine` decides (answer pings, run the close handshake, ping a quiet peer, drop
/// a dead one) and hands messages to the handler.
public final class WebSocketConnection: ConnectionDelegate, @unchecked Sendable {
    public let loop: EventLoop
    public let role: WebSocketRole
    public let subprotocol: String?
    public var peer: SocketAddress { connection.peer }

    let connection: Connection
    private var handler: WebSocketHandler?
    private var machine: WebSocketStateMachine
    /// permessage-deflate, when negotiated.
    let compression: PerMessageDeflate?

    /// What permessage-deflate agreed on this connection; nil when it is off.
    public var compressionParameters: PerMessageDeflateParameters? { compression?.parameters }
    /// Whether zlib streams are held now (they are freed between messages or when quiet).
    public var holdsCompressionStreams: Bool { compression?.holdsStreams ?? false }

    /// How the socket ended for the application; nil while it is open.
    public var end: WebSocketEnd? { machine.end }
    /// An application timer (e.g. "acquire within N seconds"); `.max` = none.
    public var applicationDeadline: UInt64 {
        get { machine.applicationDeadline }
        set {
            machine.applicationDeadline = newValue
            updateDeadline()
        }
    }

    init(connection: Connection, role: WebSocketRole, handler: WebSocketHandler,
         configuration: WebSocketConfiguration, subprotocol: String?,
         compression: PerMessageDeflateParameters? = nil) {
        self.connection = connection
        self.loop = connection.loop
        self.role = role
        self.handler = handler
        self.subprotocol = subprotocol
        let codec = compression.map {
            PerMessageDeflate(parameters: $0, configuration: configuration.compression ?? .default)
        }
        self.compression = codec
        machine = WebSocketStateMachine(role: role, configuration: configuration, now: connection.loop.now(),
                                        compression: codec)
    }

    func start(leftover: [UInt8]) {
        handler?.webSocketDidOpen(self)
        updateDeadline()
        if !leftover.isEmpty {
            leftover.withUnsafeBytes { connectionDidRead($0) }
        }
    }

    public var isOpen: Bool { machine.isOpen }

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

    /// How this socket takes shared messages compressed; nil when permessage-deflate is off.
    /// Fixed at the upgrade, so any thread may read it (a renderer prepares frames with it).
    public var sharedMessageCompression: SharedMessage.Compression? {
        compression.map { SharedMessage.Compression(windowBits: $0.compressionWindowBits, configuration: $0.configuration) }
    }

    /// Sends a message that goes to many sockets: the same frame bytes as every other socket
    /// that takes the same compression (made by whoever asks first); this socket's own
    /// compressor then starts afresh.
    public func send(_ message: SharedMessage) {
        loop.assertOnLoop()
        guard machine.isOpen else { return }
        guard role == .server else {
            // A client masks every frame: nothing to share.
            message.payload.withUnsafeBytes { send(message.isText ? .text : .binary, $0) }
            return
        }
        let (frame, compressed) = message.serverFrame(sharedMessageCompression)
        if compressed { compression?.forgetCompressionContext() }
        connection.write(frame)
    }

    private func send(_ opcode: WebSocketOpcode, _ payload: UnsafeRawBufferPointer) {
        loop.assertOnLoop()
        guard machine.isOpen else { return }
        write(opcode, payload)
    }

    private func write(_ opcode: WebSocketOpcode, _ payload: UnsafeRawBufferPointer) {
        // Data messages are compressed when permessage-deflate is on (control frames never are).
        if !opcode.isControl, let compression, let compressed = compression.compress(payload) {
            compressed.withUnsafeBytes { writeFrame(opcode, $0, rsv1: true) }
        } else {
            writeFrame(opcode, payload, rsv1: false)
        }
    }

    private func writeFrame(_ opcode: WebSocketOpcode, _ payload: UnsafeRawBufferPointer, rsv1: Bool) {
        var frame: [UInt8] = []
        frame.reserveCapacity(payload.count + WebSocketEncoder.maximumHeaderLength)
        let maskingKey = role == .client ? WebSocketEncoder.makeMaskingKey() : nil
        WebSocketEncoder.appendFrame(opcode: opcode, payload: payload, rsv1: rsv1, maskingKey: maskingKey, into: &frame)
        connection.write(frame)
    }

    /// Starts the close handshake. The handler hears `webSocketDidClose` with `code` at once: for
    /// the application the socket is closed from now on.
    public func close(code: UInt16, reason: String = "") {
        loop.assertOnLoop()
        perform(machine.close(code: code, reason: reason, now: loop.now()))
        updateDeadline()
    }

    /// Closes the TCP connection at once with a reset, without a close frame.
    public func abort() {
        perform(machine.abort())
    }

    // MARK: what the connection reports

    func connectionDidRead(_ bytes: UnsafeRawBufferPointer) {
        machine.received(bytes, now: loop.now())
        while let actions = machine.nextEvent() { perform(actions) }
    }

    func connectionDeadlineReached(now: UInt64) {
        let connection = self.connection
        perform(machine.deadlineReached(now: now) {
            .init(backlog: connection.outputBacklog, acknowledged: connection.bytesAcknowledged)
        })
        updateDeadline()
    }

    func connectionDidClose(_ reason: Connection.CloseReason) {
        perform(machine.transportClosed(reason))
    }

    func connectionDidConnect() {}

    // MARK: carrying out

    private func perform(_ actions: WebSocketStateMachine.Actions) {
        if let frame = actions.send {
            // A ping of ours means the peer has been quiet for a while: free what zlib holds.
            if frame.opcode == .ping { compression?.releaseIdleStreams() }
            frame.payload.withUnsafeBytes { write(frame.opcode, $0) }
        }
        // The server closes TCP first after the close handshake (RFC 6455 §7.1.1); a client waits
        // for the server to do so, within the drain timeout.
        if let mode = actions.closeTransport { connection.close(mode) }
        if actions.end != nil { compression?.releaseIdleStreams() }
        if let end = actions.end, let handler {
            // Told at a safe point of the loop's turn, never from inside another callback.
            self.handler = nil
            loop.execute { handler.webSocketDidClose(self, code: end.code, reason: end.reason) }
        }
        if case .text(let bytes)? = actions.deliver { handler?.webSocket(self, didReceiveText: bytes) }
        if case .binary(let bytes)? = actions.deliver { handler?.webSocket(self, didReceiveBinary: bytes) }
        if actions.applicationDeadlineReached { handler?.webSocketDeadlineReached(self) }
    }

    private func updateDeadline() {
        guard machine.state != .closed else { return }
        connection.deadline = machine.nextDeadline
        loop.watchDeadline(connection)
    }
}
