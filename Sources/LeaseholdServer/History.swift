import LeaseCore
import LeaseProtocol

/// `GET /v1/history` and `GET /v1/usage` (PROTOCOL.md, "History and usage"), answered from the
/// audit journal's files off the lease queue.
enum History {
    /// A 400 that names what was wrong with the query.
    struct BadQuery: Error, Equatable {
        let message: String
    }

    /// The query's parameters, decoded; unknown or repeated ones are refused.
    static func parameters(_ query: String?, allowed: Set<String>) throws(BadQuery) -> [String: String] {
        var values: [String: String] = [:]
        for pair in (query ?? "").split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(parts[0])
            guard let name = percentDecode(key.replacingOccurrences(of: "+", with: " ")) else {
                throw BadQuery(message: "the query has a bad percent-encoding")
            }
            guard allowed.contains(name) else {
                throw BadQuery(message: "unknown query parameter '\(String(name.prefix(40)))' (known: \(allowed.sorted().joined(separator: ", ")))")
            }
            guard values[name] == nil else { throw BadQuery(message: "'\(name)' is given twice") }
            guard let value = percentDecode(parts.count == 2 ? parts[1].replacingOccurrences(of: "+", with: " ") : "") else {
                throw BadQuery(message: "'\(name)' has a bad percent-encoding")
            }
            values[name] = value
        }
        return values
    }

    static func time(_ values: [String: String], _ name: String) throws(BadQuery) -> Int64? {
        guard let text = values[name], !text.isEmpty else { return nil }
        guard let milliseconds = RFC3339.parse(text) else {
            throw BadQuery(message: "'\(name)' must be an RFC 3339 time like 2026-12-07T15:00:00Z (got '\(String(text.prefix(40)))')")
        }
        return milliseconds
    }

    // MARK: history

    struct HistoryQuery: Equatable {
        var resource: String?
        var holder: String?
        var type: String?
        var since: Int64?
        var until: Int64?
        var limit = 100
        var cursor: JournalReader.Position?

        init() {}

        init(query: String?) throws(BadQuery) {
            let values = try parameters(query, allowed: ["resource", "holder", "type", "since", "until", "limit", "cursor"])
            func text(_ name: String) -> String? { values[name].flatMap { $0.isEmpty ? nil : $0 } }
            resource = text("resource")
            holder = text("holder")
            type = text("type")
            since = try time(values, "since")
            until = try time(values, "until")
            if let since, let until, since > until { throw BadQuery(message: "'since' is after 'until'") }
            if let limitText = text("limit") {
                guard let value = Int(limitText), value > 0 else {
                    throw BadQuery(message: "'limit' must be a positive whole number (got '\(String(limitText.prefix(20)))')")
                }
                limit = min(value, 1000)
            }
            if let cursorText = text("cursor") {
                guard let position = Self.parseCursor(cursorText) else {
                    throw BadQuery(message: "'cursor' is not one this server gave out (pass the 'next' of the previous answer as it is)")
                }
                cursor = position
            }
        }

        static func cursor(_ position: JournalReader.Position) -> String {
            "\(String(position.inode, radix: 36))-\(String(position.offset, radix: 36))"
        }

        static func parseCursor(_ text: String) -> JournalReader.Position? {
            let parts = text.split(separator: "-", omittingEmptySubsequences: false)
            guard parts.count == 2, parts.allSatisfy({ !$0.isEmpty && $0.count <= 13 }),
                  let inode = UInt64(parts[0], radix: 36), let offset = Int64(parts[1], radix: 36), offset >= 0,
                  cursor(JournalReader.Position(inode: inode, offset: offset)) == text else { return nil }
            return JournalReader.Position(inode: inode, offset: offset)
        }

        /// The bytes every matching line contains (a cheap first pass before parsing), if any.
        var needle: [UInt8]? {
            if let resource { return JSONValue.string(resource).serializedBytes() }
            if let type { return Array(#""type":"#.utf8) + JSONValue.string(type).serializedBytes() }
            if let holder {
                // The holder as it appears escaped inside the JSON string.
                let quoted = JSONValue.string(holder).serializedBytes()
                return Array(quoted.dropFirst().dropLast())
            }
            return nil
        }

        func matches(_ event: JSONValue) -> Bool {
            if let resource, !History.resourceNames(event).contains(resource) { return false }
            if let type, !History.resourceTypes(event).contains(type) { return false }
            if let holder {
                guard let text = event["holder"]?.stringValue, text.contains(holder) else { return false }
            }
            return true
        }
    }

    struct Page {
        var events: [JSONValue]
        var next: String?

        var json: JSONValue {
            .object([("events", .array(events)), ("next", next.map(JSONValue.string) ?? .null)])
        }
    }

    /// Journal events newest first, filtered, at most `query.limit`, from before the cursor.
    static func history(_ query: HistoryQuery, reader: borrowing JournalReader) -> Page {
        var events: [JSONValue] = []
        var last: JournalReader.Position?
        var full = false
        let slack: Int64 = 5_000
        reader.backward(before: query.cursor, needle: query.needle, stopAfterChunk: { firstLine in
            guard let since = query.since, let time = JournalReader.lineTime(firstLine) else { return false }
            return time < since - slack
        }) { line, position in
            guard let time = JournalReader.lineTime(line) else { return true }
            if let until = query.until, time > until { return true }
            if let since = query.since, time < since { return true }
            guard let parsed = try? JSONValue.parse(Array(line), maxDepth: 8), let event = Self.event(from: parsed),
                  query.matches(event) else { return true }
            events.append(event)
            last = position
            if events.count >= query.limit {
                full = true
                return false
            }
            return true
        }
        return Page(events: events, next: full ? last.map(HistoryQuery.cursor) : nil)
    }

    /// A journal line as a history event: `time` becomes `at`; admin actions become `disabled`,
    /// `enabled` and `reloaded` (a `free` is told by the `revoked` event it caused, whose `by`
    /// names the admin); nil for lines that are not events.
    static func event(from line: JSONValue) -> JSONValue? {
        guard case .object(var members) = line, let name = line["event"]?.stringValue else { return nil }
        guard let timeIndex = members.firstIndex(where: { $0.0 == "time" }) else { return nil }
        members[timeIndex].0 = "at"
        guard name == "admin" else { return .object(members) }
        let renamed: String
        switch line["action"]?.stringValue {
        case "disable": renamed = "disabled"
        case "enable": renamed = "enabled"
        case "reload": renamed = "reloaded"
        case "reset": renamed = "reset_requested"
        default: return nil
        }
        var out: [(String, JSONValue)] = []
        for (key, value) in members where key != "action" {
            switch key {
            case "event": out.append(("event", .string(renamed)))
            case "peer": out.append(("by", value))
            default: out.append((key, value))
            }
        }
        return .object(out)
    }

    /// The resources a line names: `resources` (objects with `name`, or names) or `resource`.
    static func resourceNames(_ event: JSONValue) -> [String] {
        var names: [String] = []
        if case .array(let items)? = event["resources"] {
            for item in items {
                if let name = item.stringValue ?? item["name"]?.stringValue { names.append(name) }
            }
        }
        if let name = event["resource"]?.stringValue { names.append(name) }
        return names
    }

    static func resourceTypes(_ event: JSONValue) -> [String] {
        var types: [String] = []
        if case .array(let items)? = event["resources"] {
            for item in items { if let type = item["type"]?.stringValue { types.append(type) } }
        }
        if let type = event["type"]?.stringValue { types.append(type) }
        return types
    }

    // MARK: usage

    enum Grouping: String { case resource, type }

    struct UsageQuery: Equatable {
        var since: Int64
        var until: Int64
        var by: Grouping

        init(since: Int64, until: Int64, by: Grouping) {
            self.since = since
            self.until = until
            self.by = by
        }

        /// `now`: Unix milliseconds; the default window is the last 24 hours.
        init(query: String?, now: Int64) throws(BadQuery) {
            let values = try parameters(query, allowed: ["since", "until", "by"])
            until = try time(values, "until") ?? now
            since = try time(values, "since") ?? until - 86_400_000
            guard since < until else { throw BadQuery(message: "'since' must be before 'until'") }
            switch values["by"] ?? "" {
            case "", "resource": by = .resource
            case "type": by = .type
            case let other: throw BadQuery(message: "'by' must be resource or type (got '\(String(other.prefix(20)))')")
            }
        }
    }

    /// A granted lease the table holds now (what the journal has not ended yet).
    struct CurrentLease {
        var id: String
        var grantedAt: Int64
        var resources: [String]
    }

    /// Why a lease ended that counts as abnormal (PROTOCOL.md, "Resetting hardware").
    static let abnormalReasons: Set<String> = ["disconnect", "dead_peer", "expired", "revoked", "protocol"]

    struct Row {
        var heldMilliseconds: Int64 = 0
        var leases = 0
        var waits: [Double] = []
        var abnormalEnds = 0
        var failedResets = 0
        /// Something was counted in it (a row outside the inventory is reported only then).
        var touched = false
    }

    /// Usage per resource (or type) over the window. Reads the journal from `since` to its end:
    /// a lease ended after the window by an end line (which carries `held_seconds`) is counted
    /// for the part of it inside the window; one that has not ended is in `current`.
    /// `inventory`: name → type of every resource now (rows for idle ones, and types' sizes).
    /// With `index`, the journal's stretches that its summaries cover are not read line by line
    /// (`UsageIndex`); the answer is the same.
    static func usage(_ query: UsageQuery, reader: borrowing JournalReader, index: UsageIndex.Store? = nil,
                      inventory: [(name: String, type: String)], current: [CurrentLease], now: Int64) -> JSONValue {
        var stats = UsageIndex.Stats()
        return usage(query, reader: reader, index: index, inventory: inventory, current: current, now: now, stats: &stats)
    }

    static func usage(_ query: UsageQuery, reader: borrowing JournalReader, index: UsageIndex.Store?,
                      inventory: [(name: String, type: String)], current: [CurrentLease], now: Int64,
                      stats: inout UsageIndex.Stats) -> JSONValue {
        var tally = UsageTally(query: query, inventory: inventory, current: current)
        // As `reader.forward(fromMilliseconds: query.since)` reads: files whose last line is
        // older than `since` are skipped, the others from a line a little before it.
        for file in reader.files.reversed() {
            let length = reader.completeLength(file)
            if let last = reader.lastLineTime(file, length: length), last < query.since { continue }
            var position = reader.bisect(file, length: length, for: query.since)
            if let summaries = index?.load(file, reader: reader) {
                stats.indexedFiles += 1
                var cache = [Int](repeating: -1, count: summaries.names.count)
                for entry in summaries.entries where entry.end > position {
                    if entry.start >= position, let inside = entry.usable(for: query),
                       let bucket = summaries.bucket(entry), tally.canApply(bucket, names: summaries.names) {
                        tally.apply(bucket, names: summaries.names, inside: inside, cache: &cache)
                        stats.appliedBuckets += 1
                    } else {
                        let from = max(position, entry.start)
                        stats.scannedBytes += entry.end - from
                        reader.forward(in: file, from: from, to: entry.end) { line, _ in tally.line(line) }
                    }
                    position = entry.end
                }
            }
            stats.scannedBytes += length - position
            reader.forward(in: file, from: position, to: length) { line, _ in tally.line(line) }
        }
        return tally.finish(inventory: inventory, current: current, now: now)
    }

    /// Nearest rank: the smallest value with at least `fraction` of the values at or below it.
    static func percentile(_ sorted: [Double], _ fraction: Double) -> Double? {
        guard !sorted.isEmpty else { return nil }
        let rank = Int((fraction * Double(sorted.count)).rounded(.up))
        return sorted[min(sorted.count, max(1, rank)) - 1]
    }
}
