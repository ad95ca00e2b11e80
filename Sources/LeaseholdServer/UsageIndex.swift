import CPosix
import LeaseProtocol
#if canImport(Glibc)
import Glibc
#endif

/// Summaries of the audit journal that let `GET /v1/usage` skip reading most of it.
///
/// Each journal file is cut into buckets: runs of whole lines, a new one at each hour (`span`)
/// the lines' times enter (and after `maxLines`). A bucket's summary is what folding its lines
/// into a `History.UsageTally` does, as far as that does not depend on the query: the grants'
/// counts and wait samples per resource list, the abnormal ends and failed resets, the time held
/// by leases both granted and ended in it, and, lease by lease, the ends of leases granted before
/// it and the grants still open at its end (what links it to the buckets around it). A query
/// uses a bucket's summary when all its lines are inside the window (or all after it) and folds
/// the lines of the others (the partial hours at the window's edges, the unsummarised tail of
/// the live file) as before, so the answer is exactly the full scan's: wait percentiles come
/// from the same samples, held time from the same grant and end times. A bucket whose lines the
/// summary cannot stand for (a restart without state, a lease id seen twice or not the
/// server's) is marked and always read.
///
/// The summaries of a journal file live in `DIRECTORY/INODE.usage` (the inode survives
/// rotation's renames), with a header naming the file's inode, how much of it they cover and a
/// fingerprint of those bytes, and a checksum per part: an index that does not match its file
/// (replaced, truncated, another file on a reused inode) or is corrupt is ignored (the lines are
/// read) and rebuilt. Indexes are built off the query path (`UsageIndexer`), for closed files
/// whole and for the live file up to its last whole bucket.
enum UsageIndex {
    /// What a query used (for tests and the benchmark's notes).
    struct Stats {
        var indexedFiles = 0
        var appliedBuckets = 0
        var scannedBytes: Int64 = 0
    }

    static let magic = Array("LHUSAGE1".utf8)
    static let version: UInt64 = 1
    static let headerSize = 64

    /// One bucket's place in its journal file.
    struct Entry: Equatable {
        var start: Int64
        var end: Int64
        /// The earliest and latest time of its lines (nil: no line has one).
        var times: ClosedRange<Int64>?
        /// Its summary cannot stand for its lines: they are always read.
        var complex: Bool
        var dataOffset: Int64
        var dataLength: Int
        var checksum: UInt64

        /// nil when the query must read the bucket's lines; else whether they are all inside the
        /// window (true) or all after it (false: only held time, clipped, counts).
        func usable(for query: History.UsageQuery) -> Bool? {
            guard !complex else { return nil }
            guard let times else { return false }
            if times.lowerBound >= query.since, times.upperBound < query.until { return true }
            if times.lowerBound >= query.until { return false }
            return nil
        }
    }

    /// A bucket's summary; names are indexes into its file's name table. Resource lists and wait
    /// samples are ranges of two shared arrays (a query reads hundreds of thousands of them).
    struct Bucket: Equatable {
        struct Grants: Equatable {
            var resources: Range<Int>
            var count: Int
            var waits: Range<Int>
        }
        struct End: Equatable {
            var lease: UInt64
            var at: Int64
            var heldMilliseconds: Int64
            var resources: Range<Int>
        }
        struct Open: Equatable {
            var lease: UInt64
            var at: Int64
            var resources: Range<Int>
        }
        struct Count: Equatable {
            var resources: Range<Int>
            var count: Int
        }
        struct Held: Equatable {
            var name: Int
            var milliseconds: Int64
        }
        struct Learned: Equatable {
            var name: Int
            var type: Int
        }
        /// The resource lists' names, one list after the other.
        var lists: [Int] = []
        /// The grants' wait samples.
        var waits: [Double] = []
        /// The latest time of a line usage reads.
        var lastTime: Int64?
        /// name → type, for names whose type a line gave (the first).
        var learned: [Learned] = []
        /// Names a line gave without a type before any line of the bucket gave one.
        var untyped: [Int] = []
        var grants: [Grants] = []
        var abnormal: [Count] = []
        /// Failed resets per name (a list of one).
        var failedResets: [Count] = []
        /// Held time of leases granted and ended in the bucket, per name.
        var held: [Held] = []
        /// Ends of leases not granted in the bucket, in order.
        var ends: [End] = []
        /// Leases granted and ended in the bucket.
        var closed: [UInt64] = []
        /// Leases granted in the bucket and not ended in it.
        var open: [Open] = []

