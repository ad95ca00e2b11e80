// The transport's own event-driven client role (WebSocketClient.connect) against the server.
import Synchronization
import TransportTesting
import Testing
import Transport
#if canImport(Glibc)
import Glibc
#endif

extension TransportIntegration {
    @Suite("WebSocketClient (client role)")
    struct WebSocketClientTests {
        @Test("connects, echoes text and binary, and closes with 1000 heard on both sides")
        func echoAndClose() async throws {
            try await withServer { server in
                let group = makeClientGroup()
                let client = ClientHandler()
                let socket = try await connectClient(port: server.port, loop: group.next(), handler: client).get()
                #expect(await eventually { client.log.opened == 1 })
                socket.loop.execute {
                    socket.send(text: "from the client")
                    socket.send(binary: [UInt8](repeating: 3, count: 70_000))
                }
                #expect(await eventually { client.log.texts == ["from the client"] })
                #expect(await eventually { client.log.all.contains(.binary(ObjectIdentifier(socket), 70_000)) })
                socket.loop.execute { socket.close(code: 1000, reason: "bye") }
                #expect(await eventually { client.log.closes.map(\.code) == [1000] })
                #expect(await eventually { server.log.closes.map(\.code) == [1000] })
                #expect(server.log.closes.first?.reason == "bye")
                #expect(await eventually { server.openConnections == 0 })
            }
        }

        @Test("IPv6: a server on [::1] serves a client that connects to ::1")
        func ipv6() async throws {
            let server = try TestServer(host: "::1")
            let group = makeClientGroup()
            let client = ClientHandler()
            let socket = try await connectClient(host: "::1", port: server.port, loop: group.next(), handler: client).get()
            #expect(socket.peer.family == AF_INET6)
            socket.loop.execute { socket.send(text: "over v6") }
            #expect(await eventually { client.log.texts == ["over v6"] })
            socket.loop.execute { socket.close(code: 1000) }
            #expect(await eventually { server.log.closes.map(\.code) == [1000] })
            await server.shutdown()
        }

        @Test("the subprotocol the server chose is reported on the client socket")
        func subprotocol() async throws {
            try await withServer { server in
                let group = makeClientGroup()
                let socket = try await connectClient(port: server.port, headers: [("Sec-WebSocket-Protocol", "lease.v1")],
                                                     loop: group.next(), handler: ClientHandler()).get()
                #expect(socket.subprotocol == "lease.v1")
                socket.loop.execute { socket.close(code: 1000) }
            }
        }

        @Test("a server-initiated close reaches the client handler once, with the server's code")
        func serverInitiatedClose() async throws {
            try await withServer { server in
                let group = makeClientGroup()
                let client = ClientHandler()
                let socket = try await connectClient(port: server.port, loop: group.next(), handler: client).get()
                socket.loop.execute { socket.send(text: "cmd:close:4001") }
                #expect(await eventually { client.log.closes.map(\.code) == [4001] })
                #expect(client.log.closes.first?.reason == "closing as asked")
                #expect(await eventually { server.openConnections == 0 })
                #expect(client.log.closes.count == 1)
                #expect(server.log.closes.map(\.code) == [4001])
            }
        }

        @Test("the client answers the server's pings (masked pongs) and is not dropped as dead")
        func clientAnswersPings() async throws {
            let clock = ManualClock()
            try await withServer(clock: clock, configure: {
                $0.webSocket.pingInterval = .seconds(1)
                $0.webSocket.deadAfter = .seconds(3)
            }) { server in
                let group = makeClientGroup()
                let client = ClientHandler()
                var configuration = WebSocketConfiguration()
                configuration.pingInterval = nil  // only the server pings
                configuration.deadAfter = nil
                let socket = try await connectClient(port: server.port, loop: group.next(),
                                                     configuration: configuration, handler: client).get()
                #expect(await eventually { server.log.opened == 1 })
                for round in 0..<6 {
                    let heard = server.group.bytesRead
                    clock.advance(by: .seconds(1))
                    // The server reads the client's pong (nothing else is sent) before time moves on.
                    #expect(await eventually { server.group.bytesRead > heard }, "no pong in round \(round)")
                }
                #expect(server.log.closes.isEmpty, "dropped after 6 s of pings (deadAfter 3 s)")
                #expect(client.log.closes.isEmpty)
                socket.loop.execute { socket.send(text: "alive") }
                #expect(await eventually { client.log.texts == ["alive"] })
                socket.loop.execute { socket.close(code: 1000) }
                #expect(await eventually { server.log.closes.map(\.code) == [1000] })
            }
        }

