// Edge cases found while reading the transport: each names the behaviour it pins down.
import TransportTesting
import Testing
import Transport
import WebSocketCodec
#if canImport(Glibc)
import Glibc
#endif

extension TransportIntegration {
    @Suite("Edge cases")
    struct EdgeCaseTests {
        @Test("connections over maxConnections get 503 and are closed; a freed slot is reused")
        func connectionLimit() async throws {
            try await withServer(configure: { $0.maxConnections = 2 }) { server in
                let first = try await RawWebSocket(port: server.port)
                let second = try await RawWebSocket(port: server.port)
                #expect(await eventually { server.openConnections == 2 })
                let refused = try await TestSocket(port: server.port)  // the kernel completes the TCP handshake
                #expect(try await refused.readHTTPResponse().status == 503)
                #expect(server.openConnections == 2)
                try await first.closeHandshake()
                #expect(await eventually { server.openConnections == 1 })
                let third = try await RawWebSocket(port: server.port)
                try await third.send(text: "in")
                #expect(try await third.nextMessage().textValue == "in")
                try await third.closeHandshake()
                try await second.closeHandshake()
            }
        }

        @Test("one address past maxConnectionsPerAddress gets 429; the others' connections go on")
        func perAddressLimit() async throws {
            try await withServer(configure: { $0.maxConnectionsPerAddress = 1 }) { server in
                let first = try await RawWebSocket(port: server.port)
                #expect(await eventually { server.openConnections == 1 })
                let refused = try await TestSocket(port: server.port)
                let answer = try await refused.readHTTPResponse()
                #expect(answer.status == 429)
                try await first.send(text: "still here")
                #expect(try await first.nextMessage().textValue == "still here")
                try await first.closeHandshake()
                #expect(await eventually { server.openConnections == 0 })
                let next = try await RawWebSocket(port: server.port)  // the address's slot came back
                try await next.closeHandshake()
            }
        }

