// The opening handshake over a real socket: what the server answers to valid and invalid upgrades.
import Testing
import WebSocketCodec

extension TransportIntegration {
    @Suite("WebSocket opening handshake")
    struct HandshakeTests {
        @Test("a valid upgrade gets 101 with the right Sec-WebSocket-Accept and no subprotocol")
        func validUpgrade() async throws {
            try await withServer { server in
                let socket = try await TestSocket(port: server.port)
                let key = "dGhlIHNhbXBsZSBub25jZQ=="
                try await socket.send(RawWebSocket.upgradeRequest(port: server.port, key: key))
                let answer = try await socket.readHTTPResponse()
                #expect(answer.status == 101)
                // RFC 6455 §1.3's worked example.
                #expect(answer.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                #expect(answer.header("Upgrade")?.lowercased() == "websocket")
                #expect(answer.header("Connection")?.lowercased() == "upgrade")
                #expect(answer.header("Sec-WebSocket-Protocol") == nil)
                #expect(answer.header("Sec-WebSocket-Extensions") == nil)
                #expect(await eventually { server.log.opened == 1 })
            }
        }

        @Test("an offered subprotocol is echoed in Sec-WebSocket-Protocol")
        func subprotocolEchoed() async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port,
                                              extraHeaders: [("Sec-WebSocket-Protocol", "leasehold.v1, other")])
                #expect(socket.handshake.header("Sec-WebSocket-Protocol") == "leasehold.v1")
                try await socket.closeHandshake()
            }
        }

        @Test("version 12 is refused with 426 and Sec-WebSocket-Version: 13")
        func unsupportedVersion() async throws {
            try await withServer { server in
                let socket = try await TestSocket(port: server.port)
                try await socket.send(RawWebSocket.upgradeRequest(port: server.port, version: "12"))
                let answer = try await socket.readHTTPResponse()
                #expect(answer.status == 426)
                #expect(answer.header("Sec-WebSocket-Version") == "13")
                #expect(try await socket.readUntilEnd() == .endOfFile)
                #expect(server.log.opened == 0)
            }
        }

        @Test("a Sec-WebSocket-Key that is not base64 of 16 bytes gets 400",
              arguments: ["not-base64!", "AAAA", "dGhlIHNhbXBsZSBub25jZQ"])
        func badKey(key: String) async throws {
            try await withServer { server in
                let socket = try await TestSocket(port: server.port)
                try await socket.send(RawWebSocket.upgradeRequest(port: server.port, key: key))
                let answer = try await socket.readHTTPResponse()
                #expect(answer.status == 400)
                #expect(try await socket.readUntilEnd() == .endOfFile)
                #expect(server.log.opened == 0)
            }
        }

        @Test("a plain GET on an upgrade route gets 426 naming websocket")
        func plainGetOnUpgradeRoute() async throws {
            try await withServer { server in
                let socket = try await TestSocket(port: server.port)
                try await socket.send("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                let answer = try await socket.readHTTPResponse()
                #expect(answer.status == 426)
                #expect(answer.header("Upgrade")?.lowercased() == "websocket")
                #expect(answer.header("Sec-WebSocket-Version") == "13")
                #expect(try await socket.readUntilEnd() == .endOfFile)
            }
        }

        @Test("with compression off a permessage-deflate offer is declined: no Sec-WebSocket-Extensions, frames stay plain")
        func deflateDeclined() async throws {
            try await withServer(configure: { $0.webSocket.compression = nil }) { server in
                let socket = try await RawWebSocket(port: server.port, extraHeaders: [
                    ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
                ])
                #expect(socket.handshake.status == 101)
                #expect(socket.handshake.headers("Sec-WebSocket-Extensions").isEmpty)
                try await socket.send(text: "not compressed")
                #expect(try await socket.nextMessage() == .text(Array("not compressed".utf8)))
                try await socket.closeHandshake()
            }
        }

        @Test("frames sent in the same packet as the upgrade request are not lost")
        func framesRightAfterTheRequest() async throws {
            try await withServer { server in
                let socket = try await TestSocket(port: server.port)
                var bytes = Array(RawWebSocket.upgradeRequest(port: server.port).utf8)
                bytes += RawWebSocket.frame(.text, Array("early".utf8))
                bytes += RawWebSocket.frame(.binary, [1, 2, 3])
                try await socket.send(bytes)
                let answer = try await socket.readHTTPResponse()
                #expect(answer.status == 101)
                var decoder = WebSocketDecoder(role: .client, maxMessageSize: 1 << 20)
                var events: [WebSocketEvent] = []
                while events.count < 2 {
                    decoder.feed(socket.pending)
                    socket.pending = []
                    while let event = try decoder.nextEvent() { events.append(event) }
                    if events.count < 2, let end = try await socket.readOnce() {
                        Issue.record("stream ended (\(end)) after \(events.count) echoes")
                        return
                    }
                }
                #expect(events == [.text(Array("early".utf8)), .binary([1, 2, 3])])
            }
        }
    }
}
