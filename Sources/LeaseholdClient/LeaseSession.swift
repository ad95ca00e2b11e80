import Dispatch
import LeaseProtocol
import Transport

public struct ClientConfiguration: Sendable {
    /// TCP connect plus WebSocket handshake.
    public var connectTimeout: Duration = .seconds(10)
    /// Ping the server after this long without hearing from it.
    public var pingInterval: Duration = .seconds(10)
    /// Give the server up as dead after this long without any traffic (not even a pong).
    public var deadAfter: Duration = .seconds(30)
    /// How long `release()` waits for the server to confirm before closing anyway.
    public var releaseTimeout: Duration = .seconds(5)
    /// Extra time past the request's `wait` before the client gives up on its own (in case the
    /// server never answers).
    public var waitSlack: Duration = .seconds(10)
    /// Largest message accepted from the server.
    public var maxMessageSize: Int = 16 << 20
    /// Sent as `Authorization: Bearer` to a server that leases only to token holders
    /// (`serve --lease-token-file`).
    public var leaseToken: String?

    public init() {}
}

/// One `/v1/lease` connection: connect, `acquire`, follow `events`, `release`. The connection is the
/// lease: whatever ends it (release, `close()`, this process dying) gives the resources back.
///
/// Events arrive both on `events` (an `AsyncStream`, for async code) and, when given, on the
/// `onEvent` callback (on the session's event loop, for callback code).
public final class LeaseSession: WebSocketHandler, @unchecked Sendable {
    private enum State { case open, acquiring, queued, granted, releasing, ended }

    public let server: ServerURL
    public let events: AsyncStream<LeaseEvent>
    private let continuation: AsyncStream<LeaseEvent>.Continuation
    private let onEvent: (@Sendable (LeaseEvent) -> Void)?
    private let configuration: ClientConfiguration
    private let loop: EventLoop

    // Touched only on `loop`.
    private var socket: WebSocketConnection?
    private var state = State.open
    private var leaseID: String?
    private var resumeToken: String?
    /// What the request asked: whether a dropped connection leaves a lease to resume, and
    /// whether a revocation leaves closing to us.
    private var grace: Double = 0
    private var revokeWait: Double = 0

    /// The loop every client connection of this process runs on, unless the caller brings one.
    public static let sharedLoop = EventLoop(index: 0, label: "leasehold.client")

    private init(server: ServerURL, configuration: ClientConfiguration, loop: EventLoop,
                 onEvent: (@Sendable (LeaseEvent) -> Void)?) {
        self.server = server
        self.configuration = configuration
        self.loop = loop
        self.onEvent = onEvent
        (events, continuation) = AsyncStream.makeStream(of: LeaseEvent.self, bufferingPolicy: .unbounded)
    }

    // MARK: connecting

    /// Opens the WebSocket. `completion` runs once, on the session's loop.
    public static func connect(to server: ServerURL, configuration: ClientConfiguration = ClientConfiguration(),
                               loop: EventLoop = LeaseSession.sharedLoop,
                               onEvent: (@Sendable (LeaseEvent) -> Void)? = nil,
                               completion: @escaping @Sendable (Result<LeaseSession, LeaseholdError>) -> Void) {
        let session = LeaseSession(server: server, configuration: configuration, loop: loop, onEvent: onEvent)
        let tls: TLSClientContext?
        do {
            tls = try server.tlsContext()
        } catch {
            session.state = .ended
            session.continuation.finish()
            loop.execute { completion(.failure(error)) }
            return
        }
        WebSocketClient.connect(host: server.host, port: server.port, path: server.path("/v1/lease"),
                                headers: configuration.leaseToken.map { [("Authorization", "Bearer \($0)")] } ?? [],
                                loop: loop, configuration: configuration.webSocket,
                                handshakeTimeout: configuration.connectTimeout, tls: tls, handler: session) { result in
            switch result {
            case .success(let socket):
                session.socket = socket
                completion(.success(session))
            case .failure(let error):
                session.state = .ended
                session.continuation.finish()
                completion(.failure(LeaseholdError(error, server: server, timeout: configuration.connectTimeout)))
            }
        }
    }

