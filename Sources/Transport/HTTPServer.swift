import Dispatch
import HTTPCodec
import PerMessageDeflate
import WebSocketCodec

public struct WebSocketConfiguration: Sendable {
    /// Largest message (after reassembly) accepted; larger closes with 1009.
    public var maxMessageSize: Int = 1 << 20
    /// Ping a peer after this long without hearing from it; nil: never.
    public var pingInterval: Duration? = .seconds(15)
    /// Close a peer that has sent nothing (not even a pong) for this long; nil: never.
    public var deadAfter: Duration? = .seconds(45)
    /// How long to wait for the peer's close frame after sending ours.
    public var closeTimeout: Duration = .seconds(5)
    /// Pings the peer may send a second (a burst of as many is allowed); past it the connection
    /// closes with 1008. Every ping costs a pong: this bounds what one peer can make us write.
    public var maxPingsPerSecond: Int = 20
    /// permessage-deflate (RFC 7692): accepted when a client offers it (server), offered
    /// (client); nil: off.
    public var compression: PerMessageDeflateConfiguration? = .default

    public init() {}
}

/// What the server could not do, for the operator's log.
public enum HTTPServerProblem: Sendable, CustomStringConvertible {
    /// accept(2) failed (out of descriptors, say); the listener goes on.
    case acceptFailed(SocketError)
    /// A connection was answered with `status` and closed: `limit` connections in all (503) or
    /// from its address (429) are open.
    case refused(peer: SocketAddress, status: Int, limit: Int)
    /// A TLS connection failed (handshake or later) and was closed; `reason` is OpenSSL's.
    case tlsFailed(peer: SocketAddress, reason: String)

    public var description: String {
        switch self {
        case .acceptFailed(let error): return "accept failed: \(error)"
        case .refused(let peer, let status, let limit):
            return "refused \(peer) with \(status): \(status == 503 ? "connection limit" : "connection limit per address") \(limit) reached"
        case .tlsFailed(let peer, let reason):
            return "TLS with \(peer) failed: \(reason)"
        }
    }
}

public struct HTTPServerConfiguration: Sendable {
    public var maxHeadSize = 16 * 1024
    public var maxBodySize = 1 << 20
    /// A request head must arrive within this long of its first byte (or of the accept).
    public var requestHeadTimeout: Duration = .seconds(10)
    /// An idle keep-alive connection is closed after this long.
    public var keepAliveTimeout: Duration = .seconds(60)
    /// A peer that lets more than this pile up unread is disconnected.
    public var maxOutputBytes = 8 << 20
    public var maxConnections = 100_000
    /// Connections from one client address at most; past it, new ones get 429.
    public var maxConnectionsPerAddress = Int.max
    /// Peers `maxConnectionsPerAddress` does not count (trusted proxies).
    public var perAddressLimitExempt: [AddressRange] = []
    public var backlog: Int32 = 4096
    public var webSocket = WebSocketConfiguration()

    public init() {}
}

/// The application side of an HTTP server.
public protocol HTTPRequestHandler: AnyObject, Sendable {
    /// Called on the connection's loop for each request. Answer exactly once through `responder`,
    /// at once or later from any queue.
    func handle(_ request: HTTPRequest, responder: HTTPResponder)
}

/// Answers one request: with a response, or by upgrading the connection to a WebSocket.
public final class HTTPResponder: @unchecked Sendable {
    public let peer: SocketAddress
    public let loop: EventLoop
    /// The request being answered.
    public let head: HTTPRequestHead
    /// Whether the request came over TLS.
    public let isTLS: Bool
    /// The verified client certificate's subject (mutual TLS) and its common name.
    public let tlsClientSubject: String?
    public let tlsClientName: String?
    private let connection: HTTPConnectionHandler

    init(connection: HTTPConnectionHandler, request: HTTPRequestHead) {
        self.connection = connection
        self.loop = connection.connection.loop
        self.peer = connection.connection.peer
        self.head = request
        let tls = connection.connection.tls
        isTLS = tls != nil
        tlsClientSubject = tls?.peerSubject
        tlsClientName = tls?.peerCommonName
    }

    /// Sends `response`. May be called from any queue.
    public func respond(_ response: HTTPResponse) {
        loop.execute { [self] in
            connection.complete(response, keepAlive: head.keepAlive, headersOnly: head.method == "HEAD")
        }
    }

    /// Validates the upgrade request and, if it is a valid WebSocket handshake, answers 101 and
    /// hands the connection to `handler`; otherwise answers the matching error (400, 405, 426).
    /// Must be called on `loop`.
    public func upgradeToWebSocket(handler: WebSocketHandler) {
        switch WebSocketUpgrade.validate(head, compression: connection.compression) {
        case .failure(let error):
            connection.complete(error.response, keepAlive: false)
        case .success(let accepted):
            connection.upgrade(to: handler, accepted: accepted)
        }
    }
}

