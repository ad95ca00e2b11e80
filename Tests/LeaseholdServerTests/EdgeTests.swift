import Foundation
import LeaseProtocol
import Testing

/// Corners of PROTOCOL.md that cross features: reload with reservations, epochs across reloads,
/// watch coalescing, hostile input.
@Suite struct EdgeTests {
    @Test func anEpochNeverRepeatsForANameEvenAcrossReloadsThatRemoveAndReAddIt() async throws {
        let server = try TestServer(inventory: ReloadTests.two)
        let (first, granted) = try await server.hold(#"[{"name":"s2"}]"#)
        #expect(granted["resources"]?.arrayValue?.first?["epoch"] == .int(1))
        first.close()
        try await server.waitForStatus("s2 free") { $0["leases"]?.arrayValue?.isEmpty == true }
        try server.rewriteInventory("resources:\n  - name: s1\n    type: switch\n")
        #expect(try await server.reloadViaHTTP().status == 200)
        try server.rewriteInventory(ReloadTests.two)
        #expect(try await server.reloadViaHTTP().status == 200)
        let (second, again) = try await server.hold(#"[{"name":"s2"}]"#)
        #expect(again["resources"]?.arrayValue?.first?["epoch"] == .int(2))
        second.close()
        await server.stop()
    }

    @Test func reloadRemovingAReservedResourceLetsTheWaiterCollectAnother() async throws {
        let server = try TestServer(inventory: ReloadTests.two)
        let (holder, _) = try await server.hold(#"[{"name":"s1"}]"#)
        let (waiter, _) = try await server.queue(#"[{"type":"switch","count":2}]"#)
        #expect(try await server.resource("s2")["state"] == .string("reserved"))
        try server.rewriteInventory("resources:\n  - name: s1\n    type: switch\n  - name: s3\n    type: switch\n")
        #expect(try await server.reloadViaHTTP().status == 200)
        #expect(try await server.resource("s3")["state"] == .string("reserved"))
        holder.close()
        let granted = try await nextGrant(waiter)
        #expect(Set(grantedNames(granted)) == ["s1", "s3"])
        waiter.close()
        await server.stop()
    }

    @Test func aWaiterForARemovedHeldResourceGetsUnsatisfiable() async throws {
        let server = try TestServer(inventory: ReloadTests.two)
        let (holder, _) = try await server.hold(#"[{"name":"s2"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"s2"}]"#)
        try server.rewriteInventory("resources:\n  - name: s1\n    type: switch\n")
        #expect(try await server.reloadViaHTTP().status == 200)
        try await waiter.expectFailure("unsatisfiable", closeCode: 4404)
        try await holder.expectSilence(0.1)
        holder.close()
        await server.stop()
    }

    @Test func disablingAReservedResourceLetsTheWaiterTakeAFreeReplacement() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"array-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"array-01"},{"type":"switch"}]"#)
        #expect(try await server.resource("switch-01")["state"] == .string("reserved"))
        #expect(try await server.admin("disable", "switch-01").status == 200)
        #expect(try await server.resource("switch-02")["state"] == .string("reserved"))
        holder.close()
        let granted = try await nextGrant(waiter)
        #expect(grantedNames(granted) == ["array-01", "switch-02"])
        waiter.close()
        await server.stop()
    }

    @Test func aResetWaiterLeavesTheQueue() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let raw = try await RawWebSocket(port: server.port)
        raw.sendText(acquireJSON(#"[{"name":"switch-01"}]"#, holder: "raw"))
        #expect(await raw.readText()?.contains("\"queued\"") == true)
        let (waiter, queued) = try await server.queue(#"[{"name":"switch-01"}]"#, holder: "second")
        #expect(queued["position"] == .int(2))
        raw.socket.reset()
        try await server.waitForStatus("the reset waiter gone") { $0["queue"]?.arrayValue?.map { $0["holder"] } == [.string("second")] }
        holder.close()
        try await nextGrant(waiter)
        waiter.close()
        await server.stop()
    }

    @Test func watchSnapshotsComeAtMostTenASecond() async throws {
        let server = try TestServer()
        let watcher = try await server.watch()
        try await watcher.expectEvent("snapshot")
        let started = Date()
        // Forty changes as fast as the server takes them.
        for _ in 0..<20 {
            let (client, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
            client.send(#"{"op":"release"}"#)
            _ = try await client.expectClose()
        }
        var snapshots = 0
        var last = JSONValue.null
        while let message = await watcher.poll(timeout: 0.5) {
            guard case .text(let text) = message else { break }
            snapshots += 1
            last = try JSONValue.parse(text)
        }
        let elapsed = Date().timeIntervalSince(started)
        #expect(snapshots >= 1)
        #expect(Double(snapshots) <= elapsed * 10 + 2, "\(snapshots) snapshots in \(elapsed) s")
        // The latest snapshot shows the final state.
        #expect(last["leases"] == .array([]))
        let entry = last["resources"]?.arrayValue?.first { $0["name"] == .string("switch-01") }
        #expect(entry?["epoch"] == .int(20))
        #expect(entry?["state"] == .string("free"))
        watcher.close()
        await server.stop()
    }

    @Test func aQueryStringOnTheLeasePathIsFine() async throws {
        let server = try TestServer()
        let client = try await WSClient.connect(port: server.port, path: "/v1/lease?from=ci")
        client.send(acquireJSON(#"[{"name":"switch-01"}]"#))
        try await client.expectEvent("granted")
        client.close()
        await server.stop()
    }

    @Test(arguments: [
        ("a count far over the inventory", #"[{"type":"switch","count":9223372036854775807}]"#, "unsatisfiable"),
        ("sixteen huge counts", "[" + Array(repeating: #"{"type":"switch","count":9223372036854775807}"#, count: 16).joined(separator: ",") + "]",
         "unsatisfiable"),
        ("a count of 1e400", #"[{"type":"switch","count":1e400}]"#, "bad_request"),
        ("JSON nested past any sane depth", String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000), "bad_request"),
    ])
    func hostileRequestsAreRefusedAndTheServerLivesOn(_ testCase: (String, String, String)) async throws {
        let server = try TestServer()
        let client = try await server.lease()
        client.send(testCase.0.hasPrefix("JSON") ? testCase.1 : acquireJSON(testCase.1))
        try await client.expectFailure(testCase.2, closeCode: testCase.2 == "bad_request" ? 4400 : 4404)
        #expect(try await server.http("GET", "/healthz").status == 200)
        let (after, _) = try await server.hold(#"[{"type":"switch","count":2}]"#)
        after.close()
        await server.stop()
    }
}
