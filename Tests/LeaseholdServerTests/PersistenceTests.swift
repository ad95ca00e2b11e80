import Foundation
@testable import LeaseholdServer
import LeaseProtocol
import Testing

@Suite("Epoch file and audit journal")
struct PersistenceTests {
    func temporaryPath(_ name: String) -> String {
        NSTemporaryDirectory() + "leasehold-\(name)-\(UUID().uuidString)"
    }

    func epoch(of event: JSONValue) -> Int64? {
        guard case .array(let resources)? = event["resources"], case .int(let epoch)? = resources.first?["epoch"] else { return nil }
        return epoch
    }

    @Test func epochsNeverRepeatAcrossRestartsWithAnEpochFile() async throws {
        let path = temporaryPath("epochs")
        defer { try? FileManager.default.removeItem(atPath: path) }
        var seen: [Int64] = []
        for _ in 0..<2 {
            let server = try TestServer { $0.epochFile = path }
            for _ in 0..<2 {
                let (client, granted) = try await server.hold(#"[{"name": "switch-01"}]"#)
                seen.append(try #require(epoch(of: granted)))
                client.close()
                _ = try await client.expectClose()
                try await server.waitUntilFree("switch-01")
            }
            await server.stop()
        }
        // Each start continues above anything the previous run could have granted.
        #expect(seen.count == 4)
        #expect(seen == seen.sorted() && Set(seen).count == 4, "epochs \(seen)")
        #expect(seen[2] > 1000, "a restart skips the reserved block: \(seen)")
    }

    @Test func aGrantWhoseEpochCannotBeSavedIsWithheldAndItsResourceDisabled() async throws {
        let path = temporaryPath("epochs")
        let blocker = path + ".tmp"  // a directory where the temporary file goes: every write fails
        defer {
            try? FileManager.default.removeItem(atPath: path)
            try? FileManager.default.removeItem(atPath: blocker)
        }
        let server = try TestServer {
            $0.epochFile = path
            $0.epochBlock = 2  // the file covers epochs 1 and 2 of each name
        }
        try FileManager.default.createDirectory(atPath: blocker, withIntermediateDirectories: false)
        for expected: Int64 in [1, 2] {  // within the saved ceiling: granted although the file is stuck
            let (client, granted) = try await server.hold(#"[{"name": "switch-01"}]"#)
            #expect(epoch(of: granted) == expected)
            client.close()
            _ = try await client.expectClose()
            try await server.waitUntilFree("switch-01")
        }
        // Epoch 3 would be above what the file holds: a crash now would hand it out again.
        let withheld = try await server.acquire(#"[{"name": "switch-01"}]"#)
        #expect(try await withheld.expectClose().code == 1011)
        #expect(try await server.resource("switch-01")["state"] == .string("disabled"))
        let saved = try JSONValue.parse(String(contentsOfFile: path, encoding: .utf8))
        #expect(saved["switch-01"] == .int(2), "the file still holds the old ceiling")
        // Once the file can be written again, an admin enables the resource and grants go on above it.
        try FileManager.default.removeItem(atPath: blocker)
        #expect(try await server.admin("enable", "switch-01").status == 200)
        let (client, granted) = try await server.hold(#"[{"name": "switch-01"}]"#)
        let next = try #require(epoch(of: granted))
        #expect(next > 2)
        let ceiling = try JSONValue.parse(String(contentsOfFile: path, encoding: .utf8))["switch-01"]?.intValue ?? 0
        #expect(ceiling >= next, "granted \(next) with only \(ceiling) saved")
        client.close()
        await server.stop()
    }

    @Test func anUnreadableEpochFileStopsTheServerWithAReason() throws {
        let path = temporaryPath("epochs")
        defer { try? FileManager.default.removeItem(atPath: path) }
        try "not json".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: StartupError.self) { _ = try TestServer { $0.epochFile = path } }
    }

    @Test func theAuditJournalRecordsGrantsWithMetaEndsAndAdminActions() async throws {
        let path = temporaryPath("audit")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let server = try TestServer { $0.auditFile = path }
        let client = try await server.acquire(#"[{"name": "array-01"}]"#, holder: "ci/7", extra: #""meta": {"job": "J-7"}"#)
        _ = try await client.expectEvent("granted")
        let freed = try await server.admin("free", "array-01", reason: "rack move")
        #expect(freed.status == 200)
        _ = try await client.expectEvent("revoked")
        #expect(try await server.admin("disable", "switch-01").status == 200)
        await server.stop()

        let lines = try await journalLines(path, atLeast: 4)
        let events = lines.compactMap { $0["event"]?.stringValue }
        #expect(events == ["granted", "revoked", "admin", "admin"], "journal: \(lines.map { $0.serialized() })")
        #expect(lines.first?["meta"]?["job"]?.stringValue == "J-7")
        #expect(lines.first?["holder"]?.stringValue == "ci/7")
        #expect(lines.dropFirst().first?["reason"]?.stringValue == "rack move")
        #expect(lines.last?["action"]?.stringValue == "disable")
        #expect(lines.allSatisfy { $0["time"]?.stringValue?.hasSuffix("Z") == true })
        let all = try await journalLines(path, atLeast: 6, lifecycle: true)
        #expect(all.first?["event"]?.stringValue == "started" && all.first?["version"]?.stringValue == leaseholdVersion)
        #expect(all.last?["event"]?.stringValue == "stopped" && all.last?["kept"] == .bool(false))
    }

    @Test func everyEndOfALeaseOrAWaitIsJournalledOnce() async throws {
        let path = temporaryPath("audit")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let server = try TestServer { $0.auditFile = path }
        let (holder, _) = try await server.hold(#"[{"name": "switch-01"}]"#, holder: "holder")
        let unsatisfiable = try await server.acquire(#"[{"name": "nope"}]"#, holder: "lost")
        try await unsatisfiable.expectFailure("unsatisfiable", closeCode: 4404)
        let impatient = try await server.acquire(#"[{"name": "switch-01"}]"#, holder: "impatient", wait: "0")
        try await impatient.expectFailure("wait_timeout", closeCode: 4408)
        let (leaver, _) = try await server.queue(#"[{"name": "switch-01"}]"#, holder: "leaver")
        leaver.send(#"{"op":"release"}"#)
        _ = try await leaver.expectClose()
        try await server.waitForStatus("the queue empty") { $0["queue"]?.arrayValue?.isEmpty == true }
        holder.send(#"{"op":"release"}"#)
        _ = try await holder.expectClose()
        try await server.waitUntilFree("switch-01")
        await server.stop()

        let lines = try await journalLines(path, atLeast: 5)
        let ends = lines.map { "\($0["event"]?.stringValue ?? "?") \($0["holder"]?.stringValue ?? "?") \($0["code"]?.stringValue ?? $0["reason"]?.stringValue ?? "")" }
        #expect(ends == ["granted holder ", "failed lost unsatisfiable", "failed impatient wait_timeout",
                         "left_queue leaver release", "released holder release"], "journal: \(ends)")
    }

    @Test func leasesEndedByAShutdownAreJournalledAsShutdown() async throws {
        let path = temporaryPath("audit")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let server = try TestServer { $0.auditFile = path }
        let (holder, _) = try await server.hold(#"[{"name": "switch-01"}]"#, holder: "holder")
        let (waiter, _) = try await server.queue(#"[{"name": "switch-01"}]"#, holder: "waiter")
        await server.stop()
        #expect(try await holder.expectClose().code == 1001)
        #expect(try await waiter.expectClose().code == 1001)
        let lines = try await journalLines(path, atLeast: 3)
        // The first line is the holder's grant; a grant to the departing waiter would show here.
        let ends = lines.dropFirst().map { "\($0["event"]?.stringValue ?? "?") \($0["holder"]?.stringValue ?? "?") \($0["reason"]?.stringValue ?? "")" }
        #expect(Set(ends) == ["released holder shutdown", "left_queue waiter shutdown"], "journal: \(ends)")
    }
}
