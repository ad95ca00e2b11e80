import LeaseProtocol
import Testing

/// PROTOCOL.md admin calls: free, disable, enable (reload has its own suite).
@Suite struct AdminTests {
    @Test(arguments: ["free", "disable", "enable"])
    func aMissingOrWrongTokenIs401BeforeAny404(_ action: String) async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        for name in ["switch-01", "no-such-resource"] {
            let missing = try await server.http("POST", "/v1/resources/\(name)/\(action)")
            #expect(missing.status == 401, "\(action) \(name) without a token: \(missing)")
            let wrong = try await server.admin(action, name, token: "not-the-secret")
            #expect(wrong.status == 401, "\(action) \(name) with a wrong token: \(wrong)")
            let prefix = try await server.admin(action, name, token: "secre")
            #expect(prefix.status == 401, "\(action) \(name) with a prefix of the token: \(prefix)")
        }
        let reload = try await server.http("POST", "/v1/reload", headers: [("Authorization", "Bearer nope")])
        #expect(reload.status == 401)
        // Nothing changed.
        let entry = try await server.resource("switch-01")
        #expect(entry["state"] == .string("held"))
        try await holder.expectSilence(0.05)
        holder.close()
        await server.stop()
    }

    @Test func withoutAConfiguredTokenAdminCallsAre403AndSayHowToConfigureOne() async throws {
        let server = try TestServer(token: nil)
        for (path, headers) in [("/v1/resources/switch-01/free", []), ("/v1/resources/switch-01/disable", [("Authorization", "Bearer x")]),
                                ("/v1/resources/switch-01/enable", []), ("/v1/reload", [("Authorization", "Bearer x")])] {
            let response = try await server.http("POST", path, headers: headers)
            #expect(response.status == 403, "\(path): \(response)")
            #expect(response.body.lowercased().contains("token"), "the 403 says how to configure a token: \(response.body)")
        }
        #expect(try await server.resource("switch-01")["state"] == .string("free"))
        await server.stop()
    }

    @Test(arguments: ["free", "disable", "enable"])
    func anUnknownResourceIs404(_ action: String) async throws {
        let server = try TestServer()
        #expect(try await server.admin(action, "no-such-resource").status == 404)
        await server.stop()
    }

    @Test func freeOnAResourceThatIsNotHeldIs409() async throws {
        let server = try TestServer()
        // free
        #expect(try await server.admin("free", "switch-01").status == 409)
        // reserved
        let (holder, _) = try await server.hold(#"[{"name":"array-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"array-01"},{"name":"switch-02"}]"#)
        #expect(try await server.resource("switch-02")["state"] == .string("reserved"))
        #expect(try await server.admin("free", "switch-02").status == 409)
        // disabled
        #expect(try await server.admin("disable", "array-03").status == 200)
        #expect(try await server.admin("free", "array-03").status == 409)
        try await waiter.expectOnlyPositionUpdates(0.05)
        try await holder.expectSilence(0.05)
        holder.close()
        waiter.close()
        await server.stop()
    }

    @Test func freeRevokesTheWholeLeaseWithTheReasonThenCloses4001() async throws {
        let server = try TestServer()
        let (holder, granted) = try await server.hold(#"[{"name":"switch-01"},{"name":"array-01"}]"#)
        let (switchWaiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#)
        let (arrayWaiter, _) = try await server.queue(#"[{"name":"array-01"}]"#)
        let response = try await server.admin("free", "switch-01", reason: "device needs a reboot")
        #expect(response.status == 200, "\(response)")
        let revoked = try await holder.expectEvent("revoked")
        #expect(revoked["lease"] == granted["lease"])
        #expect(revoked["reason"] == .string("device needs a reboot"))
        #expect(try await holder.expectClose().code == 4001)
        // Both of its resources went on, not only the one named.
        try await nextGrant(switchWaiter)
        try await nextGrant(arrayWaiter)
        let metrics = try await server.metrics()
        #expect(metrics.value("leasehold_revokes_total") == 1)
        #expect(metrics.value("leasehold_releases_total", ["reason": "revoked"]) == 1)
        switchWaiter.close()
        arrayWaiter.close()
        await server.stop()
    }

    @Test func freeWithoutABodyStillGivesAReason() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        #expect(try await server.admin("free", "switch-01").status == 200)
        let revoked = try await holder.expectEvent("revoked")
        #expect(revoked["reason"]?.stringValue?.isEmpty == false)
        #expect(try await holder.expectClose().code == 4001)
        await server.stop()
    }

    @Test func disablingAReservedResourceTakesItBackFromItsWaiter() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"},{"name":"switch-02"}]"#, holder: "w")
        #expect(try await server.resource("switch-02")["state"] == .string("reserved"))
        #expect(try await server.admin("disable", "switch-02").status == 200)
        let document = try await server.status()
        let entry = document["resources"]?.arrayValue?.first { $0["name"] == .string("switch-02") }
        #expect(entry?["state"] == .string("disabled"))
        #expect(entry?["lease"] == .null)
        #expect(document["queue"]?.arrayValue?.first?["reserved"] == .array([]))
        // The holder leaves; the waiter still lacks switch-02 and keeps waiting.
        holder.close()
        try await waiter.expectOnlyPositionUpdates(0.3)
        #expect(try await server.admin("enable", "switch-02").status == 200)
        let granted = try await nextGrant(waiter)
        #expect(grantedNames(granted) == ["switch-01", "switch-02"])
        waiter.close()
        await server.stop()
    }

    @Test func disablingAHeldResourceLetsTheLeaseRunOnThenItIsDisabled() async throws {
        let server = try TestServer()
        let (holder, granted) = try await server.hold(#"[{"name":"switch-01"}]"#, holder: "h")
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#, holder: "w")
        #expect(try await server.admin("disable", "switch-01").status == 200)
        try await holder.expectSilence(0.2)
        let held = try await server.resource("switch-01")
        #expect(held["state"] == .string("held"))
        #expect(held["lease"] == granted["lease"])
        #expect(held["holder"] == .string("h"))
        // Beyond PROTOCOL.md: the snapshot says it is disabled, so the page can offer Enable.
        #expect(held["enabled"] == .bool(false))
        #expect(try await server.resource("switch-02")["enabled"] == .bool(true))
        holder.send(#"{"op":"release"}"#)
        #expect(try await holder.expectClose().code == 1000)
        try await server.waitForStatus("switch-01 disabled") { document in
            document["resources"]?.arrayValue?.first { $0["name"] == .string("switch-01") }?["state"] == .string("disabled")
        }
        try await waiter.expectOnlyPositionUpdates(0.3)
        let disabled = try await server.resource("switch-01")
        #expect(disabled["lease"] == .null)
        #expect(disabled["holder"] == .null)
        // Enable: the earliest waiter gets it.
        let (later, _) = try await server.queue(#"[{"name":"switch-01"}]"#, holder: "later")
        #expect(try await server.admin("enable", "switch-01").status == 200)
        try await nextGrant(waiter)
        try await later.expectOnlyPositionUpdates(0.2)
        #expect(try await server.resource("switch-01")["holder"] == .string("w"))
        waiter.close()
        try await nextGrant(later)
        later.close()
        await server.stop()
    }

    @Test func enableAndDisableAreIdempotentAndAFreedResourceIsFree() async throws {
        let server = try TestServer()
        #expect(try await server.admin("enable", "switch-01").status == 200)
        #expect(try await server.admin("disable", "switch-01").status == 200)
        #expect(try await server.admin("disable", "switch-01").status == 200)
        #expect(try await server.resource("switch-01")["state"] == .string("disabled"))
        #expect(try await server.admin("enable", "switch-01").status == 200)
        #expect(try await server.resource("switch-01")["state"] == .string("free"))
        await server.stop()
    }

    @Test func aBadAdminBodyIs400AndChangesNothing() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let response = try await server.http("POST", "/v1/resources/switch-01/free",
                                             headers: [("Authorization", "Bearer secret")], body: "{not json")
        #expect(response.status == 400)
        try await holder.expectSilence(0.1)
        holder.close()
        await server.stop()
    }
}
