// permessage-deflate over a real socket: negotiation, RSV1 frames both ways, fragments, control
// frames, the decompression bomb, our own client, shared messages.
import PerMessageDeflate
import Testing
import Transport
import WebSocketCodec

private let deflateOffer = ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")
private let helloDeflated: [UInt8] = [0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00]

private func deflated(_ bytes: [UInt8], windowBits: Int = 15) -> [UInt8] {
    let deflater = Deflater(windowBits: windowBits, memoryLevel: 8, level: 6)
    return bytes.withUnsafeBytes { deflater.compress($0) } ?? []
}

extension TransportIntegration {
    @Suite("permessage-deflate on the wire")
    struct CompressionTests {
        @Test("an offer is accepted; a compressed 'Hello' is inflated, and a short echo goes back uncompressed")
        func acceptedAndInflated() async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port, extraHeaders: [deflateOffer], reservedBitsAllowed: 0x40)
                #expect(socket.handshake.header("Sec-WebSocket-Extensions") == "permessage-deflate; client_max_window_bits=15")
                try await socket.send(.text, helloDeflated, rsv1: true)
                #expect(try await socket.nextMessage() == .text(Array("Hello".utf8)))
                #expect(socket.lastMessageReservedBits == 0)
                #expect(await eventually { server.log.texts == ["Hello"] })
                try await socket.closeHandshake()
            }
        }

        @Test("a long message is echoed compressed (RSV1 on its frame) and inflates to what was sent")
        func echoCompressed() async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port, extraHeaders: [deflateOffer], reservedBitsAllowed: 0x40)
                let json = String(repeating: "{\"resource\":\"gpu-01\",\"holder\":\"alice\"},", count: 200)
                try await socket.send(text: json)
                guard case .text(let wire) = try await socket.nextMessage() else {
                    Issue.record("expected a text message")
                    return
                }
                #expect(socket.lastMessageReservedBits == 0x40)
                #expect(wire.count * 10 < json.utf8.count)
                let inflater = Inflater(windowBits: 15)
                #expect(try inflater.decompress(wire, limit: 1 << 20) == Array(json.utf8))
                try await socket.closeHandshake()
            }
        }

        @Test("a fragmented compressed message (RSV1 on the first frame only) is reassembled and inflated")
        func fragmented() async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port, extraHeaders: [deflateOffer], reservedBitsAllowed: 0x40)
                try await socket.send(.text, Array(helloDeflated[..<3]), fin: false, rsv1: true)
                try await socket.send(.ping, [1, 2])
                try await socket.send(.continuation, Array(helloDeflated[3...]))
                #expect(try await socket.next() == .pong([1, 2]))
                #expect(try await socket.nextMessage() == .text(Array("Hello".utf8)))
                try await socket.closeHandshake()
            }
        }

        @Test("RSV1 on a control frame or a continuation closes with 1002", arguments: [true, false])
        func rsv1WhereNotAllowed(onPing: Bool) async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port, extraHeaders: [deflateOffer], reservedBitsAllowed: 0x40)
                if onPing {
                    try await socket.send(.ping, [1], rsv1: true)
                } else {
                    try await socket.send(.text, Array(helloDeflated[..<3]), fin: false, rsv1: true)
                    try await socket.send(.continuation, Array(helloDeflated[3...]), rsv1: true)
                }
                #expect(try await socket.expectClose().code == 1002)
            }
        }

        @Test("without negotiation RSV1 closes with 1002")
        func rsv1WithoutNegotiation() async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port)
                try await socket.send(.text, helloDeflated, rsv1: true)
                #expect(try await socket.expectClose().code == 1002)
            }
        }

        @Test("a bomb (a few KB inflating to 16 MB) closes with 1009 and the server goes on")
        func bomb() async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port, extraHeaders: [deflateOffer], reservedBitsAllowed: 0x40)
                let wire = deflated([UInt8](repeating: 0x20, count: 16 << 20))
                #expect(wire.count < 64 * 1024)
                try await socket.send(.text, wire, rsv1: true)
                #expect(try await socket.expectClose().code == 1009)
                let next = try await RawWebSocket(port: server.port, extraHeaders: [deflateOffer], reservedBitsAllowed: 0x40)
                try await next.send(.text, helloDeflated, rsv1: true)
                #expect(try await next.nextMessage() == .text(Array("Hello".utf8)))
                try await next.closeHandshake()
            }
        }

        @Test("compressed text that inflates to invalid UTF-8 closes with 1007")
        func invalidUTF8() async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port, extraHeaders: [deflateOffer], reservedBitsAllowed: 0x40)
                try await socket.send(.text, deflated([0x48, 0xC3, 0x28, 0x21]), rsv1: true)
                #expect(try await socket.expectClose().code == 1007)
            }
        }

        @Test("our client offers permessage-deflate; both ends agree and long messages round-trip",
              arguments: [false, true])
        func ownClient(noContext: Bool) async throws {
            try await withServer { server in
                let group = makeClientGroup()
                let client = ClientHandler()
                var configuration = WebSocketConfiguration()
                configuration.compression?.requestPeerNoContextTakeover = noContext
                configuration.compression?.peerWindowBits = 10
                let socket = try await connectClient(port: server.port, loop: group.next(), configuration: configuration,
                                                     handler: client).get()
                #expect(socket.compressionParameters == PerMessageDeflateParameters(
                    localNoContextTakeover: false, remoteNoContextTakeover: noContext,
                    localMaxWindowBits: 12, remoteMaxWindowBits: 10))
                let serverSocket = try #require(await eventuallyValue { server.handler.sockets.withLock { $0.first } })
                #expect(serverSocket.compressionParameters?.localNoContextTakeover == noContext)
                #expect(serverSocket.compressionParameters?.localMaxWindowBits == 10)
                let long = String(repeating: "lease gpu-03 to bob; ", count: 500)
                socket.loop.execute {
                    socket.send(text: long)
                    socket.send(text: long + "again")
                }
                #expect(await eventually { client.log.texts == [long, long + "again"] })
                socket.loop.execute { socket.close(code: 1000) }
                #expect(await eventually { server.log.closes.map(\.code) == [1000] })
            }
        }

        @Test("a shared message is compressed once and reaches every peer intact")
        func sharedMessage() async throws {
            try await withServer { server in
                var sockets: [RawWebSocket] = []
                for _ in 0..<3 {
                    sockets.append(try await RawWebSocket(port: server.port, extraHeaders: [deflateOffer], reservedBitsAllowed: 0x40))
                }
                sockets.append(try await RawWebSocket(port: server.port))   // no compression
                let serverSockets = try #require(await eventuallyValue {
                    server.handler.sockets.withLock { $0.count == 4 ? $0 : nil }
                })
                let snapshot = Array(String(repeating: "{\"name\":\"gpu\",\"state\":\"free\"}", count: 300).utf8)
                let shared = SharedMessage(text: snapshot)
                for socket in serverSockets {
                    socket.loop.execute {
                        socket.send(text: "before")
                        socket.send(shared)
                        socket.send(text: String(decoding: snapshot, as: UTF8.self))
                    }
                }
                for (index, socket) in sockets.enumerated() {
                    let inflater = Inflater(windowBits: 15)
                    var received: [[UInt8]] = []
                    for position in 0..<3 {
                        guard case .text(let payload) = try await socket.nextMessage() else { continue }
                        let compressed = socket.lastMessageReservedBits != 0
                        received.append(compressed ? try inflater.decompress(payload, limit: 1 << 20) : payload)
                        // "before" is too short to compress; the snapshots are compressed where negotiated.
                        #expect(compressed == (index < 3 && position > 0))
                    }
                    #expect(received == [Array("before".utf8), snapshot, snapshot])
                    try await socket.closeHandshake()
                }
            }
        }
    }
}

/// Polls until `value` gives a non-nil result (or the hang guard passes).
func eventuallyValue<T>(_ value: () -> T?) async -> T? {
    var result: T?
    _ = await eventually {
        result = value()
        return result != nil
    }
    return result
}
