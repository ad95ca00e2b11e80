import Foundation
import LeaseProtocol
@testable import LeaseholdServer
import Testing

/// The findings of the hostile-input pass (issue "Hardening and security"), each with the input
/// that broke the server before its fix.
@Suite struct HardeningTests {
    static let upgrade: [(String, String)] = [
        ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"),
    ]

    // MARK: markup injection

    /// Quotes and brackets followed by a combining mark (U+0301) or preceded by a
    /// prepended-concatenation mark (U+0600) form one Character with it.
    static let injections = [
        "\"\u{0301}><meta http-equiv=refresh content=0;url=https://phish.example>",
        "<\u{0301}script>",
        "\u{0600}\"><b>x</b>",
        "'\u{20DD} onmouseover='alert(1)",
    ]

    @Test(arguments: injections)
    func escapingWorksOnScalarsNotCharacters(_ text: String) {
        let escaped = StatusPage.escape(text)
        for forbidden: Unicode.Scalar in ["<", ">", "\"", "'"] {
            #expect(!escaped.unicodeScalars.contains(forbidden), "\(forbidden) left in \(escaped.debugDescription)")
        }
    }

    @Test func aHolderNameCannotInjectMarkupIntoThePage() async throws {
        let server = try TestServer()
        let holder = "\"\u{0301}><meta http-equiv=refresh content=0;url=https://phish.example>"
        let (client, _) = try await server.hold(#"[{"name":"switch-01"}]"#, holder: holder)
        let page = try await server.http("GET", "/")
        #expect(page.status == 200)
        #expect(!page.body.contains("<meta http-equiv=refresh"))
        #expect(page.body.contains("&lt;meta http-equiv=refresh"))
        client.close()
        await server.stop()
    }

    @Test func theFilterInALinkCannotInjectMarkup() async throws {
        let server = try TestServer()
        // ?q="́><meta …> percent-encoded, as a link would carry it.
        let query = StatusPage.formEncode("\"\u{0301}><meta http-equiv=refresh content=0;url=https://phish.example>")
        let page = try await server.http("GET", "/?q=" + query)
        #expect(page.status == 200)
        #expect(!page.body.contains("<meta http-equiv=refresh"))
        let policy = page.header("Content-Security-Policy") ?? ""
        for directive in ["base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'", "default-src 'none'"] {
            #expect(policy.contains(directive), "CSP lacks \(directive): \(policy)")
        }
        await server.stop()
    }

    @Test func metricLabelsEscapeByScalar() {
        #expect(Metrics.escape("a\"\u{0301}b\r\nc") == "a\\\"\u{0301}b\r\\nc")
    }

    // MARK: YAML aliases

    static let billionLaughs = """
        a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
        b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
        c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
        d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
        e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
        f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
        g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
        h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
        i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
        resources:
          - name: s1
            type: switch
            attributes: {bomb: *i}
        """

    @Test func anInventoryWithAliasesIsRefusedWithTheLine() {
        #expect(throws: InventoryError.self) { try InventoryFile.parse(Self.billionLaughs) }
        do {
            _ = try InventoryFile.parse(Self.billionLaughs)
        } catch {
            #expect(error.line == 1)
            #expect(error.problem.contains("anchors and aliases"))
        }
        let nested = """
            resources:
              - &r {name: s1, type: switch}
              - *r
            """
        #expect(throws: InventoryError.self) { try InventoryFile.parse(nested) }
    }

    @Test func reloadingABillionLaughsFileIsRefusedAndChangesNothing() async throws {
        let server = try TestServer()
        let (client, granted) = try await server.hold(#"[{"name":"switch-01"}]"#)
        try server.rewriteInventory(Self.billionLaughs)
        let response = try await server.reloadViaHTTP()
        #expect(response.status == 400)
        #expect(response.body.contains("aliases"))
        let resource = try await server.resource("switch-01")
        #expect(resource["lease"] == granted["lease"], "the lease survives a refused reload")
        #expect(try await server.status()["resources"]?.arrayValue?.count == 5)
        client.close()
        await server.stop()
    }

    @Test(arguments: [
        "resources:\n  - name: s1\n    name: s2\n    type: switch\n    attributes: {password: SECRET-VALUE}\n",
        "resources:\n  - name: s1\n    type: switch\n    attributes: {password: SECRET-VALUE}\n  - name: [unclosed\n",
    ])
    func aRefusedReloadNamesTheProblemWithoutEchoingTheFile(_ text: String) async throws {
        let server = try TestServer()
        try server.rewriteInventory(text)
        let response = try await server.reloadViaHTTP()
        #expect(response.status == 400)
        #expect(response.body.contains("line "), "\(response.body)")
        #expect(!response.body.contains("SECRET-VALUE"), "\(response.body)")
        #expect(response.body.utf8.count < 400, "\(response.body)")
        await server.stop()
    }

    @Test func deeplyNestedYAMLIsRefusedNotACrash() {
        let depth = 100_000
        let text = "resources: " + String(repeating: "[", count: depth) + String(repeating: "]", count: depth) + "\n"
        #expect(throws: InventoryError.self) { try InventoryFile.parse(text) }
    }

    // MARK: origins and hosts

    @Test(arguments: ["/v1/lease", "/v1/watch"])
    func foreignAndNullOriginsAreRefusedOnEveryWebSocketEndpoint(_ path: String) async throws {
        let server = try TestServer()
        for origin in ["https://evil.example", "null", "http://127.0.0.1:1"] {
            let answer = try await server.http("GET", path, headers: Self.upgrade + [("Origin", origin)])
            #expect(answer.status == 403, "\(path) with Origin \(origin): \(answer.status)")
            #expect(answer.body.contains("--allow-origin"))
        }
        // The server's own pages, and tools that send no Origin, are served.
        let own = try await WSClient.connect(port: server.port, path: path, headers: [("Origin", "http://127.0.0.1:\(server.port)")])
        let tool = try await WSClient.connect(port: server.port, path: path)
        own.close()
        tool.close()
        await server.stop()
    }

    @Test func allowedOriginsMayLeaseAndNullOnlyWhenListed() async throws {
        let server = try TestServer { $0.allowedOrigins = ["https://ci.example", "*"] }
        let listed = try await WSClient.connect(port: server.port, path: "/v1/lease", headers: [("Origin", "https://ci.example")])
        listed.close()
        let any = try await WSClient.connect(port: server.port, path: "/v1/lease", headers: [("Origin", "https://other.example")])
        any.close()
        let null = try await server.http("GET", "/v1/lease", headers: Self.upgrade + [("Origin", "null")])
        #expect(null.status == 403, "'*' does not cover null")
        await server.stop()
        let nullServer = try TestServer { $0.allowedOrigins = ["null"] }
        let allowed = try await WSClient.connect(port: nullServer.port, path: "/v1/watch", headers: [("Origin", "null")])
        allowed.close()
        await nullServer.stop()
    }

    @Test func aRebindingHostIsRefusedEvenWithAMatchingOrigin() async throws {
        let server = try TestServer()
        let rebound = [("Host", "evil.example:\(server.port)"), ("Origin", "http://evil.example:\(server.port)")]
        #expect(try await server.http("GET", "/v1/watch", headers: Self.upgrade + rebound).status == 403)
        #expect(try await server.http("GET", "/v1/lease", headers: Self.upgrade + rebound).status == 403)
        let status = try await server.http("GET", "/v1/status", headers: [("Host", "evil.example")])
        #expect(status.status == 403)
        #expect(status.body.contains("--allow-host"))
        #expect(try await server.http("GET", "/", headers: [("Host", "evil.example")]).status == 403)
        // Addresses, localhost and the configured names are served; health checks from anywhere.
        for host in ["127.0.0.1:\(server.port)", "[::1]:\(server.port)", "localhost:\(server.port)", "LOCALHOST"] {
            #expect(try await server.http("GET", "/v1/status", headers: [("Host", host)]).status == 200, "\(host)")
        }
        #expect(try await server.http("GET", "/healthz", headers: [("Host", "evil.example")]).status == 200)
        await server.stop()
        let named = try TestServer { $0.allowedHosts = ["Lab.Example"] }
        #expect(try await named.http("GET", "/v1/status", headers: [("Host", "lab.example:7400")]).status == 200)
        #expect(try await named.http("GET", "/v1/status", headers: [("Host", "evil.example")]).status == 403)
        await named.stop()
    }

    // MARK: smaller findings

    @Test func aBadMessagePipelinedBehindTheAcquireIsAnsweredAfterTheGrant() async throws {
        let server = try TestServer()
        let raw = try await RawWebSocket(port: server.port)
        let acquire = RawWebSocket.frame(opcode: 0x1, payload: Array(acquireJSON(#"[{"name":"switch-01"}]"#).utf8), fin: true, rsv: 0, masked: true)
        let bad = RawWebSocket.frame(opcode: 0x1, payload: Array(#"{"op":"grab"}"#.utf8), fin: true, rsv: 0, masked: true)
        raw.socket.write(acquire + bad)  // one segment: the server reads both in one turn
        let first = try #require(await raw.readText())
        #expect(first.contains("\"granted\""), "first answer: \(first)")
        let second = try #require(await raw.readText())
        #expect(second.contains("bad_request"), "second answer: \(second)")
        #expect(try await server.resource("switch-01")["state"] == .string("held"))
        raw.socket.close()
        await server.stop()
    }

    @Test func anUndecodableAdminNameIs401WithoutTheTokenAnd404WithIt() async throws {
        let server = try TestServer()
        let path = "/v1/resources/%ZZ/free"
        #expect(try await server.http("POST", path).status == 401)
        #expect(try await server.http("POST", path, headers: [("Authorization", "Bearer wrong")]).status == 401)
        #expect(try await server.http("POST", path, headers: [("Authorization", "Bearer secret")]).status == 404)
        #expect(try await server.http("GET", "/v1/resources/switch-01/free").status == 405)
        await server.stop()
    }

    // MARK: names by scalars

    @Test("two spellings of one name are two resources; two spellings of one label key are refused, not merged")
    func unicodeSpellingsAreKeptApartOrRefused() throws {
        let names = try InventoryFile.parse("resources:\n  - {name: \"arr\u{E9}\", type: x}\n  - {name: \"arre\u{301}\", type: x}\n")
        #expect(names.count == 2)
        #expect {
            _ = try InventoryFile.parse("resources:\n  - {name: a, type: x, labels: {\"\u{E9}\": \"1\", \"e\u{301}\": \"2\"}}\n")
        } throws: { error in
            // Yams's own check may see it first ("duplicate key"); either way the file is refused.
            "\(error)".contains("differ only in Unicode normalization") || "\(error)".contains("duplicate key")
        }
        let request = Array(#"{"op":"acquire","want":[{"type":"x","labels":{"\#u{E9}":"1","e\#u{301}":"2"}}]}"#.utf8)
        guard case .failure(let error) = ClientMessage.parse(request) else {
            Issue.record("labels with both spellings of a key were accepted")
            return
        }
        #expect(error.message.contains("differ only in Unicode normalization"))
    }

    // MARK: limits

    @Test func connectionsPastTheLimitsAreRefusedBeforeAnyUpgradeAndOthersGoOn() async throws {
        let server = try TestServer { $0.maxConnectionsPerAddress = 2 }
        let (first, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (second, _) = try await server.queue(#"[{"name":"switch-01"}]"#)
        let refused = try RawSocket(port: server.port)
        let head = try #require(await blocking { refused.readHead() }, "no answer past the per-address limit")
        #expect(head.hasPrefix("HTTP/1.1 429"), "\(head)")
        refused.close()
        // The two connections are as they were: the lease hands on.
        first.close()
        try await nextGrant(second)
        second.close()
        await server.stop()

        let small = try TestServer { $0.maxConnections = 1 }
        let (only, _) = try await small.hold(#"[{"name":"switch-01"}]"#)
        let over = try RawSocket(port: small.port)
        let overHead = try #require(await blocking { over.readHead() })
        #expect(overHead.hasPrefix("HTTP/1.1 503"), "\(overHead)")
        over.close()
        only.close()
        await small.stop()
    }

    @Test func watchersPastTheirLimitCloseWith1013() async throws {
        let server = try TestServer { $0.maxWatchers = 1 }
        let first = try await server.watch()
        try await first.expectEvent("snapshot")
        let second = try await server.watch()
        let close = try await second.expectClose()
        #expect(close.code == 1013)
        #expect(close.reason.contains("too many watchers"))
        first.close()
        _ = try await first.expectClose()
        let deadline = Date().addingTimeInterval(liveness)
        var admitted = false
        while !admitted, Date() < deadline {  // the first one's slot is given back as it closes
            let next = try await server.watch()
            if case .text = try await next.next() { admitted = true }
            next.close()
        }
        #expect(admitted)
        await server.stop()
    }

    @Test func waitersPastTheirLimitFailAtOnceSayingTheQueueIsFull() async throws {
        let server = try TestServer { $0.maxWaiters = 1 }
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#)
        let refused = try await server.acquire(#"[{"name":"switch-01"}]"#)
        let message = try await refused.expectError("wait_timeout")
        #expect(message.contains("queue is full"), "\(message)")
        #expect(try await refused.expectClose().code == 4408)
        // What can be granted at once still is.
        let (other, _) = try await server.hold(#"[{"name":"switch-02"}]"#)
        other.close()
        // A place frees when the waiter is granted.
        holder.close()
        try await nextGrant(waiter)
        let (next, _) = try await server.queue(#"[{"name":"switch-01"}]"#)
        next.close()
        waiter.close()
        await server.stop()
    }
}
