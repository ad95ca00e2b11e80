import Dispatch
import Foundation
import LeaseCore
@testable import LeaseholdServer
import Logging
import LeaseProtocol
import Testing
import TransportTesting

/// PROTOCOL.md "Surviving restarts and network blips", "Revocation waits for the holder to stop"
/// and "Lease time limits", against a real server (and a second one on the same state directory).
@Suite("Durable leases: restart, resume, grace, revoke_wait, max_hold")
struct DurableLeaseTests {
    /// Clock jumps longer than the dead-peer timeout would drop the test's clients as dead.
    static func quietPeers(_ options: inout ServerOptions) {
        options.pingInterval = .seconds(10_000)
        options.deadAfter = .seconds(20_000)
    }

    func stateDirectory() -> String {
        NSTemporaryDirectory() + "leasehold-state-\(UUID().uuidString)"
    }

    func resume(_ server: TestServer, _ lease: String, _ token: String) async throws -> WSClient {
        let client = try await server.lease()
        client.send(ClientMessage.resume(lease: lease, token: token).json.serialized())
        return client
    }

    @Test func aRestartKeepsLeasesAndWaitersForTheirClientsToResume() async throws {
        let directory = stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try TestServer { $0.stateDirectory = directory }
        let (holder, granted) = try await first.hold(#"[{"name": "switch-01"}, {"type": "array", "labels": {"proto": "fc"}}]"#, holder: "ci/1")
        let (waiter, queued) = try await first.queue(#"[{"name": "switch-01"}]"#, holder: "ci/2")
        let lease = try #require(granted["lease"]?.stringValue)
        let token = try #require(granted["resume"]?.stringValue)
        let waiterToken = try #require(queued["resume"]?.stringValue)
        #expect(token.count >= 32 && token != waiterToken)
        let epochs = (granted["resources"]?.arrayValue ?? []).map { $0["epoch"] }
        await first.stop()
        #expect(try await holder.expectClose().code == 1012)
        #expect(try await waiter.expectClose().code == 1012)
        // The token is nowhere in the state directory, only its hash.
        let kept = try String(contentsOfFile: directory + "/" + FileLeaseStore.fileName, encoding: .utf8)
        #expect(!kept.contains(token) && kept.contains(ResumeToken.hash(token)))

        let second = try TestServer { $0.stateDirectory = directory }
        let status = try await second.status()
        let restored = try #require(status["leases"]?.arrayValue?.first)
        #expect(restored["id"]?.stringValue == lease)
        #expect(restored["state"] == .string("orphaned"))
        #expect(restored["until"]?.stringValue != nil)
        #expect(status["queue"]?.arrayValue?.first?["state"] == .string("orphaned"))
        #expect(try await second.resource("switch-01")["state"] == .string("held"))
        // Nobody else gets it meanwhile: a newcomer queues behind the kept waiter.
        let (newcomer, newcomerQueued) = try await second.queue(#"[{"name": "switch-01"}]"#, holder: "ci/3")
        #expect(newcomerQueued["position"] == .int(2))

        let resumed = try await resume(second, lease, token)
        let again = try await resumed.expectEvent("granted")
        #expect(again["lease"]?.stringValue == lease)
        #expect(again["resume"]?.stringValue == token)
        #expect((again["resources"]?.arrayValue ?? []).map { $0["epoch"] } == epochs)
        let resumedWaiter = try await resume(second, try #require(queued["lease"]?.stringValue), waiterToken)
        #expect(try await resumedWaiter.expectEvent("queued")["position"] == .int(1))
        try await second.waitForStatus("no orphans") { $0["leases"]?.arrayValue?.first?["state"] == .string("granted") }
        let metrics = try await second.metrics()
        #expect(metrics.value("leasehold_resumes_total", ["result": "ok"]) == 2)
        #expect(metrics.value("leasehold_orphans") == 0)

        // Handed on in order once the holder releases.
        resumed.send(#"{"op":"release"}"#)
        #expect(try await resumed.expectClose().code == 1000)
        #expect(grantedNames(try await resumedWaiter.expectEvent("granted")) == ["switch-01"])
        resumedWaiter.close()
        _ = try await newcomer.expectEvent("granted")
        newcomer.close()
        await second.stop()
    }

    @Test func withoutAStateDirectoryAStopEndsEverything() async throws {
        let server = try TestServer()
        let (holder, granted) = try await server.hold(#"[{"name": "switch-01"}]"#)
        #expect(granted["resume"]?.stringValue != nil, "a lease may still resume after a blip")
        await server.stop()
        #expect(try await holder.expectClose().code == 1001)
    }

    @Test func aResumeWithAWrongTokenOrLeaseIsRefused() async throws {
        let server = try TestServer()
        let (holder, granted) = try await server.hold(#"[{"name": "switch-01"}]"#, holder: "ci/1")
        let lease = try #require(granted["lease"]?.stringValue)
        for (id, token) in [(lease, "forged"), ("L999", granted["resume"]?.stringValue ?? ""), ("not-an-id", "x")] {
            let client = try await resume(server, id, token)
            try await client.expectFailure("resume_refused", closeCode: 4410)
        }
        let malformed = try await server.lease()
        malformed.send(#"{"op":"resume","lease":"L1"}"#)
        try await malformed.expectFailure("bad_request", closeCode: 4400)
        #expect(try await server.metrics().value("leasehold_resumes_total", ["result": "refused"]) == 3)
        // The holder is untouched.
        #expect(try await server.resource("switch-01")["lease"]?.stringValue == lease)
        holder.close()
        await server.stop()
    }

    @Test func aBlipWithGraceKeepsTheLeaseAndWithoutGraceFreesIt() async throws {
        let server = try TestServer()
        let graceful = try await server.acquire(#"[{"name": "switch-01"}]"#, extra: #""grace": 30"#)
        let granted = try await graceful.expectEvent("granted")
        let plain = try await server.acquire(#"[{"name": "switch-02"}]"#)
        _ = try await plain.expectEvent("granted")
        graceful.abort()
        plain.abort()
        try await server.waitUntilFree("switch-02")
        let status = try await server.waitForStatus("switch-01's lease orphaned") {
            $0["leases"]?.arrayValue?.first?["state"] == .string("orphaned")
        }
        #expect(status["leases"]?.arrayValue?.first?["until"]?.stringValue != nil)
        #expect(try await server.resource("switch-01")["state"] == .string("held"))
        let resumed = try await resume(server, try #require(granted["lease"]?.stringValue), try #require(granted["resume"]?.stringValue))
        #expect(try await resumed.expectEvent("granted")["lease"] == granted["lease"])
        // A clean close ends it at once, grace or not.
        resumed.close()
        try await server.waitUntilFree("switch-01")
        await server.stop()
    }

    @Test func resumingALeaseWhoseConnectionIsOpenMovesIt() async throws {
        let server = try TestServer()
        let (old, granted) = try await server.hold(#"[{"name": "switch-01"}]"#)
        let resumed = try await resume(server, try #require(granted["lease"]?.stringValue), try #require(granted["resume"]?.stringValue))
        _ = try await resumed.expectEvent("granted")
        #expect(try await old.expectClose().code == 4002)
        // The old connection's end does not end the lease.
        try await resumed.expectSilence(0.2)
        #expect(try await server.resource("switch-01")["state"] == .string("held"))
        resumed.close()
        try await server.waitUntilFree("switch-01")
        await server.stop()
    }

    @Test func anOrphanNobodyResumesExpiresAndItsResourcesGoToTheNextWaiter() async throws {
        let clock = ManualClock()
        let server = try TestServer(clock: clock)
        let gone = try await server.acquire(#"[{"name": "switch-01"}]"#, extra: #""grace": 10"#)
        _ = try await gone.expectEvent("granted")
        let (waiter, _) = try await server.queue(#"[{"name": "switch-01"}]"#)
        gone.abort()
        try await server.waitForStatus("orphaned") { $0["leases"]?.arrayValue?.first?["state"] == .string("orphaned") }
        clock.advance(by: .milliseconds(9_900))
        try await waiter.expectOnlyPositionUpdates(0.05)
        clock.advance(by: .milliseconds(100))
        _ = try await waiter.expectEvent("granted")
        #expect(try await server.metrics().value("leasehold_resumes_total", ["result": "expired"]) == 1)
        waiter.close()
        await server.stop()
    }

    @Test func aGraceAboveTheServersMaximumIsABadRequest() async throws {
        let server = try TestServer { $0.maxGrace = 100 }
        let client = try await server.acquire(#"[{"name": "switch-01"}]"#, extra: #""grace": 101"#)
        try await client.expectFailure("bad_request", closeCode: 4400)
        for bad in [#""revoke_wait": -1"#, #""revoke_wait": "5""#, #""max_hold": 0"#, #""grace": -2"#] {
            let client = try await server.acquire(#"[{"name": "switch-01"}]"#, extra: bad)
            try await client.expectFailure("bad_request", closeCode: 4400)
        }
        await server.stop()
    }

    @Test func revocationWaitsForTheHolderToClose() async throws {
        let server = try TestServer()
        let holder = try await server.acquire(#"[{"name": "switch-01"}]"#, extra: #""revoke_wait": 60"#)
        _ = try await holder.expectEvent("granted")
        let (waiter, _) = try await server.queue(#"[{"name": "switch-01"}]"#)
        #expect(try await server.admin("free", "switch-01", reason: "maintenance").status == 200)
        #expect(try await holder.expectEvent("revoked")["reason"] == .string("maintenance"))
        let status = try await server.waitForStatus("revoking") { $0["leases"]?.arrayValue?.first?["state"] == .string("revoking") }
        #expect(status["resources"]?.arrayValue?.first { $0["name"] == .string("switch-01") }?["state"] == .string("held"))
        // A second free without "now" changes nothing.
        #expect(try await server.admin("free", "switch-01").status == 200)
        try await waiter.expectOnlyPositionUpdates(0.2)
        // The holder's command has stopped: it closes, and only then the waiter gets it.
        holder.close()
        _ = try await waiter.expectEvent("granted")
        waiter.close()
        await server.stop()
    }

    @Test func revocationWithNowFreesAtOnceAndRevokeWaitRunsOut() async throws {
        let clock = ManualClock()
        let server = try TestServer(clock: clock, configure: Self.quietPeers)
        let patient = try await server.acquire(#"[{"name": "switch-01"}]"#, extra: #""revoke_wait": 30"#)
        _ = try await patient.expectEvent("granted")
        let stubborn = try await server.acquire(#"[{"name": "switch-02"}]"#, extra: #""revoke_wait": 1000"#)
        _ = try await stubborn.expectEvent("granted")

        var headers = [("Authorization", "Bearer secret")]
        headers.append(("Content-Type", "application/json"))
        let now = try await server.http("POST", "/v1/resources/switch-01/free", headers: headers, body: #"{"reason": "urgent", "now": true}"#)
        #expect(now.status == 200)
        _ = try await patient.expectEvent("revoked")
        #expect(try await patient.expectClose().code == 4001)
        try await server.waitUntilFree("switch-01")

        // revoke_wait is capped at the server's maximum (60 s by default), then 4001.
        #expect(try await server.admin("free", "switch-02").status == 200)
        _ = try await stubborn.expectEvent("revoked")
        clock.advance(by: .milliseconds(59_900))
        try await stubborn.expectSilence(0.05)
        clock.advance(by: .milliseconds(100))
        #expect(try await stubborn.expectClose().code == 4001)
        try await server.waitUntilFree("switch-02")
        await server.stop()
    }

    @Test func maxHoldFromTheInventoryAndTheRequestRevokesOnTime() async throws {
        let clock = ManualClock()
        let inventory = """
            types:
              switch: {max_hold: 100}
            resources:
              - name: switch-01
                type: switch
                max_hold: 50
              - name: switch-02
                type: switch
            """
        let server = try TestServer(inventory: inventory, clock: clock, configure: Self.quietPeers)
        let short = try await server.acquire(#"[{"name": "switch-01"}]"#, extra: #""max_hold": 80"#)
        let granted = try await short.expectEvent("granted")
        let expires = try #require(granted["expires"]?.stringValue)
        #expect(expires.hasSuffix("Z"))
        let long = try await server.acquire(#"[{"name": "switch-02"}]"#)
        #expect(try await long.expectEvent("granted")["expires"]?.stringValue != nil)
        #expect(try await server.status()["leases"]?.arrayValue?.first?["expires"]?.stringValue == expires)
        clock.advance(by: .seconds(50))
        #expect(try await short.expectEvent("revoked")["reason"] == .string("max_hold: held for 50 seconds"))
        #expect(try await short.expectClose().code == 4001)
        clock.advance(by: .seconds(50))
        #expect(try await long.expectEvent("revoked")["reason"] == .string("max_hold: held for 100 seconds"))
        await server.stop()
    }

    @Test func anInventoryMaxHoldMustBeAPositiveNumber() throws {
        for (text, problem) in [
            ("types: {switch: {max_hold: 0}}\nresources: []", "line 1: 'max_hold' of type 'switch' must be a positive number of seconds (at most 10^9)"),
            ("types: {switch: {reset_after: 3}}\nresources: []", "line 1: unknown key 'reset_after' in the settings of type 'switch' (a type has max_hold and reset)"),
            ("resources:\n  - {name: a, type: b, max_hold: soon}", "line 2: 'max_hold' of 'a' must be a positive number of seconds (at most 10^9)"),
        ] {
            #expect(throws: LeaseholdServer.InventoryError.self) { _ = try InventoryFile.parse(text) }
            do { _ = try InventoryFile.parse(text) } catch { #expect(error.description == problem) }
        }
        let entries = try InventoryFile.parse("types: {switch: {max_hold: 28_800}}\nresources:\n  - {name: a, type: switch, max_hold: 30000}\n  - {name: b, type: switch, max_hold: 60}")
        #expect(entries.map(\.maxHold) == [28_800, 60])
    }

    @Test func disabledResourcesStayDisabledOverARestart() async throws {
        let directory = stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try TestServer { $0.stateDirectory = directory }
        #expect(try await first.admin("disable", "switch-01", reason: "broken fan").status == 200)
        #expect(try await first.admin("disable", "switch-02").status == 200)
        #expect(try await first.admin("enable", "switch-02").status == 200)
        await first.stop()
        let second = try TestServer { $0.stateDirectory = directory }
        let switch01 = try await second.resource("switch-01")
        #expect(switch01["state"] == .string("disabled"))
        #expect(switch01["disabled"]?["reason"] == .string("broken fan"))
        #expect(try await second.resource("switch-02")["state"] == .string("free"))
        await second.stop()
    }

    @Test func theStateFileIsCompactedAsItGrowsAndLoadsTheSameState() async throws {
        let directory = stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let queue = DispatchQueue(label: "test.store")
        let store = try FileLeaseStore(directory: directory, queue: queue, logger: Logger(label: "test"))
        store.compactionFloor = 16 << 10
        _ = try store.load()
        @Sendable func lease(_ n: UInt64) -> KeptLease {
            KeptLease(id: LeaseID(n), tokenHash: "h\(n)", holder: "ci/\(n)", peer: "10.0.0.1:\(n)", peerHost: "10.0.0.1",
                      want: [.name("r\(n % 10)")], meta: [("job", "\(n)")], arrivedAt: Int64(n), grace: 5)
        }
        let fileBytes = { (try? FileManager.default.attributesOfItem(atPath: directory + "/" + FileLeaseStore.fileName)[.size] as? Int) ?? 0 }
        var largest = 0
        // 3,000 leases come and go; the last 10 stay, one orphaned, one revoking, one disabled name.
        for n in UInt64(1)...3000 {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                queue.async {
                    store.recordArrival(lease(n))
                    store.recordGrant(LeaseID(n), KeptLease.Grant(
                        resources: [.init(name: "r\(n % 10)", type: "t", labels: [:], attributes: .emptyObject, epoch: n)], at: Int64(n)))
                    if n <= 2990 { store.recordEnd(LeaseID(n)) }
                    if n == 2995 { store.recordOrphan(LeaseID(n), until: 99) }
                    if n == 2996 { store.recordRevoking(LeaseID(n)) }
                    if n == 2997 { store.recordDisabled("r3", KeptState.Disabled(reason: "broken", since: 7)) }
                    store.whenDurable { done.resume() }
                }
            }
            largest = max(largest, fileBytes())
        }
        #expect(largest < 20 * 16 << 10, "the file was compacted as it grew (largest \(largest) bytes)")
        let again = try FileLeaseStore(directory: directory, queue: DispatchQueue(label: "test.store2"), logger: Logger(label: "test"))
        let kept = try again.load()
        #expect(kept.leases.map(\.id.raw) == Array(2991...3000))
        #expect(kept.leases.first { $0.id.raw == 2995 }?.orphanUntil == 99)
        #expect(kept.leases.first { $0.id.raw == 2996 }?.revoking == true)
        #expect(kept.leases.first { $0.id.raw == 3000 }?.grant?.resources.first?.epoch == 3000)
        #expect(kept.leases.first { $0.id.raw == 2991 }?.meta.first?.1 == "2991")
        #expect(kept.disabled["r3"]?.reason == "broken")
        #expect(kept.epochs["r0"] == 3000 && kept.epochs["r1"] == 2991)
    }

    @Test func anOlderReleasesEpochFileInTheStateDirectoryIsRead() async throws {
        let directory = stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try #"{"switch-01": 1000}"#.write(toFile: directory + "/epochs.json", atomically: true, encoding: .utf8)
        let server = try TestServer { $0.stateDirectory = directory }
        let (client, granted) = try await server.hold(#"[{"name": "switch-01"}]"#)
        #expect(granted["resources"]?.arrayValue?.first?["epoch"] == .int(1001))
        client.close()
        await server.stop()
        try "garbage".write(toFile: directory + "/epochs.json", atomically: true, encoding: .utf8)
        #expect(throws: StartupError.self) { _ = try TestServer { $0.stateDirectory = directory } }
    }

    @Test func aTornLastLineIsSkippedAndEverythingBeforeItKept() async throws {
        let directory = stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try TestServer { $0.stateDirectory = directory }
        let (holder, granted) = try await first.hold(#"[{"name": "switch-01"}]"#)
        await first.stop()
        _ = try await holder.expectClose()
        let handle = try #require(FileHandle(forWritingAtPath: directory + "/" + FileLeaseStore.fileName))
        handle.seekToEndOfFile()
        handle.write(Data(#"{"op":"lease","id":"L7","tok"#.utf8))
        try handle.close()
        let second = try TestServer { $0.stateDirectory = directory }
        #expect(try await second.resource("switch-01")["lease"] == granted["lease"])
        #expect(try await second.status()["leases"]?.arrayValue?.count == 1)
        await second.stop()
    }
}
