import LeaseCore
import LeaseProtocol

/// A lease id as the journal writes it: the server's `L…` as a number (so summaries can store
/// it compactly), anything else as it is.
enum LeaseKey: Hashable {
    case number(UInt64)
    case text(String)

    init(_ text: String) {
        if let id = LeaseService.parseID(text) { self = .number(id.raw) } else { self = .text(text) }
    }
}

extension History {
    /// The state of a usage computation: journal lines are folded into it one by one (`line`),
    /// or a stretch of them at once from its summary (`UsageIndex`, `apply`), oldest first.
    struct UsageTally {
        let query: UsageQuery
        /// name → type: the inventory's, and those the journal names for the others (the first).
        var typeOf: [String: String] = [:]
        var rowIndex: [String: Int] = [:]
        var rows: [Row] = []
        /// Granted in the journal, not ended yet: lease → (grant time, resources).
        var open: [LeaseKey: OpenLease] = [:]
        let currentLeases: Set<LeaseKey>
        /// The current leases the journal has ended (they count as ended, not as held now).
        var endedCurrent: Set<LeaseKey> = []
        /// The time of the last line that counts.
        var lastTime: Int64

        init(query: UsageQuery, inventory: [(name: String, type: String)], current: [CurrentLease]) {
            self.query = query
            for resource in inventory { typeOf[resource.name] = resource.type }
            currentLeases = Set(current.map { LeaseKey($0.id) })
            lastTime = query.since
        }

        func key(_ name: String) -> String { query.by == .resource ? name : (typeOf[name] ?? "?") }

        mutating func row(_ name: String) -> Int {
            let key = key(name)
            if let index = rowIndex[key] { return index }
            rows.append(Row())
            rowIndex[key] = rows.count - 1
            return rows.count - 1
        }

        /// The rows a lease of these resources counts in, once each.
        mutating func distinctRows(_ resources: [String]) -> [Int] {
            if resources.count == 1 { return [row(resources[0])] }
            var seen = Set<Int>()
            return resources.map { row($0) }.filter { seen.insert($0).inserted }
        }

        func overlap(from start: Int64, to end: Int64) -> Int64 {
            min(end, query.until) - max(start, query.since)
        }

        mutating func hold(_ resources: [String], from start: Int64, to end: Int64) {
            let overlap = overlap(from: start, to: end)
            guard overlap > 0 else { return }
            for name in resources { addHeld(overlap, row: row(name)) }
        }

        mutating func addHeld(_ milliseconds: Int64, row: Int) {
            rows[row].heldMilliseconds += milliseconds
            rows[row].touched = true
        }

        mutating func ended(_ lease: LeaseKey) {
            if currentLeases.contains(lease) { endedCurrent.insert(lease) }
        }

        /// Folds one journal line in (always true: the reader goes on).
        mutating func line(_ line: UnsafeRawBufferPointer) -> Bool {
            guard let time = JournalReader.lineTime(line), time >= query.since - 5_000 else { return true }
            guard let event = JournalReader.lineEvent(line), History.usageEvents.contains(event),
                  let fields = UsageFields(line) else { return true }
            defer { lastTime = max(lastTime, time) }
            let inWindow = time >= query.since && time < query.until
            switch event {
            case "granted":
                guard let lease = fields.lease else { return true }
                let resources = names(fields)
                open[LeaseKey(lease)] = OpenLease(at: time, resources: .names(resources))
                if inWindow {
                    for row in distinctRows(resources) {
                        rows[row].leases += 1
                        rows[row].touched = true
                        if let waited = fields.waited { rows[row].waits.append(waited) }
                    }
                }
            case "released", "revoked", "expired":
                // A waiter's end carries `waited_seconds`, no `held_seconds`.
                guard let lease = fields.lease, let heldSeconds = fields.held else { return true }
                let key = LeaseKey(lease)
                var resources = names(fields)
                let opened = open.removeValue(forKey: key)
                if resources.isEmpty { resources = opened?.resources.names ?? [] }
                ended(key)
                let start = opened?.at ?? time - History.milliseconds(heldSeconds)
                hold(resources, from: start, to: time)
                if inWindow, History.isAbnormal(event: event, reason: fields.reason) {
                    for row in distinctRows(resources) {
                        rows[row].abnormalEnds += 1
                        rows[row].touched = true
                    }
                }
            case "started":
                // A server that kept no state lost its leases with the previous process; their
                // hold ended (at the latest) when that process last wrote.
                if fields.state == false {
                    for (_, lease) in open { hold(lease.resources.names, from: lease.at, to: lastTime) }
                    open = [:]
                }
            case "reset":
                if inWindow, fields.result == "failed", let name = fields.resource {
                    let row = row(name)
                    rows[row].failedResets += 1
                    rows[row].touched = true
                }
            default:
                break
            }
            return true
        }