/// Accepts connections on one or more addresses and serves HTTP/1.1 and WebSocket on `group`.
public final class HTTPServer: @unchecked Sendable {
    public let group: EventLoopGroup
    public let configuration: HTTPServerConfiguration
    let handler: HTTPRequestHandler
    let limit: ConnectionLimit
    private let listeners = Locked<[Listener]>([])
    private let onProblem: @Sendable (HTTPServerProblem) -> Void
    /// Every TLS connection's `onTLSFailure`: one closure, not one per connection.
    private let reportTLSFailure: (Connection, String) -> Void

    public init(group: EventLoopGroup, configuration: HTTPServerConfiguration, handler: HTTPRequestHandler,
                onProblem: @escaping @Sendable (HTTPServerProblem) -> Void = { _ in }) {
        self.group = group
        self.configuration = configuration
        self.handler = handler
        self.onProblem = onProblem
        reportTLSFailure = { connection, reason in onProblem(.tlsFailed(peer: connection.peer, reason: reason)) }
        let descriptors = Posix.raiseDescriptorLimit()
        // Keep a few descriptors for listeners, files and logs.
        let byDescriptors = descriptors > 64 ? descriptors - 32 : descriptors
        limit = ConnectionLimit(maximum: min(configuration.maxConnections, byDescriptors),
                                perAddress: configuration.maxConnectionsPerAddress,
                                exempt: configuration.perAddressLimitExempt)
    }

    public var openConnections: Int { limit.current }
    /// The most connections this server takes: its configuration, bounded by the descriptor limit
    /// (raised to the hard limit at start).
    public var connectionCapacity: Int { limit.maximum }

    /// Starts listening on `address`; returns the bound address (with the real port for port 0).
    /// With `tls` every connection on it speaks TLS (https://, wss://).
    @discardableResult
    public func listen(on address: SocketAddress, tls: TLSServerContext? = nil) throws(SocketError) -> SocketAddress {
        let listener = try Listener(
            address: address, backlog: configuration.backlog, loops: group.loops,
            onAccept: { [unowned self] fd, peer, loop in self.accepted(fd, peer: peer, loop: loop, tls: tls) },
            onError: { [onProblem] error in onProblem(.acceptFailed(error)) })
        listeners.withLock { $0.append(listener) }
        return listener.address
    }

    /// Serves a socket that is already listening (passed by systemd); returns its address.
    @discardableResult
    public func listen(adopting fd: Int32) throws(SocketError) -> SocketAddress {
        let listener = try Listener(
            adopting: fd, loops: group.loops,
            onAccept: { [unowned self] fd, peer, loop in self.accepted(fd, peer: peer, loop: loop) },
            onError: { [onProblem] error in onProblem(.acceptFailed(error)) })
        listeners.withLock { $0.append(listener) }
        return listener.address
    }

    /// A connection `loop` accepted; it stays on that loop. On the loop's queue.
    private func accepted(_ fd: Int32, peer: SocketAddress, loop: EventLoop, tls: TLSServerContext? = nil) {
        // The head timeout runs from here, before the connection counts as open.
        let acceptedAt = group.clock.now()
        if let refusal = limit.tryAcquire(address: peer.host) {
            let response: HTTPResponse
            switch refusal {
            case .total(let maximum):
                onProblem(.refused(peer: peer, status: 503, limit: maximum))
                response = .text(503, "the server is at its limit of \(maximum) connections; try again later\n")
            case .perAddress(let address, let maximum):
                onProblem(.refused(peer: peer, status: 429, limit: maximum))
                response = .text(429, "\(address) has \(maximum) connections open, the most one address may have\n")
            }
            // A fresh socket's send buffer is empty: the short answer goes out at once, or not at all.
            Posix.sendOnce(fd, response.serialized(keepAlive: false))
            Posix.close(fd)
            return
        }
        if let deadAfter = configuration.webSocket.deadAfter { Posix.setDeadPeerTimeouts(fd, deadAfter: deadAfter) }
        // The connection limit is checked above, before any TLS work.
        let session = tls?.makeSession(fd: fd)
        if tls != nil, session == nil {
            onProblem(.tlsFailed(peer: peer, reason: "cannot create a TLS session: \(TLSSession.drainErrors())"))
            limit.release(address: peer.host)
            Posix.close(fd)
            return
        }
        let connection = Connection(acceptedFD: fd, peer: peer, loop: loop,
                                    maxOutputBytes: configuration.maxOutputBytes, tls: session)
        if session != nil {
            connection.onTLSFailure = reportTLSFailure
        }
        connection.limit = limit
        let http = HTTPConnectionHandler(connection: connection, server: self)
        connection.delegate = http
        http.start(acceptedAt: acceptedAt)
    }

