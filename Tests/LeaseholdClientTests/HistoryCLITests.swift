import Foundation
import LeaseholdClient
import LeaseProtocol
import Testing

/// `leasehold history` and `leasehold usage` against a real server with an audit journal.
@Suite(.serialized) struct HistoryCLITests {
    @Test func historyAndUsageTablesShowWhoHadWhatAndWhyItEnded() async throws {
        let server = try await CLIServer(serveArguments: ["--audit-file", "@audit.jsonl"])
        let (held, _, holdError) = try await server.run(["hold", "--name", "switch-01", "--holder", "history-test", "--", "true"])
        #expect(held == 0, "\(holdError)")
        #expect(try await server.run(["disable", "array-02", "--reason", "broken fan"], token: CLIServer.token).0 == 0)

        let (status, table, stderr) = try await server.run(["history"])
        #expect(status == 0, "\(stderr)")
        let lines = table.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("AT") == true && lines.first?.contains("DETAILS") == true)
        #expect(lines.dropFirst().first?.contains("disabled") == true && lines.dropFirst().first?.contains("broken fan") == true)
        #expect(lines.contains { $0.contains("released") && $0.contains("switch-01") && $0.contains("history-test") && $0.contains("release; held") })
        #expect(lines.contains { $0.contains("granted") && $0.contains("switch-01") && $0.contains("waited") })

        let (jsonStatus, json, _) = try await server.run(["history", "--resource", "switch-01", "--json"])
        #expect(jsonStatus == 0)
        let events = try json.split(separator: "\n").map { try JSONValue.parse(String($0)) }
        #expect(events.compactMap { $0["event"]?.stringValue } == ["released", "granted"])
        let (limited, one, _) = try await server.run(["history", "--limit", "1", "--json", "--since", "1h"])
        #expect(limited == 0 && one.split(separator: "\n").count == 1)

        let (usageStatus, usage, usageError) = try await server.run(["usage"])
        #expect(usageStatus == 0, "\(usageError)")
        #expect(usage.contains("RESOURCE") && usage.contains("SHARE") && usage.contains("switch-01"))
        let (typeStatus, types, _) = try await server.run(["usage", "--by", "type", "--since", "7d"])
        #expect(typeStatus == 0)
        #expect(types.contains("TYPE") && types.split(separator: "\n").contains { $0.hasPrefix("switch ") })

        let (badSince, _, badSinceError) = try await server.run(["history", "--since", "yesterday"])
        #expect(badSince == 64 && badSinceError.contains("--since"))
        let (badBy, _, _) = try await server.run(["usage", "--by", "holder"])
        #expect(badBy == 64)
    }

    @Test func holdInCIFillsMetaFromTheCIsVariablesAndNamesTheJob() async throws {
        let server = try await CLIServer(serveArguments: ["--audit-file", "@audit.jsonl"])
        let (held, _, stderr) = try await server.run(["hold", "--name", "switch-01", "--meta", "commit=override", "--", "true"],
                                                     environment: CIIdentityTests.gitlab)
        #expect(held == 0, "\(stderr)")
        let (_, json, _) = try await server.run(["history", "--resource", "switch-01", "--json"])
        let granted = try #require(try json.split(separator: "\n").map { try JSONValue.parse(String($0)) }.first { $0["event"] == .string("granted") })
        #expect(granted["holder"] == .string("gitlab/lab/tests/nightly#1234 true"))
        #expect(granted["meta"]?["job"] == .string("https://gitlab.example/lab/tests/-/jobs/1234"))
        #expect(granted["meta"]?["commit"] == .string("override"))
        #expect(granted["meta"]?["ci"] == .string("gitlab"))
    }

    @Test func withoutAJournalTheCommandsSayHowToKeepOne() async throws {
        let server = try await CLIServer()
        let (status, _, stderr) = try await server.run(["history"])
        #expect(status == 1)
        #expect(stderr.contains("--state-dir"))
        #expect(try await server.run(["usage"]).0 == 1)
    }

    @Test func aHolderWithControlCharactersCannotStartATableLineOfItsOwn() {
        let forged = JSONValue.object([("at", .string("2026-12-01T10:00:00Z")), ("event", .string("granted")),
                                       ("holder", .string("evil\n2026-12-01T10:00:01Z  revoked  array-01")),
                                       ("resources", .array([.string("array-01")]))])
        let table = HistoryTables.history([forged])
        #expect(table.split(separator: "\n").count == 2, "\(table)")
        #expect(table.contains(#"evil\u{a}2026"#))
    }

    @Test func agesAndTimesAreReadTheWayTheHelpSays() {
        #expect(HistoryTables.time("24h", now: 1_796_657_512) == "2026-12-06T15:31:52Z")
        #expect(HistoryTables.time("7d", now: 1_796_657_512) == "2026-11-30T15:31:52Z")
        #expect(HistoryTables.time("2026-12-01T09:00:00Z", now: 0) == "2026-12-01T09:00:00Z")
        #expect(HistoryTables.time("yesterday", now: 0) == nil)
        #expect(HistoryTables.time("-5h", now: 0) == nil)
    }
}
