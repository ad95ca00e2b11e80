import Foundation
import LeaseholdServer
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
            }
            await server.stop()
        }
        // Each start continues above anything the previous run could have granted.
        #expect(seen.count == 4)
        #expect(seen == seen.sorted() && Set(seen).count == 4, "epochs \(seen)")
        #expect(seen[2] > 1000, "a restart skips the reserved block: \(seen)")
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

        var lines: [JSONValue] = []
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            lines = text.split(separator: "\n").compactMap { try? JSONValue.parse(String($0)) }
            if lines.count >= 4 { break }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        let events = lines.compactMap { $0["event"]?.stringValue }
        #expect(events == ["granted", "revoked", "admin", "admin"], "journal: \(lines.map { $0.serialized() })")
        #expect(lines.first?["meta"]?["job"]?.stringValue == "J-7")
        #expect(lines.first?["holder"]?.stringValue == "ci/7")
        #expect(lines.dropFirst().first?["reason"]?.stringValue == "rack move")
        #expect(lines.last?["action"]?.stringValue == "disable")
        #expect(lines.allSatisfy { $0["time"]?.stringValue?.hasSuffix("Z") == true })
    }
}
