import LeaseCore
import LeaseProtocol
import Transport

/// One `/v1/lease` WebSocket: reads the client's messages, forwards them to the lease service,
/// and carries out the service's effects on the socket. Lives on the socket's loop.
final class LeaseSession: WebSocketHandler, @unchecked Sendable {
    /// Only what the connection itself decides; whether the lease waits or is granted is the
    /// lease table's to know.
    private enum State {
        case awaitingAcquire
        /// The acquire went to the service: from now on the connection is lease `id`.
        case leased(LeaseID)
        case closed
    }

    private unowned let service: LeaseService
    private let requestTimeout: Duration
    private var state = State.awaitingAcquire
    /// Until it closes (not weak: a weak reference costs every connection a side table). The
    /// socket lets go of its handler when it closes, and this of the socket.
    private var socket: WebSocketConnection?
    private(set) var loop: EventLoop?
    /// Why the client's lease ended, for the releases metric; set before the service hears of it.
    private var endReason = ReleaseReason.disconnect
    /// Answers to messages that came before the service's first answer to the acquire (queued,
    /// granted or failed): they go out after it, in order. nil once that answer went out.
    private var heldBack: [ServerEvent]? = []
    static let heldBackLimit = 8
    let peer: String
    /// The client's address without its port: what per-address limits count by.
    let peerHost: String

    /// The lease token's name (see `LeaseTokens`); it prefixes the holder.
    let tokenName: String?

    /// The verified client certificate (mutual TLS): its common name is the default holder, its
    /// subject goes into the journal.
    struct ClientCertificate { let subject: String; let name: String }
    let clientCertificate: ClientCertificate?

    init(service: LeaseService, peer: String, peerHost: String, requestTimeout: Duration, tokenName: String? = nil,
         clientCertificate: ClientCertificate? = nil) {
        self.service = service
        self.clientCertificate = clientCertificate
        self.tokenName = tokenName
        self.peer = peer
        self.peerHost = peerHost
        self.requestTimeout = requestTimeout
    }

    var leaseID: LeaseID? {
        switch state {
        case .leased(let id): return id
        case .awaitingAcquire, .closed: return nil
        }
    }

    func webSocketDidOpen(_ socket: WebSocketConnection) {
        self.socket = socket
        loop = socket.loop
        socket.applicationDeadline = socket.loop.clock.deadline(after: requestTimeout)
    }

    func webSocketDeadlineReached(_ socket: WebSocketConnection) {
        guard case .awaitingAcquire = state else { return }
        fail(.requestTimeout, "no acquire request within \(requestTimeout.secondsText)")
    }

    func webSocket(_ socket: WebSocketConnection, didReceiveText text: [UInt8]) {
        let message = ClientMessage.parse(text)
        switch state {
        case .awaitingAcquire:
            switch message {
            case .success(.acquire(let request)):
                if let grace = request.grace, grace > service.limits.maxGrace {
                    return fail(.badRequest, "\"grace\" may be at most \(LeaseService.secondsText(service.limits.maxGrace)) seconds on this server")
                }
                socket.applicationDeadline = .max
                let id = service.newLeaseID()
                state = .leased(id)
                service.acquire(id, request, session: self)
            case .success(.resume(let lease, let token)):
                guard let id = LeaseService.parseID(lease) else {
                    service.countRefusedResume()
                    return fail(.resumeRefused, "no lease \(lease.prefix(20)) is kept for this token")
                }
                socket.applicationDeadline = .max
                state = .leased(id)
                service.resume(lease, token: token, session: self)
            case .success(.release):
                fail(.badRequest, "nothing to release: the first message must be an acquire request")
            case .failure(let error):
                fail(error.code, error.message)
            }
        case .leased(let id):
            switch message {
            case .success(.release):
                endReason = .release
                state = .closed
                socket.close(code: CloseCode.released, reason: "released")
                service.release(id, reason: .release, abrupt: false, session: self)
            case .success(.acquire), .success(.resume):
                reply(.error(code: .badRequest, message: "this connection already has a request; open another connection for another lease"))
            case .failure(let error):
                reply(.error(code: .badRequest, message: error.message))
            }
        case .closed:
            return
        }
    }

    func webSocket(_ socket: WebSocketConnection, didReceiveBinary data: [UInt8]) {
        endReason = .protocol
        fail(.protocol, "binary messages are not part of the protocol; send JSON text")
    }

    func webSocketDidClose(_ socket: WebSocketConnection, code: UInt16, reason: String) {
        let id = leaseID
        state = .closed
        self.socket = nil
        guard let id else { return }
        var why: ReleaseReason = socket.end == .deadPeer ? .deadPeer : endReason
        // A close frame with 1000 is a release, as the `release` op is.
        if socket.end == .closedByPeer, code == CloseCode.released { why = .release }
        // Only the client's own clean close (1000) or a release is a release; the server's own
        // closes (errors, revocation) and protocol violations end the lease too.
        let abrupt: Bool
        switch socket.end {
        case .closedByPeer: abrupt = code != CloseCode.released
        case .deadPeer, .connectionLost, .slowReader, .none: abrupt = true
        case .closedByUs, .protocolViolation, .aborted: abrupt = false
        }
        service.release(id, reason: why, abrupt: abrupt, session: self)
    }

    /// Sends an error event and closes with the code's close code; the service hears the release.
    private func fail(_ code: ErrorCode, _ message: String) {
        send(.error(code: code, message: message))
        socket?.close(code: code.closeCode, reason: code.rawValue)
    }

    private func send(_ event: ServerEvent) {
        socket?.send(text: event.text)
    }

    /// An answer to a message during the lease: after the acquire's own first answer.
    private func reply(_ event: ServerEvent) {
        guard var events = heldBack else { return send(event) }
        guard events.count < Self.heldBackLimit else {
            return fail(.protocol, "more than \(Self.heldBackLimit) messages before the acquire request was answered")
        }
        events.append(event)
        heldBack = events
    }

    private func sendHeldBack() {
        guard let events = heldBack else { return }
        heldBack = nil
        for event in events { send(event) }
    }

    // MARK: effects from the service (on this session's loop)

    /// The server could not grant safely (see `LeaseService.withhold`): 1011, no lease.
    func withhold(reason: String) {
        guard leaseID != nil, let socket, socket.isOpen else { return }
        state = .closed
        socket.close(code: 1011, reason: reason)
    }

    /// The lease was resumed on another connection: this one no longer carries it.
    func resumedElsewhere() {
        guard leaseID != nil, let socket, socket.isOpen else { return }
        state = .closed
        socket.close(code: CloseCode.resumedElsewhere, reason: "resumed on another connection")
    }

    /// A `resume` the service refused (4410).
    func refuseResume(_ message: String) {
        guard leaseID != nil else { return }
        state = .closed
        fail(.resumeRefused, message)
    }

    /// An event of the lease from the service, then the close that ends the connection, if any.
    func deliver(_ id: LeaseID, _ event: ServerEvent?, close: (code: UInt16, reason: String)?) {
        guard leaseID == id, let socket, socket.isOpen else { return }
        if let event { send(event) }
        if let close {
            state = .closed
            socket.close(code: close.code, reason: close.reason)
        }
        sendHeldBack()
    }
}

/// Why a granted lease ended (the `reason` label of `leasehold_releases_total`).
/// (The core's end reasons: what the metrics, the journal and a reset command name.)
typealias ReleaseReason = EndReason

extension Duration {
    var secondsText: String {
        let seconds = Double(components.seconds) + Double(components.attoseconds) / 1e18
        return seconds == seconds.rounded() ? "\(Int(seconds)) s" : "\(seconds) s"
    }
}
