import Foundation
import LeaseProtocol
import TransportTesting
import Testing
import Transport

/// One `/v1/lease` connection over its life: messages after the acquire, release, closes of every
/// kind, timeouts.
@Suite struct SessionTests {
    @Test func otherMessagesDuringALeaseGetAnErrorAndTheLeaseStays() async throws {
        let server = try TestServer()
        let (client, granted) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#)
        for message in [#"{"op":"acquire","want":[{"name":"switch-02"}]}"#, #"{"op":"grab"}"#, "not json", #"{"op":"acquire"}"#] {
            client.send(message)
            try await client.expectError("bad_request")
        }
        try await waiter.expectOnlyPositionUpdates(0.2)
        let entry = try await server.resource("switch-01")
        #expect(entry["state"] == .string("held"))
        #expect(entry["lease"] == granted["lease"])
        #expect(try await server.resource("switch-02")["state"] == .string("free"), "a second acquire took nothing")
        // The lease still works: release hands it on.
        client.send(#"{"op":"release"}"#)
        #expect(try await client.expectClose().code == 1000)
        try await nextGrant(waiter)
        waiter.close()
        await server.stop()
    }

    @Test func otherMessagesWhileQueuedGetAnErrorAndThePlaceIsKept() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (first, _) = try await server.queue(#"[{"name":"switch-01"}]"#, holder: "first")
        let (second, _) = try await server.queue(#"[{"name":"switch-01"}]"#, holder: "second")
        first.send(#"{"op":"acquire","want":[{"name":"switch-01"}]}"#)
        try await first.expectError("bad_request")
        first.send("[]")
        try await first.expectError("bad_request")
        let queue = try await server.status()["queue"]?.arrayValue ?? []
        #expect(queue.map { $0["holder"] } == [.string("first"), .string("second")])
        #expect(queue.map { $0["position"] } == [.int(1), .int(2)])
        holder.close()
        try await nextGrant(first)
        first.close()
        try await nextGrant(second)
        second.close()
        await server.stop()
    }

    @Test func releaseWhileQueuedClosesWith1000AndLeavesTheQueue() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (leaver, _) = try await server.queue(#"[{"name":"switch-01"}]"#, holder: "leaver")
        let (stayer, _) = try await server.queue(#"[{"name":"switch-01"}]"#, holder: "stayer")
        leaver.send(#"{"op":"release"}"#)
        #expect(try await leaver.expectClose().code == 1000)
        try await server.waitForStatus("one waiter left") { $0["queue"]?.arrayValue?.map { $0["holder"] } == [.string("stayer")] }
        holder.close()
        try await nextGrant(stayer)
        stayer.close()
        await server.stop()
    }

    @Test func releaseAfterTheGrantClosesWith1000AndTheNextWaiterGetsIt() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#, holder: "next")
        holder.send(#"{"op":"release"}"#)
        let close = try await holder.expectClose()
        #expect(close.code == 1000)
        try await nextGrant(waiter)
        #expect(try await server.resource("switch-01")["holder"] == .string("next"))
        waiter.close()
        await server.stop()
    }

    @Test func closingTheSocketReleases() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#)
        holder.close(code: 1000)
        try await nextGrant(waiter)
        // A TCP close without a close frame does the same.
        let (next, _) = try await server.queue(#"[{"name":"switch-01"}]"#)
        waiter.abort()
        try await nextGrant(next)
        next.close()
        await server.stop()
    }

    @Test func aBinaryMessageDuringALeaseClosesWith1008AndEndsTheLease() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#)
        holder.sendBinary([1, 2, 3])
        try await holder.expectFailure("protocol", closeCode: 1008)
        try await nextGrant(waiter)
        waiter.close()
        await server.stop()
    }

    @Test func aBinaryMessageWhileQueuedClosesWith1008AndLeavesTheQueue() async throws {
        let server = try TestServer()
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#)
        waiter.sendBinary([0x7B, 0x7D])
        try await waiter.expectFailure("protocol", closeCode: 1008)
        try await server.waitForStatus("the queue empty") { $0["queue"]?.arrayValue?.isEmpty == true }
        holder.close()
        try await server.waitForStatus("switch-01 free") { document in
            document["resources"]?.arrayValue?.first { $0["name"] == .string("switch-01") }?["state"] == .string("free")
        }
        await server.stop()
    }

    @Test func aBinaryFirstMessageClosesWith1008() async throws {
        let server = try TestServer()
        let client = try await server.lease()
        client.sendBinary(Array(acquireJSON(#"[{"name":"switch-01"}]"#).utf8))
        try await client.expectFailure("protocol", closeCode: 1008)
        await server.stop()
    }

    @Test func noAcquireWithinTheRequestTimeoutIsRequestTimeoutThen1008() async throws {
        let clock = ManualClock()
        let server = try TestServer(clock: clock) { $0.requestTimeout = .seconds(30) }
        let client = try await server.lease()
        // Acquires in time are not affected by the timer afterwards, even while they wait.
        let (holder, _) = try await server.hold(#"[{"name":"switch-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#)
        clock.advance(by: .milliseconds(29_999))
        try await client.expectSilence(0.05)
        clock.advance(by: .milliseconds(1))
        try await client.expectFailure("request_timeout", closeCode: 1008)
        clock.advance(by: .seconds(10))  // still short of deadAfter (45 s): the clients only answer pings
        try await waiter.expectOnlyPositionUpdates(0.2)
        try await holder.expectSilence(0.01)
        holder.close()
        try await nextGrant(waiter)
        waiter.close()
        await server.stop()
    }

    @Test func aResetHolderReleasesAtOnceToTheNextWaiter() async throws {
        // On a manual clock that never moves, no ping or dead-peer timeout can free the resource:
        // only the reset itself can.
        let server = try TestServer(clock: ManualClock())
        let raw = try await RawWebSocket(port: server.port)
        raw.sendText(acquireJSON(#"[{"name":"switch-01"}]"#))
        let granted = try #require(await raw.readText())
        #expect(granted.contains("\"granted\""))
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#)
        raw.socket.reset()
        try await nextGrant(waiter)
        waiter.close()
        await server.stop()
    }

    @Test func aPeerThatStopsAnsweringPingsLosesItsLease() async throws {
        // On a manual clock: no time passes until both clients are in place.
        let clock = ManualClock()
        let server = try TestServer(clock: clock) {
            $0.pingInterval = .seconds(1)
            $0.deadAfter = .seconds(3)
        }
        let raw = try await RawWebSocket(port: server.port, firstText: acquireJSON(#"[{"name":"switch-01"}]"#, holder: "silent"))
        let granted = try #require(await raw.readText())
        #expect(granted.contains("\"granted\""))
        // The waiter's client answers pings by itself, so it keeps its place past the timeout.
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#, holder: "alive")
        try await server.advanceAndHearPongs(.seconds(1))
        try await server.advanceAndHearPongs(.seconds(1))
        #expect(try await server.resource("switch-01")["holder"] == .string("silent"), "dropped before deadAfter")
        clock.advance(by: .seconds(1))
        try await nextGrant(waiter)
        #expect(await raw.waitForEOF(timeout: liveness), "the server closes the dead peer's connection")
        try await waiter.expectSilence(1.0)
        #expect(try await server.resource("switch-01")["holder"] == .string("alive"))
        let metrics = try await server.metrics()
        #expect(metrics.value("leasehold_releases_total", ["reason": "dead_peer"]) == 1)
        waiter.close()
        await server.stop()
    }

    /// WebSocket-level faults: the close frame says what was wrong; no `error` event comes first.
    @Test(arguments: [
        ("1002: a reserved bit no extension claims", UInt16(1002)),
        ("1002: an unmasked client frame", UInt16(1002)),
        ("1007: invalid UTF-8 in a text message", UInt16(1007)),
        ("1009: a message over the size limit", UInt16(1009)),
    ])
    func webSocketFaultsCloseWithoutAnErrorEvent(_ testCase: (String, UInt16)) async throws {
        let server = try TestServer { $0.maxMessageSize = 1024 }
        let raw = try await RawWebSocket(port: server.port)
        raw.sendText(acquireJSON(#"[{"name":"switch-01"}]"#))
        #expect(await raw.readText()?.contains("\"granted\"") == true)
        let (waiter, _) = try await server.queue(#"[{"name":"switch-01"}]"#)
        switch testCase.1 {
        case 1002 where testCase.0.contains("reserved"):
            raw.sendFrame(opcode: 0x1, payload: Array(#"{"op":"release"}"#.utf8), rsv: 0b100)
        case 1002:
            raw.sendFrame(opcode: 0x1, payload: Array(#"{"op":"release"}"#.utf8), masked: false)
        case 1007:
            raw.sendFrame(opcode: 0x1, payload: [0x7B, 0xFF, 0xFE, 0x7D])
        default:
            raw.sendText(String(repeating: " ", count: 2000) + #"{"op":"release"}"#)
        }
        let frame = try #require(await raw.readFrame(), "no answer to \(testCase.0)")
        #expect(frame.opcode == 0x8, "expected only a close frame, got opcode \(frame.opcode): \(frame.text)")
        #expect(frame.closeCode == testCase.1)
        // The lease ended with the connection.
        try await nextGrant(waiter)
        waiter.close()
        await server.stop()
    }

    @Test func leaseAndWatchWithoutAnUpgradeAre426() async throws {
        let server = try TestServer()
        let response = try await server.http("GET", "/v1/lease")
        #expect(response.status == 426)
        #expect(response.header("Upgrade")?.lowercased().contains("websocket") == true)
        #expect(try await server.http("GET", "/v1/watch").status == 426)
        await server.stop()
    }
}
