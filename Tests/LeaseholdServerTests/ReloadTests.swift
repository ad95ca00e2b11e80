import LeaseProtocol
import LeaseholdServer
import Testing

/// PROTOCOL.md "Inventory" and the reload rules, through `POST /v1/reload` and `server.reload`
/// (what SIGHUP runs).
@Suite struct ReloadTests {
    static let two = """
        resources:
          - name: s1
            type: switch
            attributes: {mgmt: 10.0.0.1}
          - name: s2
            type: switch
        """

    enum Way: String, CaseIterable { case http, direct }

    func reload(_ server: TestServer, _ way: Way) async throws {
        switch way {
        case .http:
            let response = try await server.reloadViaHTTP()
            #expect(response.status == 200, "\(response)")
        case .direct:
            let result = await server.reloadDirect()
            if case .failure(let error) = result { Issue.record("reload failed: \(error)") }
        }
    }

    @Test(arguments: Way.allCases)
    func addedResourcesGoToWaiters(_ way: Way) async throws {
        let server = try TestServer(inventory: Self.two)
        let (holder, _) = try await server.hold(#"[{"type":"switch","count":2}]"#)
        let (waiter, _) = try await server.queue(#"[{"type":"switch"}]"#)
        try server.rewriteInventory(Self.two + "\n  - name: s3\n    type: switch\n")
        try await reload(server, way)
        let granted = try await nextGrant(waiter)
        #expect(grantedNames(granted) == ["s3"])
        let names = try await server.status()["resources"]?.arrayValue?.compactMap { $0["name"]?.stringValue }
        #expect(names == ["s1", "s2", "s3"], "resources in inventory order")
        holder.close()
        waiter.close()
        await server.stop()
    }

    @Test(arguments: Way.allCases)
    func aRemovedHeldResourceStaysWithItsHolderAndDisappearsOnRelease(_ way: Way) async throws {
        let server = try TestServer(inventory: Self.two)
        let (holder, granted) = try await server.hold(#"[{"name":"s2"}]"#, holder: "h")
        try server.rewriteInventory("resources:\n  - name: s1\n    type: switch\n")
        try await reload(server, way)
        try await holder.expectSilence(0.2)
        let entry = try await server.resource("s2")
        #expect(entry["state"] == .string("held"))
        #expect(entry["lease"] == granted["lease"])
        // A new request for it is unsatisfiable: it is no longer inventory.
        let late = try await server.acquire(#"[{"name":"s2"}]"#)
        try await late.expectFailure("unsatisfiable", closeCode: 4404)
        holder.send(#"{"op":"release"}"#)
        #expect(try await holder.expectClose().code == 1000)
        try await server.waitForStatus("s2 gone") { document in
            document["resources"]?.arrayValue?.compactMap { $0["name"]?.stringValue } == ["s1"]
        }
        await server.stop()
    }

    @Test(arguments: Way.allCases)
    func anInvalidFileChangesNothing(_ way: Way) async throws {
        let server = try TestServer(inventory: Self.two)
        let (holder, _) = try await server.hold(#"[{"name":"s1"}]"#)
        let before = try await server.status()
        for bad in ["resources:\n  - name: s1\n    type: switch\n  - name: s1\n    type: switch\n",
                    "resources: [ {name: s9",
                    "resources:\n  - name: s1\n"] {
            try server.rewriteInventory(bad)
            switch way {
            case .http:
                let response = try await server.reloadViaHTTP()
                #expect(response.status == 400, "\(response)")
                let reason = try JSONValue.parse(response.body)["error"]?.stringValue ?? ""
                #expect(!reason.isEmpty, "the 400 names the reason: \(response.body)")
            case .direct:
                guard case .failure(let error) = await server.reloadDirect() else {
                    Issue.record("an invalid inventory was applied: \(bad)")
                    continue
                }
                #expect(!error.message.isEmpty)
            }
        }
        let after = try await server.status()
        #expect(after == before)
        try await holder.expectSilence(0.05)
        holder.close()
        await server.stop()
    }

    @Test(arguments: Way.allCases)
    func aWaiterTheNewInventoryCannotSatisfyGetsUnsatisfiable(_ way: Way) async throws {
        let server = try TestServer(inventory: Self.two)
        let (holder, _) = try await server.hold(#"[{"name":"s1"}]"#)
        let (doomed, _) = try await server.queue(#"[{"type":"switch","count":2}]"#)
        let (fine, _) = try await server.queue(#"[{"name":"s1"}]"#)
        try server.rewriteInventory("resources:\n  - name: s1\n    type: switch\n")
        try await reload(server, way)
        try await doomed.expectFailure("unsatisfiable", closeCode: 4404)
        try await fine.expectOnlyPositionUpdates(0.1)
        holder.close()
        try await nextGrant(fine)
        fine.close()
        await server.stop()
    }

    @Test(arguments: Way.allCases)
    func changedAttributesApplyToNewGrants(_ way: Way) async throws {
        let server = try TestServer(inventory: Self.two)
        let (holder, first) = try await server.hold(#"[{"name":"s1"}]"#)
        #expect(first["resources"]?.arrayValue?.first?["attributes"]?["mgmt"] == .string("10.0.0.1"))
        let (waiter, _) = try await server.queue(#"[{"name":"s1"}]"#)
        try server.rewriteInventory(Self.two.replacingOccurrences(of: "10.0.0.1", with: "10.9.9.9"))
        try await reload(server, way)
        holder.close()
        let granted = try await nextGrant(waiter)
        let resource = try #require(granted["resources"]?.arrayValue?.first)
        #expect(resource["attributes"]?["mgmt"] == .string("10.9.9.9"))
        #expect(resource["epoch"] == .int(2), "a reload keeps the epoch counting")
        waiter.close()
        await server.stop()
    }
}
