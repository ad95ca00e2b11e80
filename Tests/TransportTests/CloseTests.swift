// The close handshake both ways, and protocol violations answered with the right close code.
import TransportTesting
import Testing
import Transport
import WebSocketCodec

extension TransportIntegration {
    @Suite("WebSocket close handshake")
    struct CloseHandshakeTests {
        @Test("client-initiated close: the server echoes the code, then closes TCP with a FIN",
              arguments: [UInt16(1000), 1001, 4000])
        func clientInitiated(code: UInt16) async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port)
                try await socket.sendClose(code: code, reason: "done here")
                #expect(try await socket.expectClose().code == code)
                #expect(try await socket.readUntilEnd() == .endOfFile)
                socket.socket.closeNow()
                #expect(await eventually { server.log.closes.count == 1 })
                #expect(server.log.closes.first?.code == code)
                #expect(server.log.closes.first?.reason == "done here")
                #expect(await eventually { server.openConnections == 0 })
            }
        }

        @Test("a close frame without a status code is answered, and the handler hears 1005")
        func closeWithoutCode() async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port)
                try await socket.send(.close, [])
                #expect(try await socket.expectClose().code == nil)
                #expect(try await socket.readUntilEnd() == .endOfFile)
                #expect(await eventually { server.log.closes.map(\.code) == [1005] })
            }
        }

        @Test("server-initiated close: the client gets the handler's code, webSocketDidClose fires once")
        func serverInitiated() async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port)
                try await socket.send(text: "cmd:close:4001")
                let close = try await socket.expectClose()
                #expect(close.code == 4001)
                #expect(close.reason == "closing as asked")
                // Messages after the server's close frame are not delivered to the handler.
                try await socket.send(text: "too late")
                try await socket.sendClose(code: 4001)
                #expect(try await socket.readUntilEnd() == .endOfFile)
                socket.socket.closeNow()
                #expect(await eventually { server.openConnections == 0 })
                #expect(server.log.closes.map(\.code) == [4001])
                #expect(!server.log.texts.contains("too late"))
            }
        }

        @Test("server-initiated close: a peer that never answers is disconnected after closeTimeout")
        func serverInitiatedUnanswered() async throws {
            let clock = ManualClock()
            try await withServer(clock: clock, configure: { $0.webSocket.closeTimeout = .seconds(3) }) { server in
                let socket = try await RawWebSocket(port: server.port)
                try await socket.send(text: "cmd:close:4002")
                #expect(try await socket.expectClose().code == 4002)
                clock.advance(by: .seconds(3))
                // No close frame back: the server must still end TCP by itself.
                #expect(try await socket.readUntilEnd() == .endOfFile)
                socket.socket.closeNow()
                #expect(await eventually { server.openConnections == 0 })
                #expect(server.log.closes.map(\.code) == [4002])
            }
        }
    }
}

extension TransportIntegration {
    @Suite("WebSocket protocol errors over the wire")
    struct ProtocolErrorTests {
        /// Sends `bytes` on a fresh WebSocket and expects a close with `code`, then FIN; the handler
        /// hears the same code, and the server goes on echoing on a new connection.
        func expectCloseCode(_ code: UInt16, after bytes: [UInt8], server: TestServer) async throws {
            let socket = try await RawWebSocket(port: server.port)
            try await socket.socket.send(bytes)
            #expect(try await socket.expectClose().code == code)
            #expect(try await socket.readUntilEnd() == .endOfFile)
            socket.socket.closeNow()
            #expect(await eventually { server.log.closes.map(\.code) == [code] })

            let other = try await RawWebSocket(port: server.port)
            try await other.send(text: "still serving")
            #expect(try await other.nextMessage().textValue == "still serving")
            try await other.closeHandshake()
        }

        @Test("an unmasked client frame is closed with 1002")
        func unmaskedFrame() async throws {
            try await withServer { server in
                try await expectCloseCode(1002, after: RawWebSocket.frame(.text, Array("bare".utf8), masked: false),
                                          server: server)
            }
        }

        @Test("invalid UTF-8 in a text message is closed with 1007")
        func invalidUTF8() async throws {
            try await withServer { server in
                try await expectCloseCode(1007, after: RawWebSocket.frame(.text, [0x68, 0xC0, 0xAF, 0x69]), server: server)
            }
        }

        @Test("invalid UTF-8 split across fragments is closed with 1007")
        func invalidUTF8Fragmented() async throws {
            try await withServer { server in
                let bytes = RawWebSocket.frame(.text, [0xF0, 0x9F], fin: false)
                    + RawWebSocket.frame(.continuation, [0x41], fin: true)
                try await expectCloseCode(1007, after: bytes, server: server)
            }
        }

        @Test("a message over maxMessageSize is closed with 1009", arguments: [false, true])
        func tooBig(fragmented: Bool) async throws {
            try await withServer(configure: { $0.webSocket.maxMessageSize = 1024 }) { server in
                let payload = [UInt8](repeating: 7, count: 1500)
                let bytes = fragmented
                    ? RawWebSocket.frame(.binary, Array(payload[..<1000]), fin: false)
                        + RawWebSocket.frame(.continuation, Array(payload[1000...]), fin: true)
                    : RawWebSocket.frame(.binary, payload)
                try await expectCloseCode(1009, after: bytes, server: server)
            }
        }

        @Test("a frame header announcing an 8 EiB payload is closed with 1009 before any payload")
        func hugeLengthField() async throws {
            try await withServer { server in
                // FIN+binary, masked, 64-bit length 0x7FFF_FFFF_FFFF_FFFF, masking key; no payload.
                let bytes: [UInt8] = [0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4]
                try await expectCloseCode(1009, after: bytes, server: server)
            }
        }

        @Test("a continuation frame with no message started is closed with 1002")
        func strayContinuation() async throws {
            try await withServer { server in
                try await expectCloseCode(1002, after: RawWebSocket.frame(.continuation, [1]), server: server)
            }
        }
    }
}
