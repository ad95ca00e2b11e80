// Many connections, a peer that never reads, and closing everything at once.
import Testing
import TransportTesting
import Transport
import WebSocketCodec
#if canImport(Glibc)
import Glibc
#endif

extension TransportIntegration {
    @Suite("Load, output bounds and shutdown")
    struct LoadTests {
        @Test("a peer that never reads while the server sends is cut off at maxOutputBytes")
        func outputBound() async throws {
            try await withServer(configure: { $0.maxOutputBytes = 64 * 1024 }) { server in
                let socket = try await RawWebSocket(port: server.port)
                try await socket.send(text: "cmd:flood")
                // Never read: the socket buffers fill, then the server's output queue passes 64 KiB.
                #expect(await eventually { server.log.closes.count == 1 })
                #expect(server.log.closes.first?.code == 1006)
                #expect(await eventually { server.openConnections == 0 })
                // What reached us ends with a reset, not with the 512 MiB the handler would send.
                #expect(try await socket.readUntilEnd() == .reset)
            }
        }

        @Test("1,000 concurrent WebSockets each get their echo, close cleanly, and are all released")
        func thousandConnections() async throws {
            try await withServer(configure: { $0.webSocket.pingInterval = nil }) { server in
                var limit = rlimit()
                getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
                // HTTPServer.init raised the soft limit; 1,000 clients + 1,000 server sockets must fit.
                #expect(limit.rlim_cur >= 2_200, "descriptor limit \(limit.rlim_cur) is too low for this test")

                let count = 1_000
                var pending: [(TestSocket, String)] = []
                pending.reserveCapacity(count)
                // All connect and send their upgrade before any answer is read: all are open at once.
                for _ in 0..<count {
                    let socket = try await TestSocket(port: server.port)
                    let key = WebSocketHandshake.makeClientKey()
                    try await socket.send(RawWebSocket.upgradeRequest(port: server.port, key: key))
                    pending.append((socket, key))
                }
                var sockets: [RawWebSocket] = []
                for (socket, key) in pending { sockets.append(try await RawWebSocket(requestSentOn: socket, key: key)) }
                #expect(await eventually { server.openConnections == count })
                for (index, socket) in sockets.enumerated() {
                    try await socket.send(text: "message \(index)")
                }
                for (index, socket) in sockets.enumerated() {
                    try #require(try await socket.next() == .text(Array("message \(index)".utf8)), "connection \(index)")
                }
                for socket in sockets { try await socket.sendClose(code: 1000) }
                for (index, socket) in sockets.enumerated() {
                    try #require(try await socket.expectClose().code == 1000, "connection \(index)")
                    try #require(try await socket.readUntilEnd() == .endOfFile, "connection \(index)")
                    socket.socket.closeNow()
                }
                #expect(await eventually { server.openConnections == 0 })
                #expect(await eventually { server.log.closes.count == count })
                #expect(server.log.closes.allSatisfy { $0.code == 1000 })
                #expect(server.log.opened == count)
            }
        }

        @Test("closeAllConnections sends 1001 to open WebSockets, closes plain HTTP ones, then completes")
        func closeAll() async throws {
            let server = try TestServer()
            var sockets: [RawWebSocket] = []
            for _ in 0..<5 { sockets.append(try await RawWebSocket(port: server.port)) }
            let idleHTTP = try await TestSocket(port: server.port)
            try await idleHTTP.send("GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            #expect(try await idleHTTP.readHTTPResponse().status == 200)
            #expect(await eventually { server.openConnections == 6 })

            let completed = Locked(false)
            server.server.closeAllConnections(code: 1001, reason: "shutting down", timeout: .seconds(10)) {
                completed.withLock { $0 = true }
            }
            for socket in sockets {
                let close = try await socket.expectClose()
                #expect(close.code == 1001)
                #expect(close.reason == "shutting down")
                try await socket.sendClose(code: 1001)
                #expect(try await socket.readUntilEnd() == .endOfFile)
                socket.socket.closeNow()
            }
            #expect(try await idleHTTP.readUntilEnd() == .endOfFile)
            idleHTTP.closeNow()
            // The completion runs once every descriptor is closed, well before the 10 s timeout.
            #expect(await eventually { completed.withLock { $0 } })
            #expect(server.openConnections == 0)
            #expect(server.log.closes.map(\.code) == Array(repeating: 1001, count: 5))
            await server.shutdown()
        }

        @Test("closeAllConnections runs its completion at the timeout when a peer never answers")
        func closeAllTimeout() async throws {
            let server = try TestServer(configure: { $0.webSocket.closeTimeout = .seconds(30) })
            let socket = try await RawWebSocket(port: server.port)
            let clock = ContinuousClock()
            let start = clock.now
            await server.closeAll(code: 1001, reason: "bye", timeout: .milliseconds(300))
            #expect(clock.now - start >= .milliseconds(250))
            #expect(try await socket.expectClose().code == 1001)
            socket.socket.closeNow()
            #expect(await eventually { server.openConnections == 0 })
            await server.shutdown()
        }
    }
}