        @Test("an upgrade answered with 404 fails with .rejected")
        func rejected() async throws {
            try await withServer { server in
                let group = makeClientGroup()
                let result = await connectClient(port: server.port, path: "/nope", loop: group.next(), handler: ClientHandler())
                guard case .failure(.rejected(let status, let body)) = result else {
                    Issue.record("expected .rejected, got \(result)")
                    return
                }
                #expect(status == 404)
                #expect(body.contains("/nope"))
            }
        }

        @Test("connecting to a port nobody listens on fails with .connectFailed")
        func connectRefused() async throws {
            let port = try unusedPort()
            let group = makeClientGroup()
            let result = await connectClient(port: port, loop: group.next(), handshakeTimeout: .seconds(5),
                                             handler: ClientHandler())
            guard case .failure(.connectFailed) = result else {
                Issue.record("expected .connectFailed, got \(result)")
                return
            }
        }

        @Test("a server that accepts but never answers the upgrade fails with .timedOut")
        func handshakeTimeout() async throws {
            let (listener, port) = try silentListener()
            defer { close(listener) }
            let group = makeClientGroup()
            let result = await connectClient(port: port, loop: group.next(), handshakeTimeout: .milliseconds(300),
                                             handler: ClientHandler())
            #expect(result == .failure(.timedOut))
        }

        @Test("closeAllConnections on the server: the client handler hears 1001")
        func closeAllReachesClient() async throws {
            let server = try TestServer()
            let group = makeClientGroup()
            let client = ClientHandler()
            _ = try await connectClient(port: server.port, loop: group.next(), handler: client).get()
            #expect(await eventually { server.openConnections == 1 })
            await server.closeAll(code: 1001, reason: "going away", timeout: .seconds(5))
            #expect(server.openConnections == 0)
            #expect(client.log.closes.map(\.code) == [1001])
            #expect(client.log.closes.first?.reason == "going away")
            await server.shutdown()
        }

        @Test("closeAllConnections closes only the server's own connections, not others on its loops")
        func closeAllSparesOtherConnectionsOnTheSameGroup() async throws {
            // One group shared by two servers and a client, as a process with an admin listener or a
            // test with an in-process client would have it.
            let shared = makeClientGroup()
            let closing = try TestServer(group: shared)
            let bystander = try TestServer(group: shared)
            let client = ClientHandler()
            let socket = try await connectClient(port: bystander.port, loop: shared.next(), handler: client).get()
            #expect(await eventually { bystander.openConnections == 1 })
            #expect(closing.openConnections == 0)

            await closing.closeAll(code: 1001, reason: "only mine", timeout: .seconds(2))
            try await Task.sleep(for: .milliseconds(200))
            #expect(client.log.closes.isEmpty)
            #expect(bystander.log.closes.isEmpty)
            #expect(bystander.openConnections == 1)
            socket.loop.execute { socket.close(code: 1000) }
            #expect(await eventually { bystander.openConnections == 0 })
            await bystander.shutdown()
            await closing.shutdown()
        }
    }
}

extension Result where Success == WebSocketConnection, Failure == WebSocketClientError {
    static func == (lhs: Self, rhs: Self) -> Bool {
        switch (lhs, rhs) {
        case (.failure(let a), .failure(let b)): return a == b
        case (.success(let a), .success(let b)): return a === b
        default: return false
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound, then closed).
func unusedPort() throws -> UInt16 {
    let (fd, port) = try silentListener()
    close(fd)
    return port
}

/// A listening socket on 127.0.0.1 that never accepts: connects complete in the backlog and hear nothing.
func silentListener() throws -> (Int32, UInt16) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw TestClientError("socket: errno \(errno)") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && listen(fd, 16) == 0 && getsockname(fd, $0, &length) == 0
        }
    }
    guard ok else {
        close(fd)
        throw TestClientError("bind/listen: errno \(errno)")
    }
    return (fd, UInt16(bigEndian: address.sin_port))
}
