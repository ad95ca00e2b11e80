// Peers that vanish, go quiet or crawl: resets, dead-peer pings, slow and silent handshakes.
import TransportTesting
import Testing
@testable import Transport
import WebSocketCodec
#if canImport(Glibc)
import Glibc
#endif

extension TransportIntegration {
    @Suite("Peers that vanish, stall or crawl")
    struct LivenessTests {
        @Test("a client that resets the connection: webSocketDidClose fires once with 1006")
        func resetByPeer() async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port)
                try await socket.send(text: "before the reset")
                #expect(try await socket.nextMessage().textValue == "before the reset")
                socket.socket.resetAndClose()
                #expect(await eventually { server.log.closes.count == 1 })
                #expect(server.log.closes.first?.code == 1006)
                #expect(await eventually { server.openConnections == 0 })
                #expect(server.log.closes.count == 1)
            }
        }

        @Test("a client that resets with unread data in flight also ends with 1006")
        func resetWithDataInFlight() async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port)
                // A frame header promising more payload than is sent, then RST.
                try await socket.socket.send(Array(RawWebSocket.frame(.binary, [UInt8](repeating: 1, count: 1000)).prefix(100)))
                socket.socket.resetAndClose()
                // Data and RST often arrive before the server reads: the first read returns the data,
                // short, and the reset gets no event of its own.
                #expect(await eventually { server.log.closes.map(\.code) == [1006] })
                #expect(await eventually { server.openConnections == 0 })
            }
        }

        @Test("a client that sends a message and closes TCP without a close frame: the handler hears 1006")
        func finWithoutCloseFrame() async throws {
            try await withServer { server in
                for _ in 0..<5 {
                    let socket = try await TestSocket(port: server.port)
                    let key = WebSocketHandshake.makeClientKey()
                    try await socket.send(RawWebSocket.upgradeRequest(port: server.port, key: key))
                    let ws = try await RawWebSocket(requestSentOn: socket, key: key)
                    try await ws.send(text: "last words")
                    ws.socket.closeNow()  // FIN right behind the frame, no close frame
                }
                #expect(await eventually { server.log.closes.count == 5 })
                #expect(await eventually { server.openConnections == 0 })
                #expect(server.log.closes.allSatisfy { $0.code == 1006 })
                #expect(server.log.texts.filter { $0 == "last words" }.count == server.log.closes.count)
            }
        }

        // Ping and dead-peer timing runs on a manual clock: the test says when time passes, so a
        // loaded machine cannot make a live peer look dead or a dead one look alive.

        @Test("dead peer: a client that never answers pings is pinged, then dropped with 1006")
        func deadPeerDropped() async throws {
            let clock = ManualClock()
            try await withServer(clock: clock, configure: {
                $0.webSocket.pingInterval = .seconds(1)
                $0.webSocket.deadAfter = .seconds(3)
            }) { server in
                let socket = try await RawWebSocket(port: server.port)
                #expect(await eventually { server.log.opened == 1 })
                clock.advance(by: .seconds(1))
                guard case .ping = try await socket.next() else {
                    Issue.record("expected a ping once the ping interval passed")
                    return
                }
                clock.advance(by: .milliseconds(1999))
                #expect(server.log.closes.isEmpty, "dropped before deadAfter")
                clock.advance(by: .milliseconds(1))
                #expect(await eventually { server.log.closes.map(\.code) == [1006] })
                #expect(await eventually { server.openConnections == 0 })
                // Only pings came before the end of the stream.
                while true {
                    do {
                        guard case .ping = try await socket.next() else {
                            Issue.record("expected only pings")
                            break
                        }
                    } catch let error as TestClientError where !error.timedOut {
                        break
                    }
                }
            }
        }

        @Test("a slow reader working through a backlog is not taken for dead, and is once it stops")
        func slowReaderKept() async throws {
            let clock = ManualClock()
            try await withServer(clock: clock, configure: {
                $0.webSocket.pingInterval = .seconds(1)
                $0.webSocket.deadAfter = .seconds(3)
                $0.webSocket.maxMessageSize = 16 << 20
                $0.maxOutputBytes = 32 << 20
            }) { server in
                let socket = try await RawWebSocket(port: server.port, maxMessageSize: 16 << 20)
                var small: Int32 = 64 * 1024
                setsockopt(socket.socket.fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
                #expect(await eventually { server.handler.sockets.withLock { $0.count } == 1 })
                let serverSide = try #require(server.handler.sockets.withLock { $0.first })
                /// What the server sees of the peer's acknowledgements, read on its loop as the
                /// dead-peer check does: (bytes acknowledged, backlog still unacknowledged).
                func progress() -> (acknowledged: UInt64, backlog: Int) {
                    serverSide.loop.queue.sync { (serverSide.connection.bytesAcknowledged, serverSide.connection.outputBacklog) }
                }
                let size = 8 << 20
                try await socket.send(binary: [UInt8](repeating: 7, count: size))
                // Read the echo slowly, half a second of the server's time per read (half a minute
                // in all, many times deadAfter) and never answer a ping: the peer's TCP
                // acknowledging our output is what keeps it alive. The kernel acknowledges a read in
                // its own time, so the clock moves on only once the server has seen that; and only
                // while more output is left than the peer's kernel can take without the reader
                // (64 KiB asked, a few times that granted), since past that point acknowledgements
                // no longer prove that anyone reads.
                let enough = 1 << 20
                var received = 0
                var seen = progress().acknowledged
                while received < size {
                    guard try await socket.socket.readOnce(max: 128 * 1024) == nil else {
                        Issue.record("the server dropped a reader that was still reading (\(received) of \(size) bytes)")
                        return
                    }
                    received += socket.socket.take(socket.socket.pending.count).count
                    #expect(await eventually {
                        let now = progress()
                        return now.acknowledged > seen || now.backlog <= enough
                    }, "the server saw no acknowledgement of a read")
                    guard progress().backlog > enough else { continue }
                    clock.advance(by: .milliseconds(500))
                    // At least what any look of the server's during that step saw.
                    seen = progress().acknowledged
                }
                #expect(server.log.closes.isEmpty)
                // Now it reads nothing more and answers nothing: dead after all.
                clock.advance(by: .seconds(3))
                clock.advance(by: .seconds(3))
                #expect(await eventually { server.log.closes.map(\.code) == [1006] })
            }
        }

        @Test("dead peer: a client that answers pings stays open well past deadAfter")
        func livePeerKept() async throws {
            let clock = ManualClock()
            try await withServer(clock: clock, configure: {
                $0.webSocket.pingInterval = .seconds(1)
                $0.webSocket.deadAfter = .seconds(3)
            }) { server in
                let socket = try await RawWebSocket(port: server.port)
                #expect(await eventually { server.log.opened == 1 })
                for round in 0..<6 {
                    clock.advance(by: .seconds(1))
                    let event = try await socket.next()
                    guard case .ping(let payload) = event else {
                        Issue.record("unexpected \(event)")
                        return
                    }
                    try await socket.send(.pong, payload)
                    // The echo proves the server read the pong before the clock moves again.
                    try await socket.send(text: "round \(round)")
                    #expect(try await socket.nextMessage().textValue == "round \(round)")
                }
                #expect(server.log.closes.isEmpty, "dropped after 6 s of answered pings (deadAfter 3 s)")
                try await socket.closeHandshake()
            }
        }

        @Test("a handshake sent one byte at a time still upgrades")
        func slowHandshake() async throws {
            try await withServer(configure: { $0.requestHeadTimeout = .seconds(10) }) { server in
                let socket = try await TestSocket(port: server.port)
                for byte in Array(RawWebSocket.upgradeRequest(port: server.port).utf8) {
                    try await socket.send([byte])
                    usleep(1_000)
                }
                #expect(try await socket.readHTTPResponse().status == 101)
            }
        }

        @Test("a client that sends nothing is dropped after requestHeadTimeout")
        func silentClientDropped() async throws {
            let clock = ManualClock()
            try await withServer(clock: clock, configure: { $0.requestHeadTimeout = .seconds(3) }) { server in
                let socket = try await TestSocket(port: server.port)
                #expect(await eventually { server.openConnections == 1 })
                clock.advance(by: .milliseconds(2999))
                var probe = pollfd(fd: socket.fd, events: Int16(POLLIN), revents: 0)
                #expect(poll(&probe, 1, 50) == 0, "closed before the timeout")
                clock.advance(by: .milliseconds(1))
                #expect(try await socket.readUntilEnd() == .endOfFile)
                #expect(socket.pending.isEmpty)
                socket.closeNow()
                #expect(await eventually { server.openConnections == 0 })
            }
        }

        @Test("a client that stalls inside its request head gets 408 after requestHeadTimeout")
        func stalledHeadGets408() async throws {
            let clock = ManualClock()
            try await withServer(clock: clock, configure: { $0.requestHeadTimeout = .seconds(3) }) { server in
                let socket = try await TestSocket(port: server.port)
                try await socket.send("GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                // Read by the server (the head timeout runs from a request's first byte).
                #expect(await eventually { server.group.bytesRead > 0 })
                clock.advance(by: .seconds(3))
                let answer = try await socket.readHTTPResponse()
                #expect(answer.status == 408)
                #expect(try await socket.readUntilEnd() == .endOfFile)
            }
        }
    }
}
