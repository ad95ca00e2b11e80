// A blocking WebSocket client for tests, frame by frame: builds frames with `WebSocketEncoder`
// (masked, or deliberately not) and reads the server's with `WebSocketDecoder(role: .client)`.
import WebSocketCodec

final class RawWebSocket {
    let socket: TestSocket
    let handshake: TestSocket.HTTPAnswer
    private var decoder: WebSocketDecoder

    /// The request head `connect` sends; `extraHeaders` are appended as given.
    static func upgradeRequest(path: String = "/ws", port: UInt16, key: String = WebSocketHandshake.makeClientKey(),
                               version: String = "13", extraHeaders: [(String, String)] = []) -> String {
        var request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        request += "Sec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: \(version)\r\n"
        for (name, value) in extraHeaders { request += "\(name): \(value)\r\n" }
        return request + "\r\n"
    }

    /// Connects and upgrades; throws unless the answer is a 101 with the right accept value.
    convenience init(port: UInt16, path: String = "/ws", extraHeaders: [(String, String)] = [],
                     maxMessageSize: Int = 64 << 20, timeout: Double = hangGuard, reservedBitsAllowed: UInt8 = 0) async throws {
        let socket = try await TestSocket(port: port, timeout: timeout)
        let key = WebSocketHandshake.makeClientKey()
        try await socket.send(Self.upgradeRequest(path: path, port: port, key: key, extraHeaders: extraHeaders))
        try await self.init(requestSentOn: socket, key: key, maxMessageSize: maxMessageSize,
                            reservedBitsAllowed: reservedBitsAllowed)
    }

    /// Reads the answer to an upgrade request already sent on `socket` with `key`.
    init(requestSentOn socket: TestSocket, key: String, maxMessageSize: Int = 64 << 20,
         reservedBitsAllowed: UInt8 = 0) async throws {
        self.socket = socket
        handshake = try await socket.readHTTPResponse()
        guard handshake.status == 101 else {
            throw TestClientError("upgrade answered \(handshake.status): \(handshake.bodyText)")
        }
        guard handshake.header("Sec-WebSocket-Accept") == WebSocketHandshake.acceptValue(forKey: key) else {
            throw TestClientError("wrong Sec-WebSocket-Accept \(handshake.header("Sec-WebSocket-Accept") ?? "nil")")
        }
        decoder = WebSocketDecoder(role: .client, maxMessageSize: maxMessageSize, reservedBitsAllowed: reservedBitsAllowed)
        feedPending()
    }

    // MARK: sending

    /// RSV bits of the first frame of the message `next()` returned last (RSV1: compressed).
    var lastMessageReservedBits: UInt8 { decoder.lastMessageReservedBits }

    static func frame(_ opcode: WebSocketOpcode, _ payload: [UInt8], fin: Bool = true, masked: Bool = true,
                      rsv1: Bool = false) -> [UInt8] {
        var frame: [UInt8] = []
        WebSocketEncoder.appendFrame(opcode: opcode, payload: payload, fin: fin, rsv1: rsv1,
                                     maskingKey: masked ? WebSocketEncoder.makeMaskingKey() : nil, into: &frame)
        return frame
    }

    func send(_ opcode: WebSocketOpcode, _ payload: [UInt8], fin: Bool = true, masked: Bool = true,
              rsv1: Bool = false) async throws {
        try await socket.send(Self.frame(opcode, payload, fin: fin, masked: masked, rsv1: rsv1))
    }

    func send(text: String) async throws { try await send(.text, Array(text.utf8)) }
    func send(binary: [UInt8]) async throws { try await send(.binary, binary) }

    func sendClose(code: UInt16, reason: String = "") async throws {
        try await send(.close, WebSocketEncoder.closePayload(code: code, reason: reason))
    }

    // MARK: receiving

    private func feedPending() {
        if !socket.pending.isEmpty {
            decoder.feed(socket.pending)
            socket.pending = []
        }
    }

    /// The next message or control frame from the server. Throws when the stream ends first.
    func next() async throws -> WebSocketEvent {
        while true {
            do {
                if let event = try decoder.nextEvent() { return event }
            } catch {
                throw TestClientError("server sent an invalid frame: \(error)")
            }
            if let end = try await socket.readOnce() {
                throw TestClientError("stream ended (\(end)) while waiting for a frame")
            }
            feedPending()
        }
    }

    /// The next event that is not a ping or pong (those are skipped).
    func nextMessage() async throws -> WebSocketEvent {
        while true {
            let event = try await next()
            switch event {
            case .ping, .pong: continue
            default: return event
            }
        }
    }

    /// Waits for the server's close frame, skipping anything else; returns its code.
    func expectClose() async throws -> (code: UInt16?, reason: String) {
        while true {
            if case .close(let code, let reason) = try await next() { return (code, reason) }
        }
    }

    /// After the close handshake: reads until the server ends TCP; returns how it ended.
    func readUntilEnd() async throws -> ReadEnd {
        try await socket.readUntilEnd()
    }

    /// Client-initiated close handshake: sends `code`, returns the code the server echoed, and
    /// checks that the server then closes TCP with a FIN.
    @discardableResult
    func closeHandshake(code: UInt16 = 1000) async throws -> UInt16? {
        try await sendClose(code: code)
        let echoed = try await expectClose().code
        let end = try await readUntilEnd()
        guard end == .endOfFile else { throw TestClientError("server ended with \(end) instead of FIN") }
        socket.closeNow()
        return echoed
    }
}

extension WebSocketEvent {
    var textValue: String? {
        if case .text(let bytes) = self { return String(decoding: bytes, as: UTF8.self) }
        return nil
    }
}
