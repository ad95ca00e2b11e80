import PerMessageDeflate
import WebSocketCodec

/// The rules of one RFC 6455 connection, without I/O and without a clock, like the lease core:
/// `WebSocketConnection` tells it what happened (bytes read, time passed, how far the transport
/// got with our output) and carries out the `Actions` it returns. Tests drive it directly.
struct WebSocketStateMachine {
    enum State: Equatable { case open, closeSent, closed }

    /// What to do after one step, carried out in the order of the fields.
    struct Actions: Equatable {
        /// A frame for the peer (the connection encodes and, as a client, masks it).
        var send: Frame?
        /// Close TCP: gracefully after a close handshake, with a reset for a dead peer.
        var closeTransport: Connection.CloseMode?
        /// The socket is closed for the application: the handler hears this once.
        var end: Ending?
        /// A whole text or binary message for the handler.
        var deliver: WebSocketEvent?
        /// `applicationDeadline` has come (it is reset to none).
        var applicationDeadlineReached = false

        static let none = Actions()
    }

    struct Frame: Equatable {
        var opcode: WebSocketOpcode
        var payload: [UInt8]
    }

    struct Ending: Equatable {
        var cause: WebSocketEnd
        /// What was sent or received; 1006 when no close frame was.
        var code: UInt16
        var reason: String
    }

    /// How far the transport has got with our output, for telling a slow reader from a dead one.
    struct OutputProgress {
        /// Bytes written by us that the peer has not acknowledged yet.
        var backlog: Int
        /// Bytes the peer's TCP has acknowledged so far.
        var acknowledged: UInt64
    }

    private(set) var state = State.open
    /// How the socket ended for the application; nil while it is open.
    private(set) var end: WebSocketEnd?
    /// An application timer (e.g. "acquire within N seconds"); `.max` = none.
    var applicationDeadline: UInt64 = .max

    private var decoder: WebSocketDecoder
    private let pingInterval: UInt64
    private let deadAfter: UInt64
    private let closeTimeout: Duration
    private var lastHeardAt: UInt64
    private var lastPingAt: UInt64
    private var closeDeadline: UInt64 = .max
    /// The peer's acknowledged byte count when last looked at. While we still hold a backlog for
    /// the peer, its acknowledging our output is a sign of life too: a watcher on a slow link may
    /// be busy reading snapshots, with our ping queued behind them.
    private var acknowledgedAtLastLook: UInt64 = 0
    /// Token bucket for the peer's pings: `pingAllowance` pings may come now, one more each
    /// `1 s / maxPingsPerSecond`, up to `maxPingsPerSecond`.
    private let maxPingsPerSecond: Int
    private var pingAllowance: Double
    private var pingAllowanceAt: UInt64
    /// When the bytes being decoded arrived.
    private var receivedAt: UInt64
    /// permessage-deflate, when negotiated: messages whose first frame has RSV1 are inflated.
    private let compression: PerMessageDeflate?
    private let maxMessageSize: Int

    init(role: WebSocketRole, configuration: WebSocketConfiguration, now: UInt64, compression: PerMessageDeflate? = nil) {
        decoder = WebSocketDecoder(role: role, maxMessageSize: configuration.maxMessageSize,
                                   reservedBitsAllowed: compression == nil ? 0 : 0x40)
        self.compression = compression
        maxMessageSize = configuration.maxMessageSize
        pingInterval = configuration.pingInterval.map { UInt64(max(1, $0.saturatedNanoseconds)) } ?? .max
        deadAfter = configuration.deadAfter.map { UInt64(max(1, $0.saturatedNanoseconds)) } ?? .max
        closeTimeout = configuration.closeTimeout
        maxPingsPerSecond = max(1, configuration.maxPingsPerSecond)
        pingAllowance = Double(maxPingsPerSecond)
        pingAllowanceAt = now
        receivedAt = now
        lastHeardAt = now
        lastPingAt = now
    }

    /// When `deadlineReached` should next be called; `.max` = never.
    var nextDeadline: UInt64 {
        var next = applicationDeadline
        switch state {
        case .open:
            if pingInterval != .max { next = min(next, max(lastHeardAt, lastPingAt) &+ pingInterval) }
            if deadAfter != .max { next = min(next, lastHeardAt &+ deadAfter) }
        case .closeSent:
            next = min(next, closeDeadline)
        case .closed:
            return .max
        }
        return next
    }

    /// Whether the application may still send.
    var isOpen: Bool { state == .open }

    // MARK: input

    /// Bytes from the peer; take the events they complete with `nextEvent()`.
    mutating func received(_ bytes: UnsafeRawBufferPointer, now: UInt64) {
        lastHeardAt = now
        receivedAt = now
        decoder.feed(bytes)
    }

