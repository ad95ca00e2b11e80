import LeaseProtocol
import Testing

/// PROTOCOL.md "Taking a lease": what a grant looks like.
@Suite struct AcquireTests {
    @Test func acquireByNameGrantsThatResourceWithItsInventoryDetails() async throws {
        let server = try TestServer()
        let (client, granted) = try await server.hold(#"[{"name":"array-01"}]"#, holder: "ci/nightly-1")
        let lease = try #require(granted["lease"]?.stringValue)
        #expect(lease.hasPrefix("L"))
        let resources = try #require(granted["resources"]?.arrayValue)
        #expect(resources.count == 1)
        let resource = resources[0]
        #expect(resource.objectKeys.map(Set.init) == ["name", "type", "labels", "attributes", "epoch"])
        #expect(resource["name"] == .string("array-01"))
        #expect(resource["type"] == .string("array"))
        #expect(resource["labels"]?["proto"] == .string("fc"))
        #expect(resource["labels"]?["model"] == .string("af40"))
        #expect(resource["attributes"]?["mgmt"] == .string("10.0.0.11"))
        #expect(resource["attributes"]?["ports"] == .array([.int(1), .int(2)]))
        #expect(resource["attributes"]?["nested"]?["rack"] == .string("r1"))
        #expect(resource["attributes"]?["nested"]?["slot"] == .int(3))
        #expect(resource["epoch"] == .int(1))

        let entry = try await server.resource("array-01")
        #expect(entry["state"] == .string("held"))
        #expect(entry["lease"] == .string(lease))
        #expect(entry["holder"] == .string("ci/nightly-1"))
        client.close()
        await server.stop()
    }

    @Test func acquireByTypeAndLabelsGrantsOnlyMatchingResources() async throws {
        let server = try TestServer()
        let (client, granted) = try await server.hold(#"[{"type":"array","labels":{"proto":"fc"},"count":2}]"#)
        #expect(Set(grantedNames(granted)) == ["array-01", "array-02"])
        for resource in granted["resources"]?.arrayValue ?? [] {
            #expect(resource["type"] == .string("array"))
            #expect(resource["labels"]?["proto"] == .string("fc"))
        }
        // Only the iSCSI array is left of that type; another fc array must wait.
        let (other, queued) = try await server.queue(#"[{"type":"array","labels":{"proto":"fc"}}]"#)
        #expect(queued["position"] == .int(1))
        let (third, iscsi) = try await server.hold(#"[{"type":"array"}]"#)
        #expect(grantedNames(iscsi) == ["array-03"])
        client.close()
        other.close()
        third.close()
        await server.stop()
    }

    @Test func severalGroupsAreGrantedAtOnceInWantOrder() async throws {
        let server = try TestServer()
        let want = #"[{"type":"switch"},{"name":"array-03"},{"type":"array","labels":{"model":"af40"}},{"type":"switch"}]"#
        let (client, granted) = try await server.hold(want)
        let names = grantedNames(granted)
        #expect(names.count == 4)
        #expect(names[1] == "array-03")
        #expect(names[2] == "array-01", "the only af40 array left once array-03 is named")
        #expect(Set([names[0], names[3]]) == ["switch-01", "switch-02"])
        let types = (granted["resources"]?.arrayValue ?? []).compactMap { $0["type"]?.stringValue }
        #expect(types == ["switch", "array", "array", "switch"])
        client.close()
        await server.stop()
    }

    @Test func aRequestIsGrantedWholeOrNotAtAll() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-02"}]"#)
        // Needs array-01 (free) and switch-02 (held): it must not hold array-01 alone.
        let (waiter, _) = try await server.queue(#"[{"name":"array-01"},{"name":"switch-02"}]"#, holder: "both")
        #expect(try await server.resource("array-01")["state"] == .string("reserved"))
        holder.close()
        let granted = try await waiter.expectEvent("granted")
        #expect(grantedNames(granted) == ["array-01", "switch-02"])
        waiter.close()
        await server.stop()
    }

    @Test func epochIsZeroBeforeTheFirstGrantAndGrowsWithEveryGrantOfThatName() async throws {
        let server = try TestServer()
        #expect(try await server.resource("switch-01")["epoch"] == .int(0))
        var epochs: [Int64] = []
        for _ in 0..<3 {
            let (client, granted) = try await server.hold(#"[{"name":"switch-01"}]"#)
            epochs.append(try #require(granted["resources"]?.arrayValue?.first?["epoch"]?.intValue))
            client.send(#"{"op":"release"}"#)
            #expect(try await client.expectClose().code == 1000)
        }
        #expect(epochs == [1, 2, 3])
        try await server.waitForStatus("switch-01 free with epoch 3") { document in
            let entry = document["resources"]?.arrayValue?.first { $0["name"] == .string("switch-01") }
            return entry?["epoch"] == .int(3) && entry?["state"] == .string("free")
        }
        // Another name's epoch is its own.
        let (other, granted) = try await server.hold(#"[{"name":"switch-02"}]"#)
        #expect(granted["resources"]?.arrayValue?.first?["epoch"] == .int(1))
        other.close()
        await server.stop()
    }

    @Test func holderDefaultsToThePeerAddress() async throws {
        let server = try TestServer()
        let (client, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let holder = try #require(try await server.resource("switch-01")["holder"]?.stringValue)
        #expect(holder.hasPrefix("127.0.0.1:"))
        let document = try await server.status()
        #expect(document["leases"]?.arrayValue?.first?["peer"]?.stringValue == holder)
        client.close()
        await server.stop()
    }

    @Test func unknownTopLevelKeysAreIgnored() async throws {
        let server = try TestServer()
        let client = try await server.acquire(#"[{"name":"switch-01"}]"#, extra: #""future":{"x":[1,2]},"version":2"#)
        try await client.expectEvent("granted")
        client.close()
        await server.stop()
    }

    @Test func fractionalAndHugeWaitsAreAccepted() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#, wait: "1e300")
        let (fractional, _) = try await server.queue(#"[{"name":"switch-01"}]"#, wait: "30.5")
        holder.close()
        // Position updates may come first (the second waiter moves up once a second at most).
        try await nextGrant(waiter)
        #expect(try await server.http("GET", "/healthz").status == 200)
        waiter.close()
        try await nextGrant(fractional)
        fractional.close()
        await server.stop()
    }
}