    public static func connect(to server: ServerURL, configuration: ClientConfiguration = ClientConfiguration(),
                               loop: EventLoop = LeaseSession.sharedLoop) async throws(LeaseholdError) -> LeaseSession {
        let result = await withCheckedContinuation { (waiter: CheckedContinuation<Result<LeaseSession, LeaseholdError>, Never>) in
            connect(to: server, configuration: configuration, loop: loop) { waiter.resume(returning: $0) }
        }
        return try result.get()
    }

    // MARK: the lease

    /// Sends the acquire request. What follows arrives as events: `queued` (maybe several times),
    /// then `granted`, or a final `failed`.
    public func acquire(_ request: AcquireRequest) {
        loop.execute { [self] in
            guard state == .open, let socket else { return }
            state = .acquiring
            grace = request.grace ?? 0
            revokeWait = request.revokeWait ?? 0
            socket.send(text: request.json.serialized())
            if let wait = request.wait, wait.isFinite {
                socket.applicationDeadline = loop.clock.deadline(after: .seconds(fractional: wait) + configuration.waitSlack)
            }
        }
    }

    /// Takes over a lease (or a place in the queue) that an earlier session held: after an
    /// `.interrupted` event. Events follow as for `acquire`: `granted` (same id, resources and
    /// epochs) or `queued`; `.failed(.resumeRefused)` when the server no longer keeps it.
    /// `grace` and `revokeWait`: what the original request asked.
    public func resume(lease: String, token: String, grace: Double = 0, revokeWait: Double = 0) {
        loop.execute { [self] in
            guard state == .open, let socket else { return }
            state = .acquiring
            leaseID = lease
            resumeToken = token
            self.grace = grace
            self.revokeWait = revokeWait
            socket.send(text: ClientMessage.resume(lease: lease, token: token).json.serialized())
        }
    }