        @Test("accepted sockets carry keepalive and TCP_USER_TIMEOUT from deadAfter, so a cut link fails them")
        func deadPeerSocketOptions() async throws {
            try await withServer(configure: { $0.webSocket.deadAfter = .seconds(9) }) { server in
                let client = try await TestSocket(port: server.port)
                #expect(await eventually { server.openConnections == 1 })
                // The server's end of this connection: the socket in this process whose peer is our local port.
                var local = sockaddr_in()
                var length = socklen_t(MemoryLayout<sockaddr_in>.size)
                _ = withUnsafeMutablePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(client.fd, $0, &length) } }
                let serverFD = try #require(Self.socket(where: { fd in
                    var peer = sockaddr_in()
                    var peerLength = socklen_t(MemoryLayout<sockaddr_in>.size)
                    let found = withUnsafeMutablePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &peerLength) } }
                    return found == 0 && peer.sin_port == local.sin_port && fd != client.fd
                }), "no server-side socket found")
                func option(_ level: Int32, _ name: Int32) -> Int32 {
                    var value: Int32 = -1
                    var size = socklen_t(MemoryLayout<Int32>.size)
                    getsockopt(serverFD, level, name, &value, &size)
                    return value
                }
                #expect(option(SOL_SOCKET, SO_KEEPALIVE) == 1)
                #expect(option(Int32(IPPROTO_TCP), TCP_USER_TIMEOUT) == 9000)
                #expect(option(Int32(IPPROTO_TCP), TCP_KEEPIDLE) == 3)
                #expect(option(Int32(IPPROTO_TCP), TCP_KEEPINTVL) == 1)
                #expect(option(Int32(IPPROTO_TCP), TCP_KEEPCNT) == 3)
                client.closeNow()
            }
        }

        /// The first descriptor of this process (from /proc/self/fd) for which `matches` holds.
        static func socket(where matches: (Int32) -> Bool) -> Int32? {
            guard let directory = opendir("/proc/self/fd") else { return nil }
            defer { closedir(directory) }
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if let fd = Int32(name), matches(fd) { return fd }
            }
            return nil
        }

        @Test("a head trickled in, byte by byte, for longer than requestHeadTimeout gets 408")
        func slowlorisGets408() async throws {
            let clock = ManualClock()
            try await withServer(clock: clock, configure: { $0.requestHeadTimeout = .seconds(4) }) { server in
                let socket = try await TestSocket(port: server.port)
                // A byte a second, each read by the server before time moves on: a deadline that
                // each byte pushed back would never come.
                var sent = 0
                let head = Array("GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: \(String(repeating: "s", count: 200))".utf8)
                while sent < 4 {
                    let heard = server.group.bytesRead
                    try await socket.send([head[sent]])
                    sent += 1
                    #expect(await eventually { server.group.bytesRead > heard })
                    clock.advance(by: .seconds(1))
                }
                let answer = try await socket.readHTTPResponse()
                #expect(answer.status == 408)
            }
        }

        @Test("browser-style headers upgrade: Connection: keep-alive, Upgrade and Upgrade: WebSocket")
        func browserStyleUpgrade() async throws {
            try await withServer { server in
                let socket = try await TestSocket(port: server.port)
                let key = WebSocketHandshake.makeClientKey()
                try await socket.send("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive, Upgrade\r\n"
                                + "Upgrade: WebSocket\r\nSec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\n\r\n")
                let answer = try await socket.readHTTPResponse()
                #expect(answer.status == 101)
                #expect(answer.header("Sec-WebSocket-Accept") == WebSocketHandshake.acceptValue(forKey: key))
            }
        }

        @Test("an upgrade with POST is refused with 405")
        func upgradeWithPost() async throws {
            try await withServer { server in
                let socket = try await TestSocket(port: server.port)
                let request = RawWebSocket.upgradeRequest(port: server.port)
                try await socket.send("POST" + request.dropFirst(3))
                let answer = try await socket.readHTTPResponse()
                #expect(answer.status == 405)
            }
        }

        @Test("invalid close frames and oversized pings are closed with 1002", arguments: [
            ("close code 1005 on the wire", RawWebSocket.frame(.close, [0x03, 0xED])),
            ("close code 999", RawWebSocket.frame(.close, [0x03, 0xE7])),
            ("one-byte close payload", RawWebSocket.frame(.close, [0x03])),
            ("ping with a 126-byte payload", [0x89, 0xFE, 0x00, 0x7E, 1, 2, 3, 4] + [UInt8](repeating: 0, count: 126)),
            ("fragmented ping", [0x09, 0x80, 1, 2, 3, 4]),
            ("reserved bit RSV1 without an extension", [0xC1, 0x80, 1, 2, 3, 4]),
            ("reserved opcode 3", [0x83, 0x80, 1, 2, 3, 4]),
        ])
        func invalidControlFrames(name: String, bytes: [UInt8]) async throws {
            try await withServer { server in
                let socket = try await RawWebSocket(port: server.port)
                try await socket.socket.send(bytes)
                #expect(try await socket.expectClose().code == 1002, "\(name)")
                #expect(try await socket.readUntilEnd() == .endOfFile)
            }
        }

        @Test("a reply larger than maxOutputBytes to a peer that reads is delivered, not cut off")
        func replyLargerThanOutputBoundWhilePeerReads() async throws {
            try await withServer(configure: { $0.maxOutputBytes = 64 * 1024 }) { server in
                let socket = try await RawWebSocket(port: server.port)
                let payload = [UInt8](repeating: 0x42, count: 100 * 1024)
                try await socket.send(binary: payload)
                // The peer is reading and the kernel can take 100 KiB at once on loopback; a reply
                // written inside the read callback (corked) must be judged after the write, not before.
                #expect(try await socket.nextMessage() == .binary(payload))
                try await socket.closeHandshake()
            }
        }

        @Test("a Connection: close response larger than the socket buffers reaches a reader that starts late")
        func gracefulCloseDoesNotTruncate() async throws {
            try await withServer(configure: { $0.maxOutputBytes = 32 << 20 }) { server in
                let size = 12 << 20
                let socket = try await TestSocket(port: server.port)
                try await socket.send("GET /big/\(size) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                // The first bytes mean the server has queued the whole response and closed gracefully.
                try await socket.fill(to: 1)
                try await Task.sleep(for: .milliseconds(2500))  // longer than Connection.drainTimeout (2 s)
                let answer = try await socket.readHTTPResponse()
                #expect(answer.body.count == size)
                #expect(try await socket.readUntilEnd() == .endOfFile)
            }
        }

        @Test("a HEAD response carries no body, so the next response on the connection is intact")
        func headHasNoBody() async throws {
            try await withServer { server in
                let socket = try await TestSocket(port: server.port)
                try await socket.send("HEAD /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /r/next HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                // Read the HEAD answer's head only.
                try await socket.fill(to: 1)
                while !String(decoding: socket.pending, as: UTF8.self).contains("\r\n\r\n") {
                    if let end = try await socket.readOnce() { throw TestClientError("ended \(end)") }
                }
                let text = String(decoding: socket.pending, as: UTF8.self)
                let headEnd = text.utf8.count - (text.split(bySeparator: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n").utf8.count)
                _ = socket.take(headEnd)
                let next = try await socket.readHTTPResponse()
                #expect(next.bodyText == "/r/next")
            }
        }

        @Test("a request followed at once by the client's FIN is still answered")
        func halfCloseAfterRequest() async throws {
            try await withServer { server in
                let socket = try await TestSocket(port: server.port)
                try await socket.send("GET /delay/20/one HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /r/two HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                socket.shutdownWrite()
                #expect(try await socket.readHTTPResponse().bodyText == "one")
                #expect(try await socket.readHTTPResponse().bodyText == "/r/two")
                #expect(try await socket.readUntilEnd() == .endOfFile)
            }
        }

        @Test("pipelined requests filling whole 64 KiB reads, then FIN: every request is still answered")
        func halfCloseAfterFullBuffers() async throws {
            try await withServer { server in
                // 131,072 bytes = two full reads of the loop's 64 KiB buffer. The first read holds a
                // complete request, so reading pauses while it is answered; if reading goes on in the
                // same wake-up anyway, the third read sees EOF and the connection ends unanswered.
                let first = Array("GET /delay/20/one HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8)
                let headLength = Array("POST /body HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 00000000\r\n\r\n".utf8).count
                let bodyLength = 131_072 - first.count - headLength
                let digits = String(bodyLength)
                let second = Array("POST /body HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: \(String(repeating: "0", count: 8 - digits.count))\(digits)\r\n\r\n".utf8)
                let bytes = first + second + [UInt8](repeating: 0x61, count: bodyLength)
                try #require(bytes.count == 131_072)
                let socket = try await TestSocket(port: server.port)
                try await socket.send(bytes)
                socket.shutdownWrite()
                let one = try await socket.readHTTPResponse()
                let two = try await socket.readHTTPResponse()
                #expect(one.bodyText == "one")
                #expect(two.body.count == bodyLength)
            }
        }
    }
}