        mutating func list(_ names: [Int]) -> Range<Int> {
            lists += names
            return (lists.count - names.count)..<lists.count
        }
    }
}

// MARK: building

extension UsageIndex {
    /// Interned strings (resource names and types) of one journal file's index.
    struct NameTable {
        var names: [String] = []
        var ids: [String: Int] = [:]

        init(_ names: [String] = []) {
            self.names = names
            for (index, name) in names.enumerated() { ids[name] = index }
        }

        mutating func id(_ name: String) -> Int {
            if let id = ids[name] { return id }
            names.append(name)
            ids[name] = names.count - 1
            return names.count - 1
        }
    }

    /// Folds one bucket's lines into its summary (the parts of `History.UsageTally.line` that do
    /// not depend on the query).
    struct BucketBuilder {
        let start: Int64
        var hour: Int64?
        var lines = 0
        var times: ClosedRange<Int64>?
        var complex = false
        var lastTime: Int64?
        var learned: [String: String] = [:]
        var untyped: Set<String> = []
        var grants: [[String]: (count: Int, waits: [Double])] = [:]
        var abnormal: [[String]: Int] = [:]
        var failedResets: [String: Int] = [:]
        var held: [String: Int64] = [:]
        var localOpen: [UInt64: (at: Int64, resources: [String])] = [:]
        /// Leases granted or ended here: a second line for one makes the bucket complex.
        var seen: Set<UInt64> = []
        var ends: [(lease: UInt64, at: Int64, heldMilliseconds: Int64, resources: [String])] = []
        var closed: [UInt64] = []

        init(start: Int64) { self.start = start }

        mutating func add(_ line: UnsafeRawBufferPointer, time: Int64?) {
            lines += 1
            guard let time else { return }
            times = times.map { min($0.lowerBound, time)...max($0.upperBound, time) } ?? time...time
            guard let event = JournalReader.lineEvent(line), History.usageEvents.contains(event),
                  let fields = History.UsageFields(line) else { return }
            lastTime = max(lastTime ?? time, time)
            switch event {
            case "granted":
                guard let lease = fields.lease else { return }
                let names = learn(fields)
                guard case .number(let id) = LeaseKey(lease), seen.insert(id).inserted else { complex = true; return }
                localOpen[id] = (time, names)
                grants[names, default: (0, [])].count += 1
                if let waited = fields.waited { grants[names, default: (0, [])].waits.append(waited) }
            case "released", "revoked", "expired":
                guard let lease = fields.lease, let heldSeconds = fields.held else { return }
                var resources = learn(fields)
                guard case .number(let id) = LeaseKey(lease) else { complex = true; return }
                if let opened = localOpen.removeValue(forKey: id) {
                    if resources.isEmpty { resources = opened.resources }
                    let overlap = time - opened.at
                    if overlap > 0 { for name in resources { held[name, default: 0] += overlap } }
                    closed.append(id)
                } else {
                    // The lease's start comes from the query's state: its resources must be here.
                    guard seen.insert(id).inserted, !resources.isEmpty else { complex = true; return }
                    ends.append((id, time, History.milliseconds(heldSeconds), resources))
                }
                if History.isAbnormal(event: event, reason: fields.reason) { abnormal[resources, default: 0] += 1 }
            case "started":
                if fields.state == false { complex = true }
            case "reset":
                if fields.result == "failed", let name = fields.resource {
                    failedResets[name, default: 0] += 1
                    if learned[name] == nil { untyped.insert(name) }
                }
            default:
                break
            }
        }

        private mutating func learn(_ fields: History.UsageFields) -> [String] {
            fields.resources.map { resource in
                if let type = resource.type {
                    if learned[resource.name] == nil { learned[resource.name] = type }
                } else if learned[resource.name] == nil {
                    untyped.insert(resource.name)
                }
                return resource.name
            }
        }

