import Foundation
import LeaseProtocol
import TransportTesting
import Testing
import Transport

/// PROTOCOL.md "Who gets a freed resource", queued events and `wait`.
@Suite struct QueueTests {
    @Test func aBusyResourceQueuesTheRequestWithItsPositionAndHandsOffInArrivalOrder() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        var waiters: [WSClient] = []
        for index in 1...3 {
            let (waiter, queued) = try await server.queue(#"[{"name":"switch-01"}]"#, holder: "w\(index)")
            #expect(queued["position"] == .int(Int64(index)))
            #expect(queued["lease"]?.stringValue?.hasPrefix("L") == true)
            waiters.append(waiter)
        }
        // Each holder closes its socket in turn: the earliest waiter gets it every time.
        holder.close()
        for (index, waiter) in waiters.enumerated() {
            let granted = try await nextGrant(waiter)
            #expect(grantedNames(granted) == ["switch-01"], "waiter \(index + 1)")
            #expect(try await server.resource("switch-01")["holder"] == .string("w\(index + 1)"))
            waiter.close()
        }
        await server.stop()
    }

    @Test func positionUpdatesComeAtMostOnceASecondAndCarryTheLatestPosition() async throws {
        // On a manual clock: "a second" is the server's, whatever the machine's load.
        let clock = ManualClock()
        let server = try TestServer(clock: clock)
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        var ahead: [WSClient] = []
        for _ in 1...3 { ahead.append(try await server.queue(#"[{"name":"switch-01"}]"#).0) }
        let (watched, first) = try await server.queue(#"[{"name":"switch-01"}]"#)
        #expect(first["position"] == .int(4))
        // Two waiters ahead leave, one after the other: the update is coalesced.
        ahead[0].send(#"{"op":"release"}"#)
        ahead[1].send(#"{"op":"release"}"#)
        try await server.waitForStatus("two waiters gone") { $0["queue"]?.arrayValue?.count == 2 }
        let (update, firstAt) = try await stepUntilPositionUpdate(watched, clock)
        #expect(update["position"] == .int(2), "the update carries the latest position, not an intermediate one")
        #expect(update["lease"] == first["lease"])
        #expect(firstAt >= .seconds(1), "a position update \(firstAt) after the first queued event")
        // The next change: its update is again a second after the previous one.
        holder.close()
        try await nextGrant(ahead[2])
        let (second, gap) = try await stepUntilPositionUpdate(watched, clock)
        #expect(second["position"] == .int(1))
        #expect(gap >= .milliseconds(1000 - 50), "two position updates \(gap) apart (steps of 50 ms)")
        ahead[2].close()
        try await watched.expectEvent("granted")
        watched.close()
        await server.stop()
    }

    @Test func aLaterRequestNeverOvertakesAnEarlierOneThatCanUseTheResource() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"array-01"}]"#, holder: "h")
        // Needs two fc arrays: takes array-02 at once and waits for array-01.
        let (big, bigQueued) = try await server.queue(#"[{"type":"array","labels":{"proto":"fc"},"count":2}]"#, holder: "big",
                                                      extra: #""meta":{"job":"j1"}"#)
        // Needs one fc array: array-02 is free in name only, reserved for the earlier waiter.
        let (small, smallQueued) = try await server.queue(#"[{"type":"array","labels":{"proto":"fc"}}]"#, holder: "small")
        #expect(smallQueued["position"] == .int(2))
        let bigLease = try #require(bigQueued["lease"]?.stringValue)

        let document = try await server.status()
        let reserved = try #require(document["resources"]?.arrayValue?.first { $0["name"] == .string("array-02") })
        #expect(reserved["state"] == .string("reserved"))
        #expect(reserved["lease"] == .string(bigLease))
        #expect(reserved["holder"] == .string("big"))
        let queue = try #require(document["queue"]?.arrayValue)
        #expect(queue.map { $0["holder"] } == [.string("big"), .string("small")])
        #expect(queue.first?["reserved"] == .array([.string("array-02")]))
        #expect(queue.first?["meta"]?["job"] == .string("j1"))
        #expect(document["leases"]?.arrayValue?.count == 1, "waiters are not leases")

        holder.close()
        let granted = try await nextGrant(big)
        #expect(Set(grantedNames(granted)) == ["array-01", "array-02"])
        try await small.expectOnlyPositionUpdates(0.2)
        big.close()
        let smallGrant = try await nextGrant(small)
        #expect(grantedNames(smallGrant).count == 1)
        small.close()
        await server.stop()
    }

    @Test func anUnrelatedRequestIsGrantedAtOnceWhileOthersWait() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"},{"name":"array-01"}]"#)
        let (other, granted) = try await server.hold(#"[{"type":"switch"}]"#)
        #expect(grantedNames(granted) == ["switch-02"])
        let (third, arrays) = try await server.hold(#"[{"type":"array","count":2}]"#)
        #expect(Set(grantedNames(arrays)) == ["array-02", "array-03"], "array-01 is reserved for the waiter")
        holder.close()
        try await nextGrant(waiter)
        for client in [waiter, other, third] { client.close() }
        await server.stop()
    }

    @Test func waitZeroOnABusyResourceFailsAtOnceWithoutAQueuedEvent() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let client = try await server.acquire(#"[{"name":"switch-01"},{"name":"switch-02"}]"#, wait: "0")
        try await client.expectFailure("wait_timeout", closeCode: 4408)
        // What it could have taken (switch-02) is free again, and nobody waits.
        let document = try await server.waitForStatus("switch-02 free") { document in
            document["resources"]?.arrayValue?.first { $0["name"] == .string("switch-02") }?["state"] == .string("free")
        }
        #expect(document["queue"]?.arrayValue?.isEmpty == true)
        // wait: 0 on a free resource is granted.
        let (free, _) = try await server.hold(#"[{"name":"switch-02"}]"#)
        free.close()
        holder.close()
        await server.stop()
    }

    @Test func aShortWaitQueuesThenTimesOut() async throws {
        let clock = ManualClock()
        let server = try TestServer(clock: clock)
        let (holder, granted) = try await server.hold(#"[{"name":"switch-01"}]"#, holder: "ci/nightly")
        let (client, queued) = try await server.queue(#"[{"name":"switch-01"}]"#, wait: "30.5")
        #expect(queued["position"] == .int(1))
        clock.advance(by: .milliseconds(30_499))
        try await client.expectOnlyPositionUpdates(0.05)
        clock.advance(by: .milliseconds(1))
        // The message says how long it waited and who held what it waited for.
        let message = try await client.expectError("wait_timeout")
        let lease = granted["lease"]?.stringValue ?? "?"
        #expect(message == "not granted within the requested wait (waited 30s); held by lease \(lease) of ci/nightly (switch-01)")
        #expect(try await client.expectClose().code == 4408)
        try await server.waitForStatus("the queue empty") { $0["queue"]?.arrayValue?.isEmpty == true }
        holder.close()
        await server.stop()
    }

    @Test(arguments: [
        ("unknown name", #"[{"name":"nope-01"}]"#),
        ("unknown type", #"[{"type":"router"}]"#),
        ("count over the inventory", #"[{"type":"switch","count":3}]"#),
        ("count over the matching inventory", #"[{"type":"array","labels":{"proto":"fc"},"count":3}]"#),
        ("labels nothing has", #"[{"type":"array","labels":{"proto":"nvme"}}]"#),
        ("groups together over the inventory", #"[{"type":"switch","count":2},{"name":"switch-01"}]"#),
        ("same name twice", #"[{"name":"switch-01"},{"name":"switch-01"}]"#),
    ])
    func unsatisfiableRequestsFailAtOnce(_ testCase: (String, String)) async throws {
        let server = try TestServer()
        let client = try await server.acquire(testCase.1)
        try await client.expectFailure("unsatisfiable", closeCode: 4404)
        await server.stop()
    }

    @Test func aDisabledResourceStillCountsAsInventory() async throws {
        let server = try TestServer()
        #expect(try await server.admin("disable", "switch-01").status == 200)
        #expect(try await server.admin("disable", "switch-02").status == 200)
        let impatient = try await server.acquire(#"[{"type":"switch","count":2}]"#, wait: "0")
        try await impatient.expectFailure("wait_timeout", closeCode: 4408)
        let (waiter, _) = try await server.queue(#"[{"type":"switch","count":2}]"#)
        #expect(try await server.admin("enable", "switch-01").status == 200)
        try await waiter.expectOnlyPositionUpdates(0.2)
        #expect(try await server.admin("enable", "switch-02").status == 200)
        let granted = try await nextGrant(waiter)
        #expect(Set(grantedNames(granted)) == ["switch-01", "switch-02"])
        waiter.close()
        await server.stop()
    }
}

/// The next `granted` event, skipping position updates.
@discardableResult
func nextGrant(_ client: WSClient, timeout: Double = liveness) async throws -> JSONValue {
    while true {
        let event = try await client.nextEvent(timeout: timeout)
        if event["event"] == .string("queued") { continue }
        guard event["event"] == .string("granted") else { throw TestFailure("expected granted, got \(event.serialized())") }
        return event
    }
}

/// Moves the server's manual clock in steps of 50 ms until `client` (a waiter) gets a position
/// update; returns it and the time that passed. After each step a bad message and its error
/// answer make sure whatever the step sent has arrived: answers go out in order.
func stepUntilPositionUpdate(_ client: WSClient, _ clock: ManualClock, limit: Duration = .seconds(5)) async throws -> (JSONValue, Duration) {
    var elapsed = Duration.zero
    while elapsed < limit {
        clock.advance(by: .milliseconds(50))
        elapsed += .milliseconds(50)
        client.send(#"{"op":"barrier"}"#)
        var update: JSONValue?
        while true {
            let event = try await client.nextEvent()
            if event["event"] == .string("error") { break }
            guard event["event"] == .string("queued") else { throw TestFailure("expected a position update, got \(event.serialized())") }
            update = event
        }
        if let update { return (update, elapsed) }
    }
    throw TestTimeout(what: "a position update within \(limit) of server time")
}
