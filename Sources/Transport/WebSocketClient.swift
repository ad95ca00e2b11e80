import HTTPCodec
import WebSocketCodec

public enum WebSocketClientError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidAddress(String)
    case connectFailed(String)
    /// The server answered the upgrade with something other than 101.
    case rejected(status: Int, body: String)
    case invalidHandshake(String)
    case timedOut

    public var description: String {
        switch self {
        case .invalidAddress(let message): return message
        case .connectFailed(let message): return "cannot connect: \(message)"
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
    /// to `handler`. `completion` runs once, on `loop`.
    public static func connect(host: String, port: UInt16, path: String, headers: [(String, String)] = [],
                               loop: EventLoop, configuration: WebSocketConfiguration = WebSocketConfiguration(),
                               handshakeTimeout: Duration = .seconds(10),
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
        for (name, value) in headers { request += "\(name): \(value)\r\n" }
        request += "\r\n"
        let requestBytes = Array(request.utf8)
        loop.execute {
            let connection = Connection(connectingFD: fd, peer: address, loop: loop, maxOutputBytes: 8 << 20)
            let handshake = ClientHandshake(connection: connection, key: key, request: requestBytes,
                                            configuration: configuration, handler: handler, completion: completion)
            connection.delegate = handshake
            connection.deadline = EventLoop.now() + UInt64(max(0, handshakeTimeout.nanoseconds))
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
    private var received: [UInt8] = []
    private static let maxHeadSize = 16 * 1024

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
        received.append(contentsOf: bytes)
        guard let headEnd = Self.endOfHead(in: received) else {
            if received.count > Self.maxHeadSize { fail(.invalidHandshake("response head over 16 KiB")) }
            return
        }
        let head = String(decoding: received[..<headEnd], as: UTF8.self)
        let leftover = Array(received[(headEnd + 4)...])
        var lines = head.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        let statusLine = lines.isEmpty ? "" : lines.removeFirst()
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            fail(.invalidHandshake("bad status line '\(statusLine)'"))
            return
        }
        var headers = HTTPHeaders()
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.add(name: String(line[..<colon]), value: String(line[line.index(after: colon)...]).trimmingOWS())
        }
        guard status == 101 else {
            let body = String(decoding: leftover.prefix(512), as: UTF8.self)
            fail(.rejected(status: status, body: body.trimmingOWS().replacingNewlines()))
            return
        }
        guard headers.containsToken("websocket", in: "Upgrade"), headers.containsToken("upgrade", in: "Connection") else {
            fail(.invalidHandshake("101 without Upgrade: websocket / Connection: Upgrade"))
            return
        }
        guard headers["Sec-WebSocket-Accept"] == WebSocketHandshake.acceptValue(forKey: key) else {
            fail(.invalidHandshake("wrong Sec-WebSocket-Accept"))
            return
        }
        guard let handler, let completion else { return }
        self.handler = nil
        self.completion = nil
        received = []
        let socket = WebSocketConnection(connection: connection, role: .client, handler: handler,
                                         configuration: configuration, subprotocol: headers["Sec-WebSocket-Protocol"])
        connection.delegate = socket
        completion(.success(socket))
        socket.start(leftover: leftover)
    }

    private static func endOfHead(in bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for index in 0...(bytes.count - 4)
        where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
            return index
        }
        return nil
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
        default:
            fail(.invalidHandshake("connection closed before the handshake completed"))
        }
    }
}

extension String {
    func replacingNewlines() -> String {
        String(map { $0 == "\n" || $0 == "\r" ? " " : $0 })
    }
}