        /// The summary, names interned into `table`; sorted, so the same lines give the same bytes.
        func bucket(_ table: inout NameTable) -> Bucket {
            var bucket = Bucket()
            bucket.lastTime = lastTime
            func list(_ names: [String]) -> Range<Int> { bucket.list(names.map { table.id($0) }) }
            bucket.learned = learned.sorted { $0.key < $1.key }.map { .init(name: table.id($0.key), type: table.id($0.value)) }
            bucket.untyped = untyped.sorted().map { table.id($0) }
            for (resources, grants) in self.grants.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
                // Zeros first (as they are stored).
                let start = bucket.waits.count
                bucket.waits += grants.waits.filter { $0.bitPattern == 0 } + grants.waits.filter { $0.bitPattern != 0 }
                bucket.grants.append(.init(resources: list(resources), count: grants.count, waits: start..<bucket.waits.count))
            }
            bucket.abnormal = abnormal.sorted { $0.key.lexicographicallyPrecedes($1.key) }.map { .init(resources: list($0.key), count: $0.value) }
            bucket.failedResets = failedResets.sorted { $0.key < $1.key }.map { .init(resources: list([$0.key]), count: $0.value) }
            bucket.held = held.sorted { $0.key < $1.key }.map { .init(name: table.id($0.key), milliseconds: $0.value) }
            bucket.ends = ends.map { .init(lease: $0.lease, at: $0.at, heldMilliseconds: $0.heldMilliseconds, resources: list($0.resources)) }
            bucket.closed = closed
            bucket.open = localOpen.sorted { $0.key < $1.key }.map { .init(lease: $0.key, at: $0.value.at, resources: list($0.value.resources)) }
            return bucket
        }
    }
}

// MARK: using

extension History.UsageTally {
    /// Whether `bucket`'s summary stands for its lines in this query: by type, a name that a line
    /// gave without a type must have a known one already (else the line counted under "?").
    func canApply(_ bucket: UsageIndex.Bucket, names: [String]) -> Bool {
        guard query.by == .type else { return true }
        return bucket.untyped.allSatisfy { typeOf[names[$0]] != nil }
    }

    /// Folds a bucket in from its summary: what folding its lines in would do. `inside`: its
    /// lines are all in the window (else all after it). `cache`: name index → row, per file.
    mutating func apply(_ bucket: UsageIndex.Bucket, names: [String], inside: Bool, cache: inout [Int]) {
        for learned in bucket.learned where typeOf[names[learned.name]] == nil {
            typeOf[names[learned.name]] = names[learned.type]
        }
        func row(_ name: Int) -> Int {
            if cache[name] >= 0 { return cache[name] }
            let index = self.row(names[name])
            if query.by == .resource || typeOf[names[name]] != nil { cache[name] = index }
            return index
        }
        func distinct(_ resources: Range<Int>, _ body: (Int) -> Void) {
            if resources.count == 1 { return body(row(bucket.lists[resources.lowerBound])) }
            var seen = Set<Int>()
            for name in bucket.lists[resources] {
                let index = row(name)
                if seen.insert(index).inserted { body(index) }
            }
        }
        if inside {
            for grants in bucket.grants {
                distinct(grants.resources) { index in
                    rows[index].leases += grants.count
                    rows[index].waits += bucket.waits[grants.waits]
                    rows[index].touched = true
                }
            }
            for counted in bucket.abnormal {
                distinct(counted.resources) { index in
                    rows[index].abnormalEnds += counted.count
                    rows[index].touched = true
                }
            }
            for counted in bucket.failedResets {
                distinct(counted.resources) { index in
                    rows[index].failedResets += counted.count
                    rows[index].touched = true
                }
            }
            for held in bucket.held { addHeld(held.milliseconds, row: row(held.name)) }
        }
        for end in bucket.ends {
            let key = LeaseKey.number(end.lease)
            let opened = open.removeValue(forKey: key)
            ended(key)
            let overlap = overlap(from: opened?.at ?? end.at - end.heldMilliseconds, to: end.at)
            if overlap > 0 { for name in bucket.lists[end.resources] { addHeld(overlap, row: row(name)) } }
        }
        for lease in bucket.closed {
            let key = LeaseKey.number(lease)
            open.removeValue(forKey: key)
            ended(key)
        }
        for lease in bucket.open {
            open[.number(lease.lease)] = History.OpenLease(at: lease.at, resources: .indexed(names, bucket.lists[lease.resources]))
        }
        if let time = bucket.lastTime { lastTime = max(lastTime, time) }
    }
}
