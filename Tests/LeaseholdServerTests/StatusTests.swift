import Foundation
import LeaseProtocol
import LeaseholdServer
import Testing
import Transport

/// `/v1/watch`, `/v1/status`, `/healthz`, `/metrics`, `/` and shutdown.
@Suite struct StatusTests {
    static let isoPattern = #"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"#

    static func isTimestamp(_ value: JSONValue?) -> Bool {
        guard let text = value?.stringValue else { return false }
        return text.range(of: isoPattern, options: .regularExpression) != nil
    }

    @Test func aDisabledResourceSaysWhyAndSinceWhenAndAWaiterUntilWhen() async throws {
        let server = try TestServer()
        #expect(try await server.admin("disable", "array-03", reason: "firmware upgrade").status == 200)
        #expect(try await server.admin("disable", "switch-02").status == 200)
        let (holder, granted) = try await server.hold(#"[{"name":"switch-01"}]"#)
        #expect(try await server.admin("disable", "switch-01", reason: "cable swap").status == 200)
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#, wait: "600")
        let document = try await server.status()
        let resources = document["resources"]?.arrayValue ?? []
        func entry(_ name: String) -> JSONValue? { resources.first { $0["name"] == .string(name) } }
        #expect(entry("array-03")?["disabled"]?["reason"] == .string("firmware upgrade"))
        #expect(Self.isTimestamp(entry("array-03")?["disabled"]?["since"]))
        #expect(entry("switch-02")?["disabled"]?["reason"] == .string("disabled by an admin"))
        #expect(entry("switch-01")?["state"] == .string("held"), "a held resource that is disabled stays held")
        #expect(entry("switch-01")?["disabled"]?["reason"] == .string("cable swap"))
        let queued = try #require(document["queue"]?.arrayValue?.first)
        #expect(Self.isTimestamp(queued["until"]))
        #expect(queued["blocked_by"] == .array([granted["lease"] ?? .null]))
        // Enabled again: the key goes.
        #expect(try await server.admin("enable", "array-03").status == 200)
        #expect(try await server.resource("array-03")["disabled"] == nil)
        for client in [holder, waiter] { client.close() }
        await server.stop()
    }

    @Test func getAdminSaysWhetherATokenIsTheAdminTokenAndChangesNothing() async throws {
        let server = try TestServer()
        let right = try await server.http("GET", "/v1/admin", headers: [("Authorization", "Bearer secret")])
        #expect(right.status == 200)
        #expect(try JSONValue.parse(right.body)["ok"] == .bool(true))
        #expect(try await server.http("GET", "/v1/admin", headers: [("Authorization", "Bearer wrong")]).status == 401)
        #expect(try await server.http("GET", "/v1/admin").status == 401)
        #expect(try await server.http("POST", "/v1/admin").status == 405)
        await server.stop()
        let closed = try TestServer(token: nil)
        #expect(try await closed.http("GET", "/v1/admin", headers: [("Authorization", "Bearer secret")]).status == 403)
        await closed.stop()
    }

    @Test func watchSendsASnapshotAtOnceAndAgainAfterAChange() async throws {
        let server = try TestServer()
        let watcher = try await server.watch()
        let first = try await watcher.expectEvent("snapshot")
        #expect(first["leases"] == .array([]))
        #expect(first["queue"] == .array([]))
        let (holder, granted) = try await server.hold(#"[{"name":"array-02"}]"#, holder: "ci/nightly-1234")
        var snapshot = try await watcher.expectEvent("snapshot")
        // Coalesced snapshots may show an intermediate state first; the latest shows the lease.
        while snapshot["leases"]?.arrayValue?.isEmpty == true {
            snapshot = try await watcher.expectEvent("snapshot")
        }
        let lease = try #require(snapshot["leases"]?.arrayValue?.first)
        #expect(lease["id"] == granted["lease"])
        #expect(lease["resources"] == .array([.string("array-02")]))
        holder.close()
        snapshot = try await watcher.expectEvent("snapshot")
        while snapshot["leases"]?.arrayValue?.isEmpty == false {
            snapshot = try await watcher.expectEvent("snapshot")
        }
        watcher.close()
        await server.stop()
    }

    @Test func theSnapshotHasTheDocumentedShape() async throws {
        let server = try TestServer()
        let (holder, granted) = try await server.hold(#"[{"name":"switch-01"}]"#, holder: "ci/nightly-1234")
        let (waiter, queued) = try await server.queue(#"[{"name":"switch-01"},{"name":"switch-02"}]"#, holder: "waiter",
                                                      extra: #""meta":{"job":"j"}"#)
        let (second, secondQueued) = try await server.queue(#"[{"type":"array","labels":{"proto":"fc"},"count":2},{"name":"switch-02"}]"#,
                                                            holder: "second")
        _ = second
        let watcher = try await server.watch()
        let document = try await watcher.expectEvent("snapshot")

        #expect(document.objectKeys.map(Set.init) == ["event", "resources", "leases", "queue", "server"])
        #expect(document["server"]?["version"] == .string(leaseholdVersion))
        #expect(Self.isTimestamp(document["server"]?["started"]))
        let resources = try #require(document["resources"]?.arrayValue)
        #expect(resources.compactMap { $0["name"]?.stringValue } == ["array-01", "array-02", "array-03", "switch-01", "switch-02"],
                "resources in inventory order")
        for resource in resources {
            #expect(Set(resource.objectKeys ?? []).isSuperset(of: ["name", "type", "labels", "attributes", "state", "lease", "holder", "epoch", "since"]))
            #expect(Self.isTimestamp(resource["since"]), "since: \(resource.serialized())")
        }
        func entry(_ name: String) -> JSONValue? { resources.first { $0["name"] == .string(name) } }
        #expect(entry("array-01")?["attributes"]?["mgmt"] == .string("10.0.0.11"))
        #expect(entry("array-01")?["labels"]?["proto"] == .string("fc"))
        #expect(entry("switch-01")?["state"] == .string("held"))
        #expect(entry("switch-01")?["lease"] == granted["lease"])
        #expect(entry("switch-01")?["holder"] == .string("ci/nightly-1234"))
        #expect(entry("switch-01")?["epoch"] == .int(1))
        #expect(entry("switch-02")?["state"] == .string("reserved"))
        #expect(entry("switch-02")?["lease"] == queued["lease"])
        #expect(entry("switch-02")?["holder"] == .string("waiter"))
        #expect(entry("array-01")?["state"] == .string("reserved"), "the second waiter collects what it can use")
        #expect(entry("array-01")?["lease"] == secondQueued["lease"])
        #expect(entry("array-03")?["state"] == .string("free"))
        #expect(entry("array-03")?["lease"] == .null)
        #expect(entry("array-03")?["holder"] == .null)
        #expect(entry("array-03")?["epoch"] == .int(0))

        let leases = try #require(document["leases"]?.arrayValue)
        #expect(leases.count == 1, "leases lists granted leases only")
        let lease = try #require(leases.first)
        #expect(Set(lease.objectKeys ?? []).isSuperset(of: ["id", "holder", "peer", "state", "resources", "meta", "since"]))
        #expect(lease["id"] == granted["lease"])
        #expect(lease["holder"] == .string("ci/nightly-1234"))
        #expect(lease["peer"]?.stringValue?.hasPrefix("127.0.0.1:") == true)
        #expect(lease["state"] == .string("granted"))
        #expect(lease["resources"] == .array([.string("switch-01")]))
        #expect(lease["meta"] == .object([]))
        #expect(Self.isTimestamp(lease["since"]))

        let queue = try #require(document["queue"]?.arrayValue)
        #expect(queue.count == 2)
        #expect(queue.map { $0["id"] } == [queued["lease"], secondQueued["lease"]], "queue in arrival order")
        #expect(queue.map { $0["position"] } == [.int(1), .int(2)])
        for waiting in queue {
            #expect(Set(waiting.objectKeys ?? []).isSuperset(of: ["id", "holder", "position", "want", "since"]))
            #expect(Self.isTimestamp(waiting["since"]))
        }
        #expect(queue[0]["holder"] == .string("waiter"))
        #expect(queue[0]["blocked_by"] == .array([granted["lease"] ?? .null]), "switch-01 is held by the first lease")
        #expect(queue[1]["blocked_by"] == .array([]), "switch-02 is only reserved, for an earlier waiter: not listed")
        #expect(queue.allSatisfy { $0["until"] == .null }, "neither gives up by itself")
        #expect(resources.allSatisfy { $0["disabled"] == nil }, "no resource is disabled")
        #expect(queue[0]["meta"]?["job"] == .string("j"))
        #expect(queue[0]["want"]?.arrayValue?.count == 2)
        #expect(queue[0]["want"]?.arrayValue?.first?["name"] == .string("switch-01"))
        let group = queue[1]["want"]?.arrayValue?.first
        #expect(group?["type"] == .string("array"))
        #expect(group?["count"] == .int(2))
        #expect(group?["labels"]?["proto"] == .string("fc"))

        // GET /v1/status is the same document.
        let status = try await server.status()
        #expect(status == document)
        for client in [holder, waiter, second, watcher] { client.close() }
        await server.stop()
    }

    @Test func watchFromAForeignOriginIsRefusedAndTheSameHostIsAccepted() async throws {
        let server = try TestServer()
        let foreign = try await WSClient.connectResult(port: server.port, path: "/v1/watch", headers: [("Origin", "https://evil.example")])
        guard case .failure(.rejected(let status, _)) = foreign else {
            Issue.record("a foreign origin was not refused: \(foreign)")
            return
        }
        #expect(status == 403)
        let sameHost = try await WSClient.connect(port: server.port, path: "/v1/watch",
                                                  headers: [("Origin", "http://127.0.0.1:\(server.port)")])
        try await sameHost.expectEvent("snapshot")
        sameHost.close()
        // Non-browser clients send no Origin.
        let tool = try await server.watch()
        try await tool.expectEvent("snapshot")
        tool.close()
        await server.stop()
    }

    @Test func allowedOriginsAreAccepted() async throws {
        let server = try TestServer { $0.allowedOrigins = ["https://dash.example"] }
        let allowed = try await WSClient.connect(port: server.port, path: "/v1/watch", headers: [("Origin", "https://dash.example")])
        try await allowed.expectEvent("snapshot")
        allowed.close()
        let other = try await WSClient.connectResult(port: server.port, path: "/v1/watch", headers: [("Origin", "https://evil.example")])
        guard case .failure(.rejected(403, _)) = other else {
            Issue.record("expected 403, got \(other)")
            return
        }
        await server.stop()
    }

    @Test func healthzStatusPageAndUnknownRoutes() async throws {
        let server = try TestServer()
        let health = try await server.http("GET", "/healthz")
        #expect(health.status == 200)
        #expect(health.body.trimmingCharacters(in: .whitespacesAndNewlines) == "ok")
        let page = try await server.http("GET", "/")
        #expect(page.status == 200)
        #expect(page.header("Content-Type")?.contains("text/html") == true)
        // PROTOCOL.md: "the status page (HTML, live through /v1/watch)": the page loads its
        // script, and the script opens /v1/watch.
        let scriptPath = try #require(page.body.firstMatch(of: /src="(\/static\/app\.js[^"]*)"/).map { String($0.1) })
        let script = try await server.http("GET", scriptPath.replacingOccurrences(of: "&amp;", with: "&"))
        #expect(script.status == 200)
        #expect(script.body.contains("/v1/watch"), "the status page is live through /v1/watch")
        let status = try await server.http("GET", "/v1/status")
        #expect(status.header("Content-Type")?.contains("application/json") == true)
        #expect(try await server.http("GET", "/nope").status == 404)
        #expect(try await server.http("POST", "/v1/status").status == 405)
        #expect(try await server.http("GET", "/v1/reload").status == 405)
        await server.stop()
    }

    @Test func metricsHaveEverySeriesAndTheValuesMove() async throws {
        let server = try TestServer()
        var metrics = try await server.metrics()
        for family in ["leasehold_connections": "gauge", "leasehold_leases": "gauge", "leasehold_waiters": "gauge",
                       "leasehold_grants_total": "counter", "leasehold_releases_total": "counter",
                       "leasehold_revokes_total": "counter", "leasehold_resources": "gauge",
                       "leasehold_grant_wait_seconds": "histogram"] {
            #expect(metrics.types[family.key] == family.value, "TYPE of \(family.key)")
        }
        #expect(metrics.value("leasehold_grants_total") == 0)
        #expect(metrics.value("leasehold_leases") == 0)
        #expect(metrics.value("leasehold_waiters") == 0)
        #expect(metrics.value("leasehold_revokes_total") == 0)
        #expect(metrics.value("leasehold_resources", ["type": "switch", "state": "free"]) == 2)
        #expect(metrics.value("leasehold_resources", ["type": "array", "state": "free"]) == 3)
        #expect(metrics.value("leasehold_grant_wait_seconds_count", ["type": "switch"]) == 0)

        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"},{"name":"switch-02"}]"#)
        metrics = try await server.metrics()
        #expect(metrics.value("leasehold_grants_total") == 1)
        #expect(metrics.value("leasehold_leases") == 1)
        #expect(metrics.value("leasehold_waiters") == 1)
        #expect((metrics.value("leasehold_connections") ?? 0) >= 2)
        #expect(metrics.value("leasehold_resources", ["type": "switch", "state": "held"]) == 1)
        #expect(metrics.value("leasehold_resources", ["type": "switch", "state": "reserved"]) == 1)
        #expect(metrics.value("leasehold_grant_wait_seconds_count", ["type": "switch"]) == 1)

        holder.send(#"{"op":"release"}"#)
        try await nextGrant(waiter)
        #expect(try await server.admin("disable", "array-01").status == 200)
        metrics = try await server.metrics()
        #expect(metrics.value("leasehold_grants_total") == 2)
        #expect(metrics.value("leasehold_releases_total", ["reason": "release"]) == 1)
        #expect(metrics.value("leasehold_waiters") == 0)
        #expect(metrics.value("leasehold_resources", ["type": "switch", "state": "held"]) == 2)
        #expect(metrics.value("leasehold_resources", ["type": "array", "state": "disabled"]) == 1)
        #expect(metrics.value("leasehold_grant_wait_seconds_count", ["type": "switch"]) == 2)
        let waited = metrics.value("leasehold_grant_wait_seconds_sum", ["type": "switch"]) ?? 0
        #expect(waited > 0)

        // The histogram is cumulative and its +Inf bucket is the count.
        let buckets = metrics.samples.filter { $0.name == "leasehold_grant_wait_seconds_bucket" && $0.labels["type"] == "switch" }
        #expect(buckets.count >= 2)
        #expect(zip(buckets, buckets.dropFirst()).allSatisfy { $0.value <= $1.value })
        #expect(buckets.last?.labels["le"] == "+Inf")
        #expect(buckets.last?.value == 2)

        // A dropped connection is a disconnect (a close frame with 1000 would be a release).
        waiter.abort()
        try await server.waitForStatus("no leases") { $0["leases"]?.arrayValue?.isEmpty == true }
        metrics = try await server.metrics()
        #expect(metrics.value("leasehold_releases_total", ["reason": "disconnect"]) == 1)
        #expect(metrics.value("leasehold_leases") == 0)
        await server.stop()
    }

    @Test func shutdownClosesLeaseConnectionsWith1001() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#)
        let idle = try await server.lease()
        let watcher = try await server.watch()
        try await watcher.expectEvent("snapshot")
        await server.stop()
        #expect(try await holder.expectClose().code == 1001)
        #expect(try await nextClose(waiter) == 1001)
        #expect(try await idle.expectClose().code == 1001)
        #expect(try await nextClose(watcher) == 1001)
        // No longer accepting.
        let after = try? await server.http("GET", "/healthz")
        #expect(after == nil || after?.status == 503)
    }
}

/// The close code, skipping events before it.
func nextClose(_ client: WSClient) async throws -> UInt16 {
    while true {
        if case .closed(let code, _) = try await client.next() { return code }
    }
}