    /// Stops accepting; open connections go on.
    public func stopAccepting() {
        for listener in listeners.withLock({ listeners in defer { listeners = [] }; return listeners }) {
            listener.stop()
        }
    }

    /// Closes every connection: WebSockets with `code`, plain HTTP ones gracefully. Calls
    /// `completion` once all descriptors are closed or `timeout` has passed.
    public func closeAllConnections(code: UInt16, reason: String, timeout: Duration,
                                    completion: @escaping @Sendable () -> Void) {
        for loop in group.loops {
            loop.execute {
                for connection in loop.connections.values where connection.limit === self.limit {
                    if let socket = connection.delegate as? WebSocketConnection {
                        socket.close(code: code, reason: reason)
                    } else {
                        connection.close(.graceful)
                    }
                }
            }
        }
        let deadline = group.clock.deadline(after: timeout)
        pollUntilClosed(deadline: deadline, completion: completion)
    }

    private func pollUntilClosed(deadline: UInt64, completion: @escaping @Sendable () -> Void) {
        if limit.current == 0 || group.clock.now() >= deadline {
            completion()
        } else {
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(20)) { [self] in
                pollUntilClosed(deadline: deadline, completion: completion)
            }
        }
    }
}

/// Serves plain HTTP requests on one connection until it upgrades or closes.
final class HTTPConnectionHandler: ConnectionDelegate, @unchecked Sendable {
    let connection: Connection
    private unowned let server: HTTPServer
    private var parser: HTTPRequestParser
    /// A request is with the application; further requests wait.
    private var awaitingResponse = false

    init(connection: Connection, server: HTTPServer) {
        self.connection = connection
        self.server = server
        parser = HTTPRequestParser(maxHeadSize: server.configuration.maxHeadSize,
                                   maxBodySize: server.configuration.maxBodySize)
    }

    func start(acceptedAt: UInt64) {
        connection.deadline = acceptedAt.addingSaturated(server.configuration.requestHeadTimeout)
        connection.loop.watchDeadline(connection)
    }

    private func setDeadline(after duration: Duration) {
        connection.deadline = connection.loop.clock.deadline(after: duration)
        connection.loop.watchDeadline(connection)
    }

    func connectionDidRead(_ bytes: UnsafeRawBufferPointer) {
        if parser.isIdle, !awaitingResponse {
            // A new request starts: its head must be complete within the head timeout.
            setDeadline(after: server.configuration.requestHeadTimeout)
        }
        parser.feed(bytes)
        if !awaitingResponse { serveRequests() }
    }

    private func serveRequests() {
        while !awaitingResponse, connection.isOpen {
            let request: HTTPRequest
            do {
                guard let next = try parser.nextRequest() else { break }
                request = next
            } catch {
                var response = HTTPResponse.text(error.status, error.message + "\n")
                if error.status == 505 { response.headers.add(name: "Upgrade", value: "HTTP/1.1") }
                complete(response, keepAlive: false)
                return
            }
            awaitingResponse = true
            let responder = HTTPResponder(connection: self, request: request.head)
            server.handler.handle(request, responder: responder)
            if awaitingResponse, connection.isOpen {
                // Answered later (another queue): read nothing more until then.
                connection.pauseReading()
            }
        }
        if parser.isIdle { parser.releaseIdleBuffers() }
    }

    /// Called on the loop with the application's answer.
    func complete(_ response: HTTPResponse, keepAlive: Bool, headersOnly: Bool = false) {
        let wasAwaiting = awaitingResponse
        awaitingResponse = false
        guard connection.isOpen else { return }
        var bytes = response.serialized(keepAlive: keepAlive)
        if headersOnly, !response.body.isEmpty {
            // HEAD: the same head (with the body's Content-Length), no body.
            bytes.removeLast(min(response.body.count, bytes.count))
        }
        connection.write(bytes)
        if !keepAlive {
            connection.close(.graceful)
            return
        }
        setDeadline(after: server.configuration.keepAliveTimeout)
        if wasAwaiting { connection.resumeReading() }
        serveRequests()
    }

    var compression: PerMessageDeflateConfiguration? { server.configuration.webSocket.compression }

