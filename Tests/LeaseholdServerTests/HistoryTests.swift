import Foundation
import LeaseProtocol
@testable import LeaseholdServer
import Testing
import Transport
import TransportTesting

/// The journal that survives crashes and rotation, and `/v1/history` and `/v1/usage` over it.
@Suite struct JournalFileTests {
    func temporaryPath(_ name: String) -> String {
        NSTemporaryDirectory() + "leasehold-\(name)-\(UUID().uuidString)"
    }

    func removeJournal(_ path: String) {
        for index in 0...10 { try? FileManager.default.removeItem(atPath: index == 0 ? path : "\(path).\(index)") }
    }

    func durable(_ journal: AuditJournal) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            journal.whenDurable { continuation.resume() }
        }
    }

    func lines(_ path: String) throws -> [String] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    }

    @Test func aTornLastLineIsSkippedOnReadAndCutOffWhenTheJournalOpens() async throws {
        let path = temporaryPath("audit")
        defer { removeJournal(path) }
        let good = #"{"time":"2026-12-01T10:00:00.000Z","event":"granted","lease":"L1","holder":"a","resources":[{"name":"array-01","type":"array","epoch":1}],"waited_seconds":0}"#
        let torn = #"{"time":"2026-12-01T10:00:01.000Z","event":"released","lease":"L1","hol"#
        try (good + "\n" + good.replacingOccurrences(of: "L1", with: "L2") + "\n" + torn).write(toFile: path, atomically: true, encoding: .utf8)

        let reader = JournalReader(files: JournalFile.openAll(path: path, keep: 0))
        let page = History.history(History.HistoryQuery(), reader: reader)
        #expect(page.events.map { $0["lease"]?.stringValue } == ["L2", "L1"])

        let journal = try AuditJournal(path: path, clock: ServerClock(ManualClock()))
        journal.record([("event", .string("started"))])
        await durable(journal)
        let after = try lines(path)
        #expect(after.count == 4 && after[3].isEmpty, "\(after)")
        #expect(after.dropLast().allSatisfy { (try? JSONValue.parse($0)) != nil }, "\(after)")
        #expect(after[2].contains(#""event":"started""#))
    }

    @Test func aFileWithoutAnyNewlineIsEmptiedWhenTheJournalOpens() throws {
        let path = temporaryPath("audit")
        defer { removeJournal(path) }
        try #"{"time":"2026-12-01T1"#.write(toFile: path, atomically: true, encoding: .utf8)
        _ = try AuditJournal(path: path, clock: ServerClock(ManualClock()))
        #expect(try String(contentsOfFile: path, encoding: .utf8).isEmpty)
    }

    @Test func rotationKeepsTheNewestFilesAndHistoryPagesThroughThemAll() async throws {
        let path = temporaryPath("audit")
        defer { removeJournal(path) }
        var settings = AuditJournal.Settings()
        settings.maxBytes = 4096
        settings.keep = 2
        settings.syncInterval = .zero
        let clock = ManualClock()
        let journal = try AuditJournal(path: path, clock: ServerClock(clock), settings: settings)
        for index in 0..<300 {
            journal.record([("event", .string("granted")), ("lease", .string("L\(index)")), ("holder", .string(index % 3 == 0 ? "ci/nightly" : "dev")),
                            ("resources", .array([.object([("name", .string("array-0\(index % 2)")), ("type", .string("array"))])])),
                            ("n", .int(Int64(index)))])
            clock.advance(by: .milliseconds(10))
            if index % 50 == 0 { await durable(journal) }
        }
        await durable(journal)
        let manager = FileManager.default
        #expect(manager.fileExists(atPath: path) && manager.fileExists(atPath: path + ".1") && manager.fileExists(atPath: path + ".2"))
        #expect(!manager.fileExists(atPath: path + ".3"))
        for name in [path, path + ".1", path + ".2"] {
            let size = try #require(try manager.attributesOfItem(atPath: name)[.size] as? Int)
            #expect(size <= 4096)
            #expect(try lines(name).dropLast().allSatisfy { (try? JSONValue.parse($0)) != nil })
        }
        // Every line still kept, newest first, in pages that neither repeat nor skip.
        let kept = try [path + ".2", path + ".1", path].flatMap { try lines($0).dropLast() }.count
        var seen: [Int64] = []
        var query = History.HistoryQuery()
        query.limit = 7
        while true {
            let reader = JournalReader(files: journal.openForReading())
            let page = History.history(query, reader: reader)
            seen += page.events.compactMap { if case .int(let n)? = $0["n"] { return n } else { return nil } }
            guard let next = page.next else { break }
            query.cursor = try #require(History.HistoryQuery.parseCursor(next))
        }
        #expect(seen.count == kept)
        #expect(seen.first == 299)
        #expect(seen == seen.sorted(by: >))
        #expect(Set(seen).count == seen.count)

        // Filters: a resource, a holder substring, a type.
        let reader = JournalReader(files: journal.openForReading())
        var filtered = History.HistoryQuery()
        filtered.resource = "array-01"
        filtered.limit = 5
        let odd = History.history(filtered, reader: reader).events.compactMap { if case .int(let n)? = $0["n"] { return n } else { return nil } }
        #expect(odd == [299, 297, 295, 293, 291])
        var byHolder = History.HistoryQuery()
        byHolder.holder = "nightly"
        byHolder.limit = 3
        #expect(History.history(byHolder, reader: reader).events.compactMap { $0["lease"]?.stringValue } == ["L297", "L294", "L291"])
        var byType = History.HistoryQuery()
        byType.type = "switch"
        #expect(History.history(byType, reader: reader).events.isEmpty)
    }

    @Test(arguments: [1, 2, 3])
    func readingWithTinyChunksFindsEveryWholeLineInBothDirectionsAndSkipsOverlongOnes(_ seed: UInt64) throws {
        let path = temporaryPath("audit")
        defer { removeJournal(path) }
        var random = SplitMix(seed: seed)
        var text = ""
        var kept: [String] = []
        for index in 0..<400 {
            let long = random.next() % 23 == 0
            let padding = (index % 5 == 0 ? "needle" : "") + String(repeating: "x", count: long ? 5000 : Int(random.next() % 150))
            let line = #"{"time":"2026-12-01T10:00:00.000Z","event":"e","n":\#(index),"p":"\#(padding)"}"#
            text += line + "\n"
            if !long { kept.append(line) }
        }
        text += #"{"time":"2026-12-01T10:00:00.000Z","event":"torn"#
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        for chunk in [37, 64, 256] {
            let reader = JournalReader(files: JournalFile.openAll(path: path, keep: 0), chunkSize: chunk, maxLineBytes: 1024)
            var backward: [String] = []
            reader.backward { line, _ in backward.append(String(decoding: line, as: UTF8.self)); return true }
            #expect(backward == kept.reversed(), "chunk \(chunk)")
            var forward: [String] = []
            reader.forward(fromMilliseconds: nil) { line in forward.append(String(decoding: line, as: UTF8.self)); return true }
            #expect(forward == kept, "chunk \(chunk)")
            var found: [String] = []
            reader.backward(needle: Array("needle".utf8)) { line, _ in found.append(String(decoding: line, as: UTF8.self)); return true }
            #expect(found == kept.filter { $0.contains("needle") }.reversed(), "chunk \(chunk)")
            // From a cursor: strictly older lines.
            var positions: [JournalReader.Position] = []
            reader.backward { _, position in positions.append(position); return positions.count < 10 }
            var rest: [String] = []
            reader.backward(before: positions.last) { line, _ in rest.append(String(decoding: line, as: UTF8.self)); return true }
            #expect(rest == Array(kept.reversed().dropFirst(10)), "chunk \(chunk)")
        }
    }

    @Test func rfc3339TimesParseWithFractionsAndOffsetsAndRejectTheRest() {
        #expect(RFC3339.parse("1970-01-01T00:00:00Z") == 0)
        #expect(RFC3339.parse("2026-12-07T15:31:52.250Z") == 1_796_657_512_250)
        #expect(RFC3339.parse("2026-12-07T16:31:52.25+01:00") == 1_796_657_512_250)
        #expect(RFC3339.parse("2026-12-07T15:31:52.250123Z") == 1_796_657_512_250)
        for bad in ["", "2026-12-07", "2026-12-07T15:31:52", "2026-13-07T15:31:52Z", "2026-12-07T15:31:52.Z",
                    "2026-12-07T15:31:52+0100", "yesterday", "2026-12-07T15:31:52Zjunk"] {
            #expect(RFC3339.parse(bad) == nil, "\(bad)")
        }
        #expect(RFC3339.format(milliseconds: 1_796_657_512_250) == "2026-12-07T15:31:52.250Z")
        #expect(RFC3339.format(milliseconds: 1_796_657_512_000) == "2026-12-07T15:31:52Z")
    }

    @Test func badQueriesAreRefusedWithAMessageThatNamesTheProblem() {
        func problem(_ query: String) -> String? {
            do { _ = try History.HistoryQuery(query: query); return nil } catch { return error.message }
        }
        #expect(problem("limit=0")?.contains("'limit'") == true)
        #expect(problem("limit=ten")?.contains("'limit'") == true)
        #expect(problem("since=yesterday")?.contains("'since'") == true)
        #expect(problem("cursor=zz-zz-zz")?.contains("'cursor'") == true)
        #expect(problem("cursor=%ZZ")?.contains("percent") == true)
        #expect(problem("resouce=array-01")?.contains("unknown query parameter 'resouce'") == true)
        #expect(problem("resource=a&resource=b")?.contains("twice") == true)
        #expect(problem("since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z")?.contains("after") == true)
        #expect(problem("resource=array-01&limit=5000") == nil)
        #expect((try? History.HistoryQuery(query: "limit=5000"))?.limit == 1000)
        #expect((try? History.HistoryQuery(query: ""))?.limit == 100)
        func usageProblem(_ query: String) -> String? {
            do { _ = try History.UsageQuery(query: query, now: 1_796_657_512_250); return nil } catch { return error.message }
        }
        #expect(usageProblem("by=holder")?.contains("'by'") == true)
        #expect(usageProblem("since=2026-12-08T00:00:00Z")?.contains("before") == true)
        #expect(usageProblem("by=type") == nil)
    }

    @Test func usageReadsTheFieldsItNeedsWithOrWithoutEscapesAndIgnoresLookalikesInMeta() {
        func fields(_ line: JSONValue) -> History.UsageFields? {
            let bytes = line.serializedBytes()
            return bytes.withUnsafeBytes { History.UsageFields($0) }
        }
        for holder in ["plain", "quote\"d\\and\nnewline"] {
            let line = JSONValue.object([
                ("time", .string("2026-12-01T10:00:00.000Z")), ("event", .string("released")), ("lease", .string("L7")),
                ("holder", .string(holder)), ("meta", .object([("lease", .string("L-fake")), ("held_seconds", .int(99))])),
                ("resources", .array([.object([("name", .string("array-01")), ("type", .string("array"))]), .string("sw]{\"-1")])),
                ("reason", .string("disconnect")), ("held_seconds", .double(12.5)), ("state", .bool(false)),
            ])
            let parsed = fields(line)
            #expect(parsed?.lease == "L7", "\(holder)")
            #expect(parsed?.held == 12.5)
            #expect(parsed?.reason == "disconnect")
            #expect(parsed?.state == false)
            #expect(parsed?.resources.map(\.name) == ["array-01", "sw]{\"-1"])
            #expect(parsed?.resources.first?.type == "array")
        }
        let broken = Array(#"{"time":"2026-12-01T10:00:00.000Z","event":"granted","lease":"L1","resources":[{"name":"a""#.utf8)
        #expect(broken.withUnsafeBytes { History.UsageFields($0) } == nil)
    }

    @Test func percentilesAreNearestRank() {
        #expect(History.percentile([], 0.5) == nil)
        #expect(History.percentile([3], 0.95) == 3)
        #expect(History.percentile([0, 10], 0.5) == 0)
        #expect(History.percentile([0, 10], 0.95) == 10)
        #expect(History.percentile(Array(1...100).map(Double.init), 0.95) == 95)
    }
}