        /// The line's resource names; the types of those the inventory does not know are learned.
        mutating func names(_ fields: UsageFields) -> [String] {
            fields.resources.map { resource in
                if typeOf[resource.name] == nil, let type = resource.type { typeOf[resource.name] = type }
                return resource.name
            }
        }

        /// The answer: the leases still open are counted up to now (held now) or to the
        /// journal's last line (lost to a crash).
        mutating func finish(inventory: [(name: String, type: String)], current: [CurrentLease], now: Int64) -> JSONValue {
            // Held now: from the table (those granted before the journal's window too).
            for lease in current where !endedCurrent.contains(LeaseKey(lease.id)) {
                open.removeValue(forKey: LeaseKey(lease.id))
                hold(lease.resources, from: lease.grantedAt, to: now)
            }
            // Granted in the journal but neither ended there nor held now (a line lost to a crash):
            // counted up to the journal's last line.
            for (_, lease) in open { hold(lease.resources.names, from: lease.at, to: lastTime) }

            var touched: [String: Row] = [:]
            for (name, index) in rowIndex where rows[index].touched { touched[name] = rows[index] }
            return History.answer(query, inventory: inventory, rows: touched, key: key)
        }
    }

    /// The answer to a usage query: a row for every resource (or type) of the inventory, then
    /// one for every other name `rows` has, sorted.
    static func answer(_ query: UsageQuery, inventory: [(name: String, type: String)], rows: [String: Row],
                       key: (String) -> String) -> JSONValue {
        var sizes: [String: Int] = [:]
        var order: [String] = []
        for resource in inventory {
            let name = key(resource.name)
            if sizes[name] == nil { order.append(name) }
            sizes[name, default: 0] += 1
        }
        for name in rows.keys.sorted() where sizes[name] == nil { order.append(name) }
        let window = Double(query.until - query.since) / 1000
        let out: [JSONValue] = order.map { name in
            let row = rows[name] ?? Row()
            let held = Double(row.heldMilliseconds) / 1000
            let capacity = window * Double(query.by == .type ? max(1, sizes[name] ?? 1) : 1)
            let waits = row.waits.sorted()
            return .object([
                ("name", .string(name)),
                ("held_seconds", .double(held)),
                ("share", .double(capacity > 0 ? (held / capacity * 10_000).rounded() / 10_000 : 0)),
                ("leases", .int(Int64(row.leases))),
                ("grant_wait_p50", percentile(waits, 0.5).map(JSONValue.double) ?? .null),
                ("grant_wait_p95", percentile(waits, 0.95).map(JSONValue.double) ?? .null),
                ("abnormal_ends", .int(Int64(row.abnormalEnds))),
                ("failed_resets", .int(Int64(row.failedResets))),
            ])
        }
        return .object([
            ("since", .string(RFC3339.format(milliseconds: query.since))),
            ("until", .string(RFC3339.format(milliseconds: query.until))),
            ("by", .string(query.by.rawValue)),
            ("rows", .array(out)),
        ])
    }

    /// A lease granted in the journal and not ended (yet).
    struct OpenLease {
        enum Resources {
            case names([String])
            /// Names in a file's name table (no array of its own for each of many leases).
            case indexed([String], ArraySlice<Int>)

            var names: [String] {
                switch self {
                case .names(let names): names
                case .indexed(let table, let ids): ids.map { table[$0] }
                }
            }
        }
        var at: Int64
        var resources: Resources
    }

    /// The lines usage reads.
    static let usageEvents: Set<Substring> = ["granted", "released", "revoked", "expired", "started", "reset"]

    /// `held_seconds` as the milliseconds a lease's start is computed with.
    static func milliseconds(_ seconds: Double) -> Int64 {
        let value = (seconds * 1000).rounded()
        // A value no lease can have (and that Int64 cannot hold) is pinned rather than trapped on.
        guard value.isFinite else { return 0 }
        return Int64(max(-1e15, min(1e15, value)))
    }

    static func isAbnormal(event: Substring, reason: String?) -> Bool {
        abnormalReasons.contains(event == "released" ? reason ?? "" : String(event))
    }
}
