// Plain HTTP/1.1 over a real socket: errors, limits, keep-alive, pipelining.
import Testing

extension TransportIntegration {
    @Suite("HTTP/1.1 server")
    struct HTTPTests {
        @Test("a simple GET is answered")
        func simpleGet() async throws {
            try await withServer { server in
                let socket = try await TestSocket(port: server.port)
                try await socket.send("GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                let answer = try await socket.readHTTPResponse()
                #expect(answer.status == 200)
                #expect(answer.bodyText == "hello")
                #expect(answer.header("Connection") == "keep-alive")
            }
        }

        @Test("a garbage request gets 400 and the server keeps serving new connections")
        func garbageRequest() async throws {
            try await withServer { server in
                let socket = try await TestSocket(port: server.port)
                try await socket.send("GARBAGE\r\n\r\n")
                let answer = try await socket.readHTTPResponse()
                #expect(answer.status == 400)
                #expect(answer.header("Connection") == "close")
                #expect(try await socket.readUntilEnd() == .endOfFile)

                let next = try await TestSocket(port: server.port)
                try await next.send("GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                #expect(try await next.readHTTPResponse().status == 200)
            }
        }

        @Test("binary garbage (NUL bytes, no line end) gets 400 or 431, never a crash")
        func binaryGarbage() async throws {
            try await withServer(configure: { $0.maxHeadSize = 1024 }) { server in
                let socket = try await TestSocket(port: server.port)
                try await socket.send((0..<2048).map { UInt8(truncatingIfNeeded: $0 &* 7) })
                let answer = try await socket.readHTTPResponse()
                #expect([400, 431].contains(answer.status))
                let next = try await TestSocket(port: server.port)
                try await next.send("GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                #expect(try await next.readHTTPResponse().status == 200)
            }
        }

        @Test("an oversized request head gets 431, and the close is graceful (no reset)")
        func oversizedHead() async throws {
            try await withServer(configure: { $0.maxHeadSize = 4096 }) { server in
                let socket = try await TestSocket(port: server.port)
                let filler = String(repeating: "a", count: 20_000)
                try await socket.send("GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: \(filler)\r\n\r\n")
                let answer = try await socket.readHTTPResponse()
                #expect(answer.status == 431)
                #expect(try await socket.readUntilEnd() == .endOfFile)
            }
        }

        @Test("a body over maxBodySize gets 413 without the body being sent")
        func oversizedBody() async throws {
            try await withServer(configure: { $0.maxBodySize = 1000 }) { server in
                let socket = try await TestSocket(port: server.port)
                try await socket.send("POST /body HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000\r\n\r\n")
                let answer = try await socket.readHTTPResponse()
                #expect(answer.status == 413)
                #expect(try await socket.readUntilEnd() == .endOfFile)
            }
        }

        @Test("a body within maxBodySize reaches the handler whole")
        func bodyWithinLimit() async throws {
            try await withServer(configure: { $0.maxBodySize = 100_000 }) { server in
                let socket = try await TestSocket(port: server.port)
                let body = (0..<100_000).map { UInt8(truncatingIfNeeded: $0) }
                try await socket.send(Array("POST /body HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n".utf8) + body)
                let answer = try await socket.readHTTPResponse()
                #expect(answer.status == 200)
                #expect(answer.body == body)
            }
        }

        @Test("keep-alive: two requests on one connection are both answered")
        func keepAlive() async throws {
            try await withServer { server in
                let socket = try await TestSocket(port: server.port)
                try await socket.send("GET /r/one HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                let first = try await socket.readHTTPResponse()
                #expect(first.status == 200)
                #expect(first.bodyText == "/r/one")
                try await socket.send("GET /r/two HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                let second = try await socket.readHTTPResponse()
                #expect(second.bodyText == "/r/two")
                #expect(second.header("Connection") == "close")
                #expect(try await socket.readUntilEnd() == .endOfFile)
            }
        }

        @Test("pipelined requests are answered in order, even when an early one is answered late")
        func pipelined() async throws {
            try await withServer { server in
                let socket = try await TestSocket(port: server.port)
                var requests = ""
                for path in ["/delay/150/first", "/r/second", "/delay/10/third", "/r/fourth"] {
                    requests += "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                }
                try await socket.send(requests)
                var bodies: [String] = []
                for _ in 0..<4 { bodies.append(try await socket.readHTTPResponse().bodyText) }
                #expect(bodies == ["first", "/r/second", "third", "/r/fourth"])
            }
        }

        @Test("an upgrade pipelined behind a plain request happens after its answer")
        func upgradeAfterPipelinedRequest() async throws {
            try await withServer { server in
                let socket = try await TestSocket(port: server.port)
                try await socket.send("GET /delay/50/first HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                                + RawWebSocket.upgradeRequest(port: server.port))
                #expect(try await socket.readHTTPResponse().bodyText == "first")
                #expect(try await socket.readHTTPResponse().status == 101)
            }
        }

        @Test("an idle keep-alive connection is closed after keepAliveTimeout")
        func keepAliveTimeout() async throws {
            try await withServer(configure: { $0.keepAliveTimeout = .milliseconds(300) }) { server in
                let socket = try await TestSocket(port: server.port)
                try await socket.send("GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                #expect(try await socket.readHTTPResponse().status == 200)
                #expect(try await socket.readUntilEnd() == .endOfFile)
                #expect(socket.pending.isEmpty)
            }
        }
    }
}