@Suite struct HistoryEndpointTests {
    func temporaryPath(_ name: String) -> String {
        NSTemporaryDirectory() + "leasehold-\(name)-\(UUID().uuidString)"
    }

    func json(_ result: HTTPResult) throws -> JSONValue { try JSONValue.parse(result.body) }

    @Test func withoutAJournalHistoryAndUsageSayHowToConfigureOne() async throws {
        let server = try TestServer()
        for path in ["/v1/history", "/v1/usage"] {
            let answer = try await server.http("GET", path)
            #expect(answer.status == 404)
            #expect(answer.body.contains("--state-dir") && answer.body.contains("--audit-file"))
        }
        #expect(try await server.http("POST", "/v1/history").status == 405)
        await server.stop()
    }

    @Test func aStateDirectoryKeepsTheJournalByDefault() async throws {
        let directory = temporaryPath("state")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let server = try TestServer { $0.stateDirectory = directory }
        let (holder, _) = try await server.hold(#"[{"name": "switch-01"}]"#, holder: "kept")
        holder.send(#"{"op":"release"}"#)
        _ = try await holder.expectClose()
        await server.stop()
        let lines = try await journalLines(directory + "/audit.jsonl", atLeast: 2)
        #expect(lines.compactMap { $0["event"]?.stringValue } == ["granted", "released"])
        let all = try await journalLines(directory + "/audit.jsonl", atLeast: 4, lifecycle: true)
        #expect(all.first?["state"] == .bool(true))
    }

    /// The server summarises its journal in the background (`UsageIndex`) and answers the same
    /// from the summaries as from the lines.
    @Test func theServerSummarisesItsJournalAndAnswersTheSameFromTheSummaries() async throws {
        let directory = temporaryPath("state")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let clock = ManualClock()
        let server = try TestServer(clock: clock) {
            $0.stateDirectory = directory
            $0.pingInterval = .seconds(3600)
            $0.deadAfter = .seconds(7200)
        }
        let start = server.server.clock.unixMilliseconds(server.server.clock.now())
        for (seconds, name) in [(30, "array-01"), (90, "switch-01")] {
            let (holder, _) = try await server.hold(#"[{"name": "\#(name)"}]"#, holder: "ci/\(name)")
            clock.advance(by: .seconds(seconds))
            holder.send(#"{"op":"release"}"#)
            _ = try await holder.expectClose()
            try await server.waitUntilFree(name)
        }
        // The live file's hour is over: its lines can be summarised.
        clock.advance(by: .seconds(7200))
        let window = "since=\(RFC3339.format(milliseconds: start - 60_000))&until=\(RFC3339.format(milliseconds: start + 3_600_000))"
        let first = try await server.http("GET", "/v1/usage?\(window)")
        let indexer = try #require(server.server.usageIndexer)
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in indexer.whenIdle { done.resume() } }
        let indexes = try FileManager.default.contentsOfDirectory(atPath: directory + "/audit.jsonl.index")
        #expect(indexes.count == 1 && indexes.allSatisfy { $0.hasSuffix(".usage") }, "\(indexes)")
        let second = try await server.http("GET", "/v1/usage?\(window)")
        #expect(first.status == 200 && second.body == first.body)
        let rows = try json(second)["rows"]?.arrayValue ?? []
        #expect(rows.first { $0["name"] == .string("switch-01") }?["held_seconds"] == .double(90))
        await server.stop()
    }

    /// A rotated file gets its summaries right after the rotation.
    @Test func aRotatedFileIsSummarisedAfterTheRotation() async throws {
        let directory = temporaryPath("rotating")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/audit.jsonl"
        let server = try TestServer {
            $0.auditFile = path
            $0.auditMaxBytes = 2048
            $0.auditKeep = 2
        }
        for index in 0..<12 {
            let (holder, _) = try await server.hold(#"[{"name": "array-01"}]"#, holder: "ci/\(index)")
            holder.send(#"{"op":"release"}"#)
            _ = try await holder.expectClose()
            try await server.waitUntilFree("array-01")
        }
        let journal = try #require(server.server.service.journal)
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in journal.whenDurable { done.resume() } }
        let indexer = try #require(server.server.usageIndexer)
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in indexer.whenIdle { done.resume() } }
        #expect(FileManager.default.fileExists(atPath: path + ".2"))
        let files = JournalFile.openAll(path: path, keep: 2)
        let reader = JournalReader(files: files)
        // Both rotated files are summarised to their ends (the live one waits for its hour to end).
        #expect(reader.files.count == 3)
        for file in reader.files.dropFirst() {
            let length = reader.completeLength(file)
            let covered = indexer.store.load(file, reader: reader)?.covered
            #expect(covered == length)
        }
        await server.stop()
    }

    /// A scripted sequence on a manual clock: every time in the journal is exact.
    @Test func historyAndUsageFromAScriptedSequence() async throws {
        let path = temporaryPath("audit")
        defer { for suffix in ["", ".1"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let clock = ManualClock()
        let server = try TestServer(clock: clock) {
            $0.auditFile = path
            // No ping or dead-peer deadline inside the clock's steps (see MetricsByTypeTests).
            $0.pingInterval = .seconds(3600)
            $0.deadAfter = .seconds(7200)
        }

        // A holds array-01 for 10 s; B waited those 10 s and holds it 5 s, then drops.
        let (a, _) = try await server.hold(#"[{"name": "array-01"}]"#, holder: "ci/alpha")
        let (b, _) = try await server.queue(#"[{"name": "array-01"}]"#, holder: "ci/beta")
        clock.advance(by: .seconds(10))
        a.send(#"{"op":"release"}"#)
        _ = try await a.expectClose()
        _ = try await b.expectEvent("granted")
        clock.advance(by: .seconds(5))
        b.abort()
        try await server.waitUntilFree("array-01")
        // C holds switch-01 for 20 s, and an admin frees it.
        let (c, _) = try await server.hold(#"[{"name": "switch-01"}]"#, holder: "dev/gamma")
        clock.advance(by: .seconds(20))
        #expect(try await server.admin("free", "switch-01", reason: "rack move").status == 200)
        _ = try await c.expectEvent("revoked")
        try await server.waitUntilFree("switch-01")
        clock.advance(by: .seconds(1))
        #expect(try await server.admin("disable", "array-02", reason: "broken fan").status == 200)
        // D holds array-03 still, for 7 s so far.
        let (d, _) = try await server.hold(#"[{"name": "array-03"}]"#, holder: "ci/delta")
        clock.advance(by: .seconds(7))

        // History, newest first, with the protocol's names and fields.
        let all = try json(try await server.http("GET", "/v1/history"))
        let events = try #require(all["events"]?.arrayValue)
        try #require(events.count == 9, "\(all.serialized())")
        #expect(events.compactMap { $0["event"]?.stringValue } ==
                ["granted", "disabled", "revoked", "granted", "released", "granted", "released", "granted", "started"])
        #expect(events.allSatisfy { $0["at"]?.stringValue.flatMap(RFC3339.parse) != nil && $0["time"] == nil })
        #expect(all["next"] == .null)
        let revoked = events[2]
        #expect(revoked["reason"] == .string("rack move"))
        #expect(revoked["by"]?.stringValue?.hasPrefix("127.0.0.1:") == true)
        #expect(revoked["held_seconds"] == .double(20))
        #expect(revoked["holder"] == .string("dev/gamma"))
        #expect(events[1]["reason"] == .string("broken fan") && events[1]["resource"] == .string("array-02"))
        #expect(events[1]["by"]?.stringValue?.hasPrefix("127.0.0.1:") == true)
        #expect(events[4]["reason"] == .string("disconnect") && events[4]["held_seconds"] == .double(5))
        #expect(events[5]["waited_seconds"] == .double(10))
        #expect(events[6]["reason"] == .string("release") && events[6]["held_seconds"] == .double(10))
        #expect(events[6]["resources"]?.arrayValue?.first?["name"] == .string("array-01"))

        // Filters and pages.
        let array01 = try json(try await server.http("GET", "/v1/history?resource=array-01&limit=3"))
        #expect(array01["events"]?.arrayValue?.compactMap { $0["event"]?.stringValue } == ["released", "granted", "released"])
        let next = try #require(array01["next"]?.stringValue)
        let rest = try json(try await server.http("GET", "/v1/history?resource=array-01&limit=3&cursor=\(next)"))
        #expect(rest["events"]?.arrayValue?.compactMap { $0["holder"]?.stringValue } == ["ci/alpha"])
        #expect(rest["next"] == .null)
        let ci = try json(try await server.http("GET", "/v1/history?holder=ci%2F&limit=100"))
        #expect(Set(ci["events"]?.arrayValue?.compactMap { $0["holder"]?.stringValue } ?? []) == ["ci/alpha", "ci/beta", "ci/delta"])
        let switches = try json(try await server.http("GET", "/v1/history?type=switch"))
        #expect(switches["events"]?.arrayValue?.compactMap { $0["event"]?.stringValue } == ["revoked", "granted"])
        let revokedAt = try #require(revoked["at"]?.stringValue)
        let upToRevoke = try json(try await server.http("GET", "/v1/history?until=\(revokedAt)&limit=1"))
        #expect(upToRevoke["events"]?.arrayValue?.first?["event"] == .string("revoked"))
        let fromRevoke = try json(try await server.http("GET", "/v1/history?since=\(revokedAt)"))
        #expect(fromRevoke["events"]?.arrayValue?.compactMap { $0["event"]?.stringValue } == ["granted", "disabled", "revoked"])

        let bad = try await server.http("GET", "/v1/history?limit=-1")
        #expect(bad.status == 400 && bad.body.contains("'limit'"))
        let badCursor = try await server.http("GET", "/v1/history?cursor=nonsense")
        #expect(badCursor.status == 400 && badCursor.body.contains("'cursor'"))
        let goneCursor = try await server.http("GET", "/v1/history?cursor=zzzzz-0")
        #expect(goneCursor.status == 410)

        // Usage over the last 24 hours (the default), by resource and by type.
        let usage = try json(try await server.http("GET", "/v1/usage"))
        #expect(usage["by"] == .string("resource"))
        let rows = try #require(usage["rows"]?.arrayValue)
        func row(_ name: String, in rows: [JSONValue]) -> JSONValue? { rows.first { $0["name"] == .string(name) } }
        let array = try #require(row("array-01", in: rows))
        #expect(array["held_seconds"] == .double(15))
        #expect(array["leases"] == .int(2))
        #expect(array["grant_wait_p50"] == .double(0))
        #expect(array["grant_wait_p95"] == .double(10))
        #expect(array["abnormal_ends"] == .int(1))
        #expect(array["failed_resets"] == .int(0))
        let share = (15.0 / 86_400.0 * 10_000).rounded() / 10_000
        #expect(array["share"] == .double(share))
        #expect(row("switch-01", in: rows)?["held_seconds"] == .double(20))
        #expect(row("switch-01", in: rows)?["abnormal_ends"] == .int(1))
        #expect(row("array-03", in: rows)?["held_seconds"] == .double(7))
        #expect(row("switch-02", in: rows)?["held_seconds"] == .double(0))
        #expect(row("switch-02", in: rows)?["grant_wait_p50"] == .null)
        #expect(rows.count == 5)

        let byType = try json(try await server.http("GET", "/v1/usage?by=type"))
        let types = try #require(byType["rows"]?.arrayValue)
        #expect(row("array", in: types)?["held_seconds"] == .double(22))
        #expect(row("array", in: types)?["leases"] == .int(3))
        let expectedShare = (22.0 / (86_400.0 * 3) * 10_000).rounded() / 10_000
        #expect(row("array", in: types)?["share"] == .double(expectedShare))
        #expect(row("switch", in: types)?["held_seconds"] == .double(20))

        // A window that ends before D's grant and starts after A's: only parts of the leases count.
        let aGranted = try #require(events[7]["at"]?.stringValue.flatMap(RFC3339.parse))
        let window = "since=\(RFC3339.format(milliseconds: aGranted + 5_000))&until=\(RFC3339.format(milliseconds: aGranted + 12_000))"
        let part = try json(try await server.http("GET", "/v1/usage?\(window)"))
        #expect(row("array-01", in: part["rows"]?.arrayValue ?? [])?["held_seconds"] == .double(7))
        #expect(row("array-01", in: part["rows"]?.arrayValue ?? [])?["leases"] == .int(1))
        let badUsage = try await server.http("GET", "/v1/usage?by=holder")
        #expect(badUsage.status == 400 && badUsage.body.contains("'by'"))
        d.close()
        await server.stop()
    }
}

/// A small deterministic generator for test data.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