    func upgrade(to handler: WebSocketHandler, accepted: WebSocketUpgrade.Accepted) {
        awaitingResponse = false
        guard connection.isOpen else { return }
        connection.resumeReading()
        connection.write(accepted.responseBytes)
        let leftover = parser.takeUnconsumedBytes()
        let socket = WebSocketConnection(connection: connection, role: .server, handler: handler,
                                         configuration: server.configuration.webSocket,
                                         subprotocol: accepted.subprotocol, compression: accepted.compression)
        connection.delegate = socket
        socket.start(leftover: leftover)
    }

    func connectionDeadlineReached(now: UInt64) {
        if awaitingResponse {
            // The application is answering; give it time.
            setDeadline(after: server.configuration.requestHeadTimeout)
        } else if parser.isIdle {
            connection.close(.graceful)  // idle keep-alive connection
        } else {
            complete(.text(408, "request head not received in time\n"), keepAlive: false)
        }
    }

    func connectionDidClose(_ reason: Connection.CloseReason) {}
    func connectionDidConnect() {}
}

/// The server side of the RFC 6455 opening handshake.
public enum WebSocketUpgrade {
    public struct Accepted: Sendable {
        public let responseBytes: [UInt8]
        public let subprotocol: String?
        /// permessage-deflate as agreed; nil when not offered, declined or off.
        public let compression: PerMessageDeflateParameters?
    }

    /// `compression`: permessage-deflate is accepted when offered (nil: always declined).
    public static func validate(_ head: HTTPRequestHead, compression: PerMessageDeflateConfiguration? = nil)
        -> Result<Accepted, HTTPResponseError>
    {
        func reject(_ status: Int, _ message: String, _ extra: [(String, String)] = []) -> Result<Accepted, HTTPResponseError> {
            var response = HTTPResponse.text(status, message + "\n")
            for (name, value) in extra { response.headers.add(name: name, value: value) }
            return .failure(HTTPResponseError(response: response))
        }
        let wantsUpgrade = head.headers.containsToken("websocket", in: "Upgrade")
            && head.headers.containsToken("upgrade", in: "Connection")
        guard wantsUpgrade else {
            return reject(426, "this endpoint speaks WebSocket only: send a WebSocket upgrade request",
                          [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")])
        }
        guard head.method == "GET" else {
            return reject(405, "a WebSocket upgrade must use GET", [("Allow", "GET")])
        }
        guard head.versionMinor >= 1 else {
            return reject(400, "a WebSocket upgrade needs HTTP/1.1")
        }
        guard head.headers.values(for: "Sec-WebSocket-Version").count == 1,
              head.headers["Sec-WebSocket-Version"]?.trimmingOWS() == "13" else {
            return reject(426, "unsupported Sec-WebSocket-Version: this server speaks version 13",
                          [("Sec-WebSocket-Version", "13")])
        }
        let keys = head.headers.values(for: "Sec-WebSocket-Key")
        guard keys.count == 1, let key = keys.first?.trimmingOWS(), WebSocketHandshake.isValidKey(key) else {
            return reject(400, "missing or invalid Sec-WebSocket-Key (must be base64 of 16 bytes)")
        }
        let offers: [WebSocketExtensionOffer]
        do {
            // Parsed so a malformed header is refused even when compression is off.
            offers = try WebSocketExtensions.parse(head.headers.values(for: "Sec-WebSocket-Extensions"))
        } catch {
            return reject(400, "malformed Sec-WebSocket-Extensions: \(error.reason)")
        }
        let offered = head.headers.values(for: "Sec-WebSocket-Protocol")
            .flatMap { $0.split(separator: ",") }
            .map { String($0).trimmingOWS() }
            .filter { !$0.isEmpty }
        let subprotocol = offered.first
        var text = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        text += "Sec-WebSocket-Accept: \(WebSocketHandshake.acceptValue(forKey: key))\r\n"
        if let subprotocol { text += "Sec-WebSocket-Protocol: \(subprotocol)\r\n" }
        var agreed: PerMessageDeflateParameters?
        if let compression, let negotiated = PerMessageDeflateNegotiation.accept(offers: offers, configuration: compression) {
            text += "Sec-WebSocket-Extensions: \(negotiated.response.headerValue)\r\n"
            agreed = negotiated.parameters
        }
        text += "\r\n"
        return .success(Accepted(responseBytes: Array(text.utf8), subprotocol: subprotocol, compression: agreed))
    }
}

public struct HTTPResponseError: Error, Sendable {
    public let response: HTTPResponse
}

extension String {
    /// Trims HTTP optional whitespace (spaces and tabs).
    func trimmingOWS() -> String {
        var view = Substring(self)
        while let first = view.first, first == " " || first == "\t" { view = view.dropFirst() }
        while let last = view.last, last == " " || last == "\t" { view = view.dropLast() }
        return String(view)
    }
}
