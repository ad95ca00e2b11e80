// Messages over a real socket to the echo handler: text, binary, large, fragmented, ping.
import Testing
import WebSocketCodec
#if canImport(Glibc)
import Glibc
#endif

extension TransportIntegration {
    @Suite("WebSocket echo")
    struct EchoTests {
        @Test("text and binary messages come back unchanged, in order")
        func textAndBinary() async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port)
                try await socket.send(text: "hello")
                try await socket.send(text: "")
                try await socket.send(text: "grüße, 世界 🎉")
                try await socket.send(binary: [0, 1, 2, 255])
                try await socket.send(binary: [])
                #expect(try await socket.nextMessage() == .text(Array("hello".utf8)))
                #expect(try await socket.nextMessage() == .text([]))
                #expect(try await socket.nextMessage() == .text(Array("grüße, 世界 🎉".utf8)))
                #expect(try await socket.nextMessage() == .binary([0, 1, 2, 255]))
                #expect(try await socket.nextMessage() == .binary([]))
                // Lengths that need the 16-bit and 64-bit length fields.
                for size in [125, 126, 65_535, 65_536, 100_000] {
                    let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) }
                    try await socket.send(binary: payload)
                    #expect(try await socket.nextMessage() == .binary(payload), "size \(size)")
                }
                #expect(try await socket.closeHandshake() == 1000)
            }
        }

        @Test("a 4 MiB message is echoed when maxMessageSize allows it")
        func largeMessage() async throws {
            try await withServer(configure: { $0.webSocket.maxMessageSize = 8 << 20 }) { server in
                let socket = try await RawWebSocket(port: server.port)
                // A 251-byte pattern (prime, so it never lines up with a power-of-two buffer edge):
                // a lost, repeated or reordered chunk changes the bytes.
                let pattern = (0..<251).map { UInt8(truncatingIfNeeded: $0 &* 97 &+ 13) }
                var payload: [UInt8] = []
                payload.reserveCapacity(4 << 20)
                while payload.count < 4 << 20 { payload += pattern.prefix((4 << 20) - payload.count) }
                try await socket.send(binary: payload)
                guard case .binary(let echoed) = try await socket.nextMessage() else {
                    Issue.record("expected a binary message")
                    return
                }
                #expect(echoed.count == payload.count)
                #expect(echoed == payload)
                // A 4 MiB text message too (ASCII, so any cut would still be valid UTF-8).
                let text = String(repeating: "leasehold ", count: (4 << 20) / 10)
                try await socket.send(text: text)
                #expect(try await socket.nextMessage().textValue == text)
                try await socket.closeHandshake()
            }
        }

        @Test("a fragmented message with a ping between fragments: pong first, then the whole message")
        func fragmentedWithInterleavedPing() async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port)
                // "héllo wörld" split inside a two-byte UTF-8 sequence ("é" = C3 A9).
                let text = Array("héllo wörld".utf8)
                try await socket.send(.text, Array(text[0..<2]), fin: false)
                try await socket.send(.ping, Array("p1".utf8))
                try await socket.send(.continuation, Array(text[2..<7]), fin: false)
                try await socket.send(.continuation, [], fin: false)
                try await socket.send(.continuation, Array(text[7...]), fin: true)
                #expect(try await socket.next() == .pong(Array("p1".utf8)))
                #expect(try await socket.next() == .text(text))
                // Binary fragments, one byte each.
                let bytes: [UInt8] = [9, 8, 7, 6]
                for (index, byte) in bytes.enumerated() {
                    try await socket.send(index == 0 ? .binary : .continuation, [byte], fin: index == bytes.count - 1)
                }
                #expect(try await socket.next() == .binary(bytes))
                try await socket.closeHandshake()
            }
        }

        @Test("a message arriving one byte per TCP segment is reassembled")
        func byteByByte() async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port)
                let frame = RawWebSocket.frame(.text, Array("slow but whole".utf8))
                for byte in frame {
                    try await socket.socket.send([byte])
                    usleep(500)
                }
                #expect(try await socket.nextMessage() == .text(Array("slow but whole".utf8)))
                try await socket.closeHandshake()
            }
        }

        @Test("ping is answered with a pong carrying the same payload", arguments: [0, 1, 125])
        func pingPong(size: Int) async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port)
                let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 + 1) }
                try await socket.send(.ping, payload)
                #expect(try await socket.next() == .pong(payload))
                try await socket.closeHandshake()
            }
        }
    }
}