    /// The next complete frame or message's actions; nil when the bytes so far hold no more (or the
    /// socket is closed). One at a time, so that the handler's answer to one message (a close, say)
    /// is in force before the next is looked at.
    mutating func nextEvent() -> Actions? {
        guard state != .closed else { return nil }
        let event: WebSocketEvent
        do {
            guard let next = try decoder.nextEvent() else {
                if decoder.isIdle { decoder.releaseIdleBuffers() }
                return nil
            }
            event = next
        } catch {
            return fail(error)
        }
        switch event {
        case .text(let payload), .binary(let payload):
            guard state == .open else { return Actions.none }
            guard decoder.lastMessageReservedBits & 0x40 != 0, let compression else { return Actions(deliver: event) }
            let isText: Bool
            if case .text = event { isText = true } else { isText = false }
            do {
                let message = try compression.decompress(payload, limit: maxMessageSize)
                if isText {
                    guard UTF8Validation.isValid(message) else {
                        return fail(WebSocketError(closeCode: WebSocketCloseCodes.invalidPayloadData,
                                                   reason: "text message is not valid UTF-8"))
                    }
                    return Actions(deliver: .text(message))
                }
                return Actions(deliver: .binary(message))
            } catch {
                return fail(error)
            }
        case .ping(let payload):
            guard state == .open else { return Actions.none }
            guard takePingAllowance() else {
                return fail(WebSocketError(closeCode: WebSocketCloseCodes.policyViolation,
                                           reason: "more than \(maxPingsPerSecond) pings a second"))
            }
            return Actions(send: Frame(opcode: .pong, payload: payload))
        case .pong:
            return Actions.none
        case .close(let code, let reason):
            if state == .open {
                // Echo the peer's code, as RFC 6455 §5.5.1 asks.
                state = .closed
                return Actions(send: closeFrame(code: code, reason: ""), closeTransport: .graceful,
                               end: finish(.closedByPeer, code: code ?? 1005, reason: reason))
            }
            state = .closed
            return Actions(closeTransport: .graceful)
        }
    }

    /// A protocol violation by the peer: close with the error's code and drop the connection.
    private mutating func fail(_ error: WebSocketError) -> Actions {
        let send = state == .open ? closeFrame(code: error.closeCode, reason: error.reason) : nil
        state = .closed
        return Actions(send: send, closeTransport: .graceful,
                       end: finish(.protocolViolation, code: error.closeCode, reason: error.reason))
    }

    // MARK: the application

    /// Starts the close handshake; for the application the socket is closed from now on.
    mutating func close(code: UInt16, reason: String, now: UInt64) -> Actions {
        guard state == .open else { return .none }
        state = .closeSent
        closeDeadline = now.addingSaturated(closeTimeout)
        return Actions(send: closeFrame(code: code, reason: reason),
                       end: finish(.closedByUs, code: code, reason: reason))
    }

    /// Resets the connection at once, without a close frame.
    mutating func abort() -> Actions {
        state = .closed
        return Actions(closeTransport: .abort, end: finish(.aborted, code: 1006, reason: "aborted"))
    }

    // MARK: time and the transport

    /// `nextDeadline` has come (or passed).
    mutating func deadlineReached(now: UInt64, output: () -> OutputProgress) -> Actions {
        if state == .closeSent, now >= closeDeadline {
            state = .closed
            return Actions(closeTransport: .graceful)
        }
        var actions = Actions.none
        if state == .open, deadAfter != .max, now &- lastHeardAt >= deadAfter {
            // Only while a backlog of ours is still on its way: a stopped process's kernel still
            // acknowledges our pings, and that must not keep a silent peer alive.
            let progress = output()
            if progress.backlog > 0, progress.acknowledged > acknowledgedAtLastLook {
                acknowledgedAtLastLook = progress.acknowledged
                lastHeardAt = now
                return actions
            }
            state = .closed
            return Actions(closeTransport: .abort,
                           end: finish(.deadPeer, code: 1006,
                                       reason: "peer did not answer pings for \(deadAfter / 1_000_000_000) s"))
        }
        if state == .open, pingInterval != .max, now >= max(lastHeardAt, lastPingAt) &+ pingInterval {
            lastPingAt = now
            acknowledgedAtLastLook = output().acknowledged
            actions.send = Frame(opcode: .ping, payload: [])
        }
        if applicationDeadline <= now {
            applicationDeadline = .max
            actions.applicationDeadlineReached = true
        }
        return actions
    }

    /// TCP ended under us (EOF, reset, or a peer that left too much output unread).
    mutating func transportClosed(_ reason: Connection.CloseReason) -> Actions {
        state = .closed
        switch reason {
        case .outputOverflow:
            return Actions(end: finish(.slowReader, code: 1006, reason: "peer did not read its messages"))
        case .reset(let errno):
            return Actions(end: finish(.connectionLost, code: 1006, reason: "connection reset (errno \(errno))"))
        default:
            return Actions(end: finish(.connectionLost, code: 1006, reason: "connection closed without a close frame"))
        }
    }

    // MARK: helpers

    private mutating func takePingAllowance() -> Bool {
        let elapsed = Double(receivedAt &- pingAllowanceAt) / 1e9
        pingAllowance = min(Double(maxPingsPerSecond), pingAllowance + elapsed * Double(maxPingsPerSecond))
        pingAllowanceAt = receivedAt
        guard pingAllowance >= 1 else { return false }
        pingAllowance -= 1
        return true
    }

    private func closeFrame(code: UInt16?, reason: String) -> Frame {
        Frame(opcode: .close, payload: code.map { WebSocketEncoder.closePayload(code: $0, reason: reason) } ?? [])
    }

    /// The first end wins; later ones are not reported.
    private mutating func finish(_ cause: WebSocketEnd, code: UInt16, reason: String) -> Ending? {
        guard end == nil else { return nil }
        end = cause
        return Ending(cause: cause, code: code, reason: reason)
    }
}