    /// Ends the lease (or leaves the queue): sends `release` and waits for the server's close, at
    /// most `releaseTimeout`. The final event is `.released`.
    public func release() {
        loop.execute { [self] in
            guard let socket else { return }
            switch state {
            case .open:
                state = .releasing
                socket.close(code: CloseCode.released, reason: "released")
            case .acquiring, .queued, .granted:
                state = .releasing
                socket.send(text: #"{"op":"release"}"#)
                socket.applicationDeadline = loop.clock.deadline(after: configuration.releaseTimeout)
            case .releasing, .ended:
                break
            }
        }
    }

    /// Drops the connection at once (the server frees the lease when it notices the close).
    public func close() {
        loop.execute { [self] in
            guard let socket else { return }
            // Also after a final event: a revoked lease with a revoke_wait is closed by us.
            if state != .ended { state = .releasing }
            socket.close(code: CloseCode.released, reason: "client closed")
        }
    }

    private func emit(_ event: LeaseEvent) {
        guard state != .ended else { return }
        if event.isFinal { state = .ended }
        continuation.yield(event)
        onEvent?(event)
        if event.isFinal { continuation.finish() }
    }

    // MARK: WebSocketHandler (on `loop`)

    public func webSocket(_ socket: WebSocketConnection, didReceiveText text: [UInt8]) {
        guard let event = ServerEvent.parse(text) else { return }  // unknown events: room for later versions
        switch event {
        case .queued(let lease, let position, let resume):
            guard state == .acquiring || state == .queued else { return }
            state = .queued
            leaseID = lease
            if let resume { resumeToken = resume }
            emit(.queued(lease: lease, position: position, resume: resume))
        case .granted(let lease, let resources, let resume, let expires):
            guard state == .acquiring || state == .queued else { return }
            state = .granted
            leaseID = lease
            if let resume { resumeToken = resume }
            socket.applicationDeadline = .max
            emit(.granted(Lease(id: lease, resources: resources, resumeToken: resumeToken, expires: expires)))
        case .revoked(let lease, let reason):
            emit(.revoked(lease: lease, reason: reason))
            // With a revoke_wait the resources stay out of reach until we close: after the
            // holder has stopped using them (`close()`).
            if revokeWait <= 0 { socket.close(code: CloseCode.released, reason: "") }
        case .error(let code, let message):
            if state == .releasing { return }
            emit(.failed(LeaseholdError(code: code, message: message)))
            socket.close(code: CloseCode.released, reason: "")
        }
    }

    public func webSocket(_ socket: WebSocketConnection, didReceiveBinary data: [UInt8]) {
        emit(.failed(.protocolViolation("the server sent a binary message")))
        socket.close(code: CloseCode.policy, reason: "binary messages are not expected")
    }

    public func webSocketDeadlineReached(_ socket: WebSocketConnection) {
        switch state {
        case .releasing:
            socket.close(code: CloseCode.released, reason: "released")
        case .acquiring, .queued:
            emit(.failed(.waitTimeout("the server sent no answer within the requested wait plus \(configuration.waitSlack)")))
            socket.close(code: CloseCode.released, reason: "gave up waiting")
        default:
            break
        }
    }

    public func webSocketDidClose(_ socket: WebSocketConnection, code: UInt16, reason: String) {
        switch (state, code) {
        case (.ended, _):
            return
        case (.releasing, _):
            emit(.released)
        case (_, CloseCode.revoked):
            emit(.revoked(lease: leaseID ?? "", reason: reason))
        case (_, CloseCode.badRequest):
            emit(.failed(.badRequest(reason)))
        case (_, CloseCode.unsatisfiable):
            emit(.failed(.unsatisfiable(reason)))
        case (_, CloseCode.waitTimeout):
            emit(.failed(.waitTimeout(reason)))
        case (_, CloseCode.resumedElsewhere):
            emit(.failed(.resumeRefused("the lease was resumed on another connection")))
        case (.granted, _) where resumeToken != nil && (code == CloseCode.serviceRestart || (grace > 0 && code != CloseCode.goingAway)),
             (.queued, _) where resumeToken != nil && (code == CloseCode.serviceRestart || (grace > 0 && code != CloseCode.goingAway)):
            let restarting = code == CloseCode.serviceRestart
            emit(.interrupted(lease: leaseID ?? "", token: resumeToken ?? "", restarting: restarting,
                              detail: restarting ? "the server is restarting" : (reason.isEmpty ? "the connection dropped (\(code))" : reason)))
        default:
            var detail: String
            switch code {
            case CloseCode.goingAway: detail = "the server is shutting down"
            case 1006: detail = reason.isEmpty ? "the connection dropped" : reason
            default: detail = "the server closed the connection with \(code)"
            }
            if code != 1006, !reason.isEmpty { detail += " (\(reason))" }
            emit(.failed(.connectionLost(server, detail, granted: state == .granted)))
        }
    }
}

extension ClientConfiguration {
    var webSocket: WebSocketConfiguration {
        var configuration = WebSocketConfiguration()
        configuration.pingInterval = pingInterval
        configuration.deadAfter = deadAfter
        configuration.maxMessageSize = maxMessageSize
        configuration.closeTimeout = releaseTimeout
        return configuration
    }
}

extension LeaseholdError {
    init(_ error: WebSocketClientError, server: ServerURL, timeout: Duration) {
        switch error {
        case .invalidAddress(let message): self = .connectionRefused(server, message)
        case .connectFailed(let message): self = .connectionRefused(server, message)
        case .tlsFailed(let message): self = .tls(server, message)
        case .rejected(let status, let body): self = .handshakeRejected(server, status: status, body)
        case .invalidHandshake(let message): self = .handshakeRejected(server, status: 0, message)
        case .timedOut: self = .connectionRefused(server, "no WebSocket handshake within \(timeout)")
        }
    }

    init(code: ErrorCode, message: String) {
        switch code {
        case .badRequest: self = .badRequest(message)
        case .unsatisfiable: self = .unsatisfiable(message)
        case .waitTimeout: self = .waitTimeout(message)
        case .resumeRefused: self = .resumeRefused(message)
        case .requestTimeout, .protocol: self = .protocolViolation("\(code.rawValue): \(message)")
        }
    }
}
