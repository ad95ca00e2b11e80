import Foundation
import LeaseCore
import LeaseProtocol
@testable import LeaseholdServer
import Testing

/// Usage from summaries (`UsageIndex`) is exactly usage from reading every line: on random
/// scripted journals (rotated, with a torn tail, restarts, odd lines), for windows that start and
/// end inside buckets, with indexes that are stale, corrupt or partial.
/// Serialized, and yielding between queries: the work is synchronous and heavy for a debug build,
/// and the other suites' servers and clients need the cooperative threads meanwhile.
@Suite(.serialized) struct UsageIndexTests {
    static let span: Int64 = 60_000
    /// A whole "hour" (bucket span) as the journal's start.
    static let start: Int64 = 1_796_600_000_000 - 1_796_600_000_000 % 60_000

    func temporaryDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "leasehold-usage-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// A scripted journal: its lines (oldest first), the inventory, the leases held at its end.
    struct Script {
        var lines: [String] = []
        var inventory: [(name: String, type: String)] = []
        var current: [History.CurrentLease] = []
        var end: Int64 = 0
    }

    static func script(seed: UInt64, lines count: Int = 1000, from start: Int64 = start) -> Script {
        var random = SplitMix(seed: seed)
        func chance(_ percent: UInt64) -> Bool { random.next() % 100 < percent }
        var script = Script()
        let names = (1...8).map { "array-0\($0)" } + (1...6).map { "switch-0\($0)" } + ["ghost-1", "ghost-2"]
        func type(_ name: String) -> String { String(name.prefix { $0 != "-" }) }
        // The ghosts are not in the inventory; the journal gives ghost-1's type only sometimes.
        script.inventory = names.filter { !$0.hasPrefix("ghost") }.map { ($0, type($0)) }
        var time = start
        var counter: UInt64 = 100
        var open: [(lease: String, at: Int64, resources: [String])] = []
        func emit(_ fields: [(String, JSONValue)]) {
            script.lines.append(JSONValue.object([("time", .string(RFC3339.format(milliseconds: time)))] + fields).serialized())
        }
        func resourcesValue(_ resources: [String], epoch: Bool) -> JSONValue {
            .array(resources.map { name in
                if name == "ghost-2" || (name == "ghost-1" && chance(50)) { return chance(50) ? .string(name) : .object([("name", .string(name))]) }
                return .object([("name", .string(name)), ("type", .string(type(name)))] + (epoch ? [("epoch", .int(1))] : []))
            })
        }
        emit([("event", .string("started")), ("version", .string("1")), ("state", .bool(true))])
        for _ in 0..<count {
            // Mostly seconds apart, sometimes a quiet stretch of several buckets, sometimes a
            // line a little out of order (two writers).
            time += chance(3) ? Int64(random.next() % 400_000) : chance(5) ? -Int64(random.next() % 4) : Int64(random.next() % 9_000)
            let roll = random.next() % 100
            switch roll {
            case 0..<40:
                counter += 1
                var lease = LeaseService.format(LeaseID(counter))
                if chance(2) { lease = "job-\(counter)" }                         // not the server's
                if chance(1) { lease = "L" + String(100 + random.next() % counter, radix: 36) }   // a repeat
                var resources: [String] = []
                for _ in 0..<(chance(20) ? 2 + Int(random.next() % 2) : 1) {
                    let name = names[Int(random.next() % UInt64(names.count))]
                    if !resources.contains(name) || chance(10) { resources.append(name) }
                }
                open.append((lease, time, resources))
                var fields: [(String, JSONValue)] = [("event", .string("granted")), ("lease", .string(lease)),
                                                    ("holder", .string(chance(10) ? "quote\"d\\n" : "ci/job-\(counter)")),
                                                    ("resources", resourcesValue(resources, epoch: true))]
                if !chance(10) { fields.append(("waited_seconds", .double(chance(60) ? 0 : Double(random.next() % 90_000) / 1000))) }
                emit(fields)
            case 40..<78:
                guard !open.isEmpty else { continue }
                let lease = open.remove(at: Int(random.next() % UInt64(open.count)))
                var held = Double(time - lease.at) / 1000
                if chance(5) { held += Double(random.next() % 20_000) / 1000 }          // a held_seconds that disagrees
                let event = ["released", "released", "released", "revoked", "expired"][Int(random.next() % 5)]
                var fields: [(String, JSONValue)] = [("event", .string(event)), ("lease", .string(lease.lease))]
                if !chance(5) { fields.append(("resources", resourcesValue(lease.resources, epoch: false))) }
                if event == "released" { fields.append(("reason", .string(chance(70) ? "release" : "disconnect"))) }
                if event == "revoked" { fields.append(("reason", .string("freed"))) }
                fields.append(("held_seconds", .double(held)))
                emit(fields)
                if chance(2) { emit(fields) }                                             // ended twice
            case 78..<84:
                counter += 1
                emit([("event", .string("released")), ("lease", .string(LeaseService.format(LeaseID(counter)))),
                      ("reason", .string("timeout")), ("waited_seconds", .double(3))])    // a waiter gave up
            case 84..<90:
                let name = chance(30) ? "ghost-1" : names[Int(random.next() % UInt64(names.count))]
                emit([("event", .string("reset")), ("resource", .string(name)), ("result", .string(chance(50) ? "failed" : "ok"))])
            case 90..<92:
                let kept = chance(50)
                emit([("event", .string("started")), ("version", .string("1")), ("state", .bool(kept))])
                if !kept { open = [] }
            case 92..<95:
                emit([("event", .string("admin")), ("action", .string("disable")), ("resource", .string(names[0]))])
            case 95:
                script.lines.append("not json at all")
            case 96:
                script.lines.append(#"{"time":"2026-13-45T99:00:00Z","event":"granted","lease":"L1"}"#)
            default:
                emit([("event", .string("granted")), ("lease", .string("Lbroken")), ("resources", .string("x"))])
            }
        }
        script.end = time
        // Held now: most of what is open, one granted a little later than the journal says, one
        // the journal has already ended, one from before the journal.
        for (index, lease) in open.enumerated() where index % 4 != 3 {
            script.current.append(History.CurrentLease(id: lease.lease, grantedAt: lease.at + (index % 5 == 0 ? 7 : 0), resources: lease.resources))
        }
        script.current.append(History.CurrentLease(id: LeaseService.format(LeaseID(101)), grantedAt: start + 1000, resources: ["array-01"]))
        script.current.append(History.CurrentLease(id: "L0", grantedAt: start - 3_600_000, resources: ["switch-01"]))
        return script
    }

    /// The script as a rotated journal: `path.N` … `path.1`, `path` (with a torn last line).
    static func write(_ lines: [String], to path: String, files: Int = 3, torn: Bool = true) throws {
        let size = (lines.count + files - 1) / files
        for index in 0..<files {
            let part = lines[min(lines.count, index * size)..<min(lines.count, (index + 1) * size)]
            var text = part.map { $0 + "\n" }.joined()
            let name = index == files - 1 ? path : "\(path).\(files - 1 - index)"
            if index == files - 1, torn { text += #"{"time":"2026-12-01T10:00:01.000Z","event":"released","lease":"L1","hol"# }
            try text.write(toFile: name, atomically: false, encoding: .utf8)
        }
    }

    /// Windows: from before the journal, on bucket edges, inside buckets, near the end; until
    /// the end, inside the journal, before a bucket edge.
    static func windows(_ script: Script) -> [History.UsageQuery] {
        let last = script.end + 5_000
        var queries: [History.UsageQuery] = []
        let sinces: [Int64] = [start - 86_400_000, start, start + 3 * span, start + 3 * span + 17_123, start + 7 * span - 1,
                               (start + last) / 2, last - span - 2_500, last - 2_000]
        let untils: [Int64] = [last + 86_400_000, (start + last) / 2 + 31_337, start + 20 * span]
        for since in sinces {
            for until in untils where since < until {
                for by in [History.Grouping.resource, .type] { queries.append(History.UsageQuery(since: since, until: until, by: by)) }
            }
        }
        return queries
    }

    /// Every window's answer as usage was computed before summaries (and as it is without them).
    func reference(_ script: Script, path: String) async -> [String] {
        var answers: [String] = []
        for query in Self.windows(script) {
            await Task.yield()
            let reader = JournalReader(files: JournalFile.openAll(path: path, keep: 5), chunkSize: 4096)
            let now = script.end + 9_000
            let expected = Self.usage(query, reader: reader, inventory: script.inventory, current: script.current, now: now).serialized()
            let full = History.usage(query, reader: reader, inventory: script.inventory, current: script.current, now: now).serialized()
            #expect(full == expected, "\(query)")
            answers.append(expected)
        }
        return answers
    }

    /// Every window's answer with `store` must be the reference; returns how many buckets the
    /// summaries stood in for.
    @discardableResult
    func expectSame(_ script: Script, _ expected: [String], path: String, store: UsageIndex.Store, _ comment: String) async -> Int {
        var applied = 0
        for (query, expected) in zip(Self.windows(script), expected) {
            await Task.yield()
            let reader = JournalReader(files: JournalFile.openAll(path: path, keep: 5), chunkSize: 4096)
            var stats = UsageIndex.Stats()
            let indexed = History.usage(query, reader: reader, index: store, inventory: script.inventory, current: script.current,
                                        now: script.end + 9_000, stats: &stats).serialized()
            #expect(indexed == expected, "\(comment): \(query)")
            applied += stats.appliedBuckets
        }
        return applied
    }

    func refresh(_ store: UsageIndex.Store, path: String, now: Int64? = nil) {
        let reader = JournalReader(files: JournalFile.openAll(path: path, keep: 5), chunkSize: 4096)
        store.refresh(reader: reader, now: now, minimumTail: 0)
    }

    @Test(arguments: [1, 2, 3, 4])
    func summariesGiveTheFullScansAnswers(_ seed: UInt64) async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/audit.jsonl"
        let script = Self.script(seed: seed)
        try Self.write(script.lines, to: path)
        let store = UsageIndex.Store(directory: directory + "/index", span: Self.span)
        let expected = await reference(script, path: path)
        // Without an index: read in full.
        #expect(await expectSame(script, expected, path: path, store: store, "no index") == 0)
        refresh(store, path: path)
        let indexes = try FileManager.default.contentsOfDirectory(atPath: directory + "/index")
        #expect(indexes.filter { $0.hasSuffix(".usage") }.count == 3, "\(indexes)")
        #expect(await expectSame(script, expected, path: path, store: store, "indexed") > 100)
        // The live file's last bucket too, once the clock is past its hour.
        refresh(store, path: path, now: script.end + 10 * Self.span)
        #expect(await expectSame(script, expected, path: path, store: store, "indexed to the end") > 100)
    }

    @Test func aStaleOrCorruptIndexIsIgnoredAndRebuilt() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/audit.jsonl"
        var script = Self.script(seed: 11)
        try Self.write(script.lines, to: path)
        let store = UsageIndex.Store(directory: directory + "/index", span: Self.span)
        refresh(store, path: path)
        let files = JournalFile.openAll(path: path, keep: 5)
        let inodes = files.map(\.inode)
        for file in files { close(file.fd) }

        // A rotated file rewritten in place (same inode, other lines): its index is stale.
        let other = Self.script(seed: 12)
        let oldest = try String(contentsOfFile: path + ".2", encoding: .utf8)
        let replacement = other.lines.prefix(400).map { $0 + "\n" }.joined()
        try replacement.write(toFile: path + ".2", atomically: false, encoding: .utf8)
        script.lines = Array(other.lines.prefix(400)) + script.lines.dropFirst(oldest.split(separator: "\n").count)
        let reader = JournalReader(files: JournalFile.openAll(path: path, keep: 5))
        #expect(reader.files.last?.inode == inodes.last)
        #expect(store.load(try #require(reader.files.last), reader: reader) == nil)
        let expected = await reference(script, path: path)
        await expectSame(script, expected, path: path, store: store, "stale")

        // Corrupt bytes in a bucket of another file's index: that bucket is read, the index dropped.
        let victim = store.path(inodes[1])
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: victim)))
        bytes[bytes.count - 5] ^= 0x5A
        try Data(bytes).write(to: URL(fileURLWithPath: victim))
        await expectSame(script, expected, path: path, store: store, "corrupt bucket")
        #expect(!FileManager.default.fileExists(atPath: victim))
        // Corrupt names, a garbage file, an empty one: ignored.
        refresh(store, path: path)
        for damage in [{ (bytes: inout [UInt8]) in bytes[70] ^= 0x01 }, { $0 = Array($0.prefix(40)) }, { $0 = [] },
                       { $0 = Array(repeating: 0xFF, count: 5000) }] {
            var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: victim)))
            damage(&bytes)
            try Data(bytes).write(to: URL(fileURLWithPath: victim))
            let reader = JournalReader(files: JournalFile.openAll(path: path, keep: 5))
            #expect(store.load(reader.files[1], reader: reader) == nil)
            await expectSame(script, expected, path: path, store: store, "corrupt file")
            refresh(store, path: path)
            #expect(store.load(reader.files[1], reader: reader) != nil)
        }
        #expect(await expectSame(script, expected, path: path, store: store, "rebuilt") > 100)
    }

    @Test func theLiveFilesIndexGrowsWithItAndFollowsItThroughRotation() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/audit.jsonl"
        let script = Self.script(seed: 21, lines: 2400)
        let store = UsageIndex.Store(directory: directory + "/index", span: Self.span)
        // The live file written in three steps (the torn line repaired each time, as the
        // journal does when it opens), indexed after each.
        let third = script.lines.count / 3
        var partial = script
        for step in 1...3 {
            partial.lines = Array(script.lines.prefix(step * third))
            try Self.write(partial.lines, to: path, files: 1, torn: step < 3)
            refresh(store, path: path)
            await expectSame(partial, await reference(partial, path: path), path: path, store: store, "step \(step)")
        }
        // Rotation: the live file becomes `.1` (same inode, same index, now extended to its end)
        // and a new live file starts.
        try FileManager.default.moveItem(atPath: path, toPath: path + ".1")
        var rotated = script
        let more = Self.script(seed: 22, lines: 300, from: script.end + 1000)
        rotated.lines = partial.lines + more.lines.dropFirst()
        rotated.end = more.end
        try more.lines.dropFirst().map { $0 + "\n" }.joined().write(toFile: path, atomically: false, encoding: .utf8)
        let expected = await reference(rotated, path: path)
        #expect(await expectSame(rotated, expected, path: path, store: store, "rotated") > 0)
        refresh(store, path: path)
        #expect(await expectSame(rotated, expected, path: path, store: store, "rotated and refreshed") > 0)
        // An index of a file that is gone is removed.
        try FileManager.default.removeItem(atPath: path + ".1")
        refresh(store, path: path)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory + "/index").filter { $0.hasSuffix(".usage") }.count == 1)
    }

    @Test func aBucketsSummaryRoundTripsThroughItsBytes() throws {
        var table = UsageIndex.NameTable()
        var builder = UsageIndex.BucketBuilder(start: 0)
        for line in Self.script(seed: 31, lines: 300).lines {
            let bytes = Array(line.utf8)
            bytes.withUnsafeBytes { builder.add($0, time: JournalReader.lineTime($0)) }
        }
        let bucket = builder.bucket(&table)
        #expect(!bucket.grants.isEmpty && !bucket.closed.isEmpty && !bucket.open.isEmpty)
        let base = builder.times?.lowerBound ?? 0
        let bytes = bucket.encoded(base: base)
        #expect(try UsageIndex.Bucket(decoding: bytes, base: base, nameCount: table.names.count) == bucket)
        // Cut short or with a name the table does not have: refused, never a trap.
        for cut in stride(from: 0, to: bytes.count, by: max(1, bytes.count / 50)) {
            #expect((try? UsageIndex.Bucket(decoding: Array(bytes.prefix(cut)), base: base, nameCount: table.names.count)) == nil)
        }
        #expect((try? UsageIndex.Bucket(decoding: bytes, base: base, nameCount: 1)) == nil)
    }

    /// Usage as it was computed before summaries (the reference the answers must equal), but
    /// for the rendering of the answer.
    static func usage(_ query: History.UsageQuery, reader: borrowing JournalReader, inventory: [(name: String, type: String)],
                      current: [History.CurrentLease], now: Int64) -> JSONValue {
        var typeOf: [String: String] = [:]
        for resource in inventory { typeOf[resource.name] = resource.type }
        var rows: [String: History.Row] = [:]
        /// Granted in the journal, not ended yet: lease → (grant time, resources).
        var open: [String: (at: Int64, resources: [String])] = [:]
        var ended = Set<String>()
        var lastTime: Int64 = query.since

        func key(_ name: String) -> String { query.by == .resource ? name : (typeOf[name] ?? "?") }
        /// The rows a lease of these resources counts in, once each.
        func distinctKeys(_ resources: [String]) -> [String] {
            if resources.count == 1 { return [key(resources[0])] }
            var seen = Set<String>()
            return resources.map(key).filter { seen.insert($0).inserted }
        }
        func hold(_ resources: [String], from start: Int64, to end: Int64) {
            let overlap = min(end, query.until) - max(start, query.since)
            guard overlap > 0 else { return }
            for name in resources { rows[key(name), default: History.Row()].heldMilliseconds += overlap }
        }

        reader.forward(fromMilliseconds: query.since) { line in
            guard let time = JournalReader.lineTime(line), time >= query.since - 5_000 else { return true }
            guard let event = JournalReader.lineEvent(line) else { return true }
            switch event {
            case "granted", "released", "revoked", "expired", "started", "reset": break
            default: return true
            }
            guard let fields = History.UsageFields(line) else { return true }
            defer { lastTime = max(lastTime, time) }
            func names() -> [String] {
                fields.resources.map { resource in
                    if typeOf[resource.name] == nil, let type = resource.type { typeOf[resource.name] = type }
                    return resource.name
                }
            }
            switch event {
            case "granted":
                guard let lease = fields.lease else { return true }
                let resources = names()
                open[lease] = (time, resources)
                if time >= query.since, time < query.until {
                    for rowKey in distinctKeys(resources) {
                        rows[rowKey, default: History.Row()].leases += 1
                        if let waited = fields.waited { rows[rowKey, default: History.Row()].waits.append(waited) }
                    }
                }
            case "released", "revoked", "expired":
                // A waiter's end carries `waited_seconds`, no `held_seconds`.
                guard let lease = fields.lease, let heldSeconds = fields.held else { return true }
                var resources = names()
                let opened = open.removeValue(forKey: lease)
                if resources.isEmpty { resources = opened?.resources ?? [] }
                ended.insert(lease)
                let start = opened?.at ?? time - History.milliseconds(heldSeconds)
                hold(resources, from: start, to: time)
                let reason = event == "released" ? fields.reason ?? "" : String(event)
                if time >= query.since, time < query.until, History.abnormalReasons.contains(reason) {
                    for rowKey in distinctKeys(resources) { rows[rowKey, default: History.Row()].abnormalEnds += 1 }
                }
            case "started":
                // A server that kept no state lost its leases with the previous process; their
                // hold ended (at the latest) when that process last wrote.
                if fields.state == false {
                    for (_, lease) in open { hold(lease.resources, from: lease.at, to: lastTime) }
                    open = [:]
                }
            case "reset":
                if time >= query.since, time < query.until, fields.result == "failed", let name = fields.resource {
                    rows[key(name), default: History.Row()].failedResets += 1
                }
            default:
                break
            }
            return true
        }
        // Held now: from the table (those granted before the journal's window too).
        for lease in current where !ended.contains(lease.id) {
            open.removeValue(forKey: lease.id)
            hold(lease.resources, from: lease.grantedAt, to: now)
        }
        // Granted in the journal but neither ended there nor held now (a line lost to a crash):
        // counted up to the journal's last line.
        for (_, lease) in open { hold(lease.resources, from: lease.at, to: lastTime) }

        return History.answer(query, inventory: inventory, rows: rows, key: key)
    }
}
