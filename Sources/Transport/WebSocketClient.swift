import HTTPCodec
import PerMessageDeflate
import WebSocketCodec

public enum WebSocketClientError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidAddress(String)
    case connectFailed(String)
    /// The TLS handshake failed (OpenSSL's reasons: an untrusted certificate, a refused one...).
    case tlsFailed(String)
    /// The server answered the upgrade with something other than 101.
    case rejected(status: Int, body: String)
    case invalidHandshake(String)
    case timedOut

    public var description: String {
        switch self {
        case .invalidAddress(let message): return message
        case .connectFailed(let message): return "cannot connect: \(message)"
        case .tlsFailed(let message): return "TLS failed: \(message)"
        case .rejected(let status, let body): return "server refused the WebSocket upgrade with HTTP \(status): \(body)"
        case .invalidHandshake(let message): return "invalid handshake answer: \(message)"
        case .timedOut: return "no handshake answer in time"
        }
    }
}

/// Opens client WebSockets on an event loop (used by the client library, tools and tests).
public enum WebSocketClient {
    public typealias Completion = @Sendable (Result<WebSocketConnection, WebSocketClientError>) -> Void

    /// Connects to `host:port`, sends the upgrade for `path` and, on a valid 101, hands the socket
    /// to `handler`. `completion` runs once, on `loop`. With `tls` it speaks wss://: the server's
    /// certificate must chain to the context's trust and name `host`.
    public static func connect(host: String, port: UInt16, path: String, headers: [(String, String)] = [],
                               loop: EventLoop, configuration: WebSocketConfiguration = WebSocketConfiguration(),
                               handshakeTimeout: Duration = .seconds(10), tls: TLSClientContext? = nil,
                               handler: WebSocketHandler, completion: @escaping Completion) {
        let address: SocketAddress
        do {
            address = try SocketAddress(host: host, port: port)
        } catch {
            loop.execute { completion(.failure(.invalidAddress(error.description))) }
            return
        }
        let fd: Int32
        do {
            fd = try Posix.startConnect(to: address)
        } catch {
            loop.execute { completion(.failure(.connectFailed(error.description))) }
            return
        }
        let key = WebSocketHandshake.makeClientKey()
        let hostHeader = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
        var request = "GET \(path) HTTP/1.1\r\nHost: \(hostHeader):\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        request += "Sec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\n"
        if let compression = configuration.compression {
            request += "Sec-WebSocket-Extensions: \(PerMessageDeflateNegotiation.offer(configuration: compression).headerValue)\r\n"
        }
        for (name, value) in headers { request += "\(name): \(value)\r\n" }
        request += "\r\n"
        let requestBytes = Array(request.utf8)
        var session: TLSSession?
        if let tls {
            guard let made = tls.makeSession(fd: fd, serverName: host) else {
                Posix.close(fd)
                loop.execute { completion(.failure(.tlsFailed("cannot create a TLS session: \(TLSSession.drainErrors())"))) }
                return
            }
            session = made
        }
        loop.execute { [session] in
            let connection = Connection(connectingFD: fd, peer: address, loop: loop, maxOutputBytes: 8 << 20, tls: session)
            let handshake = ClientHandshake(connection: connection, key: key, request: requestBytes,
                                            configuration: configuration, handler: handler, completion: completion)
            if session != nil {
                connection.onTLSFailure = { [weak handshake] _, reason in handshake?.tlsFailure = reason }
            }
            connection.delegate = handshake
            connection.deadline = loop.clock.deadline(after: handshakeTimeout)
            loop.watchDeadline(connection)
            connection.finishConnecting()
        }
    }
}

/// Sends the upgrade request and checks the server's 101 answer.
final class ClientHandshake: ConnectionDelegate, @unchecked Sendable {
    private let connection: Connection
    private let key: String
    private let request: [UInt8]
    private let configuration: WebSocketConfiguration
    private var handler: WebSocketHandler?
    private var completion: WebSocketClient.Completion?
    /// Why TLS failed, when it did (OpenSSL's reasons).
    var tlsFailure: String?
    /// Bounded: a head over 16 KiB or a refusal body over 64 KiB fails the handshake.
    private var parser = HTTPResponseParser(maxHeadSize: 16 * 1024, maxBodySize: 64 * 1024)

    init(connection: Connection, key: String, request: [UInt8], configuration: WebSocketConfiguration,
         handler: WebSocketHandler, completion: @escaping WebSocketClient.Completion) {
        self.connection = connection
        self.key = key
        self.request = request
        self.configuration = configuration
        self.handler = handler
        self.completion = completion
    }

    func connectionDidConnect() {
        connection.write(request)
    }

    func connectionDidRead(_ bytes: UnsafeRawBufferPointer) {
        parser.feed(bytes)
        let response: HTTPResponseMessage
        do {
            guard let next = try parser.nextResponse() else { return }
            response = next
        } catch {
            fail(.invalidHandshake(error.message))
            return
        }
        let head = response.head
        guard head.status == 101 else {
            let body = String(decoding: response.body.prefix(512), as: UTF8.self)
            fail(.rejected(status: head.status, body: body.trimmingOWS().replacingNewlines()))
            return
        }
        guard head.headers.containsToken("websocket", in: "Upgrade"), head.headers.containsToken("upgrade", in: "Connection") else {
            fail(.invalidHandshake("101 without Upgrade: websocket / Connection: Upgrade"))
            return
        }
        guard head.headers["Sec-WebSocket-Accept"]?.trimmingOWS() == WebSocketHandshake.acceptValue(forKey: key) else {
            fail(.invalidHandshake("wrong Sec-WebSocket-Accept"))
            return
        }
        var compression: PerMessageDeflateParameters?
        do {
            let elements = try WebSocketExtensions.parse(head.headers.values(for: "Sec-WebSocket-Extensions"))
            if !elements.isEmpty {
                guard let offered = configuration.compression else {
                    fail(.invalidHandshake("server accepted an extension that was not offered"))
                    return
                }
                compression = try PerMessageDeflateNegotiation.validateResponse(elements, configuration: offered)
            }
        } catch {
            fail(.invalidHandshake(error.reason))
            return
        }
        guard let handler, let completion else { return }
        self.handler = nil
        self.completion = nil
        let leftover = parser.takeUnconsumedBytes()
        let socket = WebSocketConnection(connection: connection, role: .client, handler: handler,
                                         configuration: configuration, subprotocol: head.headers["Sec-WebSocket-Protocol"],
                                         compression: compression)
        connection.delegate = socket
        completion(.success(socket))
        socket.start(leftover: leftover)
    }

    private func fail(_ error: WebSocketClientError) {
        guard let completion else { return }
        self.completion = nil
        handler = nil
        connection.close(.abort)
        completion(.failure(error))
    }

    func connectionDeadlineReached(now: UInt64) { fail(.timedOut) }

    func connectionDidClose(_ reason: Connection.CloseReason) {
        switch reason {
        case .connectFailed(let errno):
            fail(.connectFailed(SocketError(call: "connect", errno: errno).description))
        case .reset where tlsFailure != nil:
            fail(.tlsFailed(tlsFailure ?? ""))
        default:
            // A refusal whose body runs until the close is complete now.
            if let response = try? parser.finish() {
                let body = String(decoding: response.body.prefix(512), as: UTF8.self)
                fail(.rejected(status: response.head.status, body: body.trimmingOWS().replacingNewlines()))
            } else {
                fail(.invalidHandshake("connection closed before the handshake completed"))
            }
        }
    }
}

extension String {
    func replacingNewlines() -> String {
        String(map { $0 == "\n" || $0 == "\r" ? " " : $0 })
    }
}
