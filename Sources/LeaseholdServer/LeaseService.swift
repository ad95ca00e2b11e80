import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import LeaseCore
import LeaseProtocol
import Logging
import Transport

/// Owns the lease table on one serial queue. Sessions and admin routes call in from their loops;
/// the table's effects go back out to the sessions' loops. Nothing else touches the table.
final class LeaseService: @unchecked Sendable {
    let queue = DispatchQueue(label: "leasehold.leases")
    private var table: LeaseTable
    private var sessions: [LeaseID: SessionEntry] = [:]
    private let clock: ServerClock
    private let logger: Logger
    let metrics: Metrics
    private let timer: LoopTimer
    private var timerArmedFor: Tick?
    private var nextRawID: UInt64
    private let shutdown: ShutdownFlag
    private let idLock = DispatchQueue(label: "leasehold.lease-ids")

    let watch: WatchHub

    /// The I/O side of a lease: where its effects go. Holder, arrival and grant time are the
    /// table's (`LeaseFacts`).
    private struct SessionEntry {
        let session: LeaseSession
        let loop: EventLoop
        /// In the order the client sent it (the table keeps a dictionary); kept only when there is
        /// an audit journal to write it to.
        let meta: [(String, String)]
        /// In the queue (counted in `waitingTotal` and `waitingByAddress`).
        var queued = false
        /// Asked while the queue was full: it could only be granted at once.
        var queueWasFull = false
    }

    /// The most waiters in all and from one client address; past them a request that cannot be
    /// granted at once fails (as with `wait: 0`) instead of queueing.
    struct WaiterLimits {
        var total = 10_000
        var perAddress = 2_000
    }
    private let waiterLimits: WaiterLimits
    private var waitingTotal = 0
    private var waitingByAddress: [String: Int] = [:]

    private func countWaiting(_ entry: SessionEntry, _ delta: Int) {
        waitingTotal += delta
        let count = waitingByAddress[entry.session.peerHost, default: 0] + delta
        waitingByAddress[entry.session.peerHost] = count > 0 ? count : nil
    }

    /// A logger whose lines carry the lease id, holder and peer (built only when logging, so a
    /// held lease does not keep a metadata dictionary around).
    private func leaseLogger(_ id: LeaseID, _ entry: SessionEntry, holder: String) -> Logger {
        var leaseLogger = logger
        leaseLogger[metadataKey: "lease.id"] = .string(Self.format(id))
        leaseLogger[metadataKey: "lease.holder"] = .string(holder)
        leaseLogger[metadataKey: "connection.peer"] = .string(entry.session.peer)
        return leaseLogger
    }

    private let epochFile: EpochFile?
    let journal: AuditJournal?

    init(inventory: Inventory, epochFile: EpochFile?, journal: AuditJournal?, clock: ServerClock, logger: Logger,
         metrics: Metrics, shutdown: ShutdownFlag, waiterLimits: WaiterLimits = WaiterLimits()) throws(LeaseCore.InventoryError) {
        self.shutdown = shutdown
        self.waiterLimits = waiterLimits
        self.journal = journal
        self.clock = clock
        self.logger = logger
        self.metrics = metrics
        self.epochFile = epochFile
        table = try LeaseTable(inventory: inventory, epochs: epochFile?.seeds ?? [:], now: clock.now())
        var generator = SystemRandomNumberGenerator()
        // Ids unlikely to repeat across restarts, so a log line names one lease.
        nextRawID = (generator.next() as UInt64) >> 24
        watch = WatchHub(queue: queue, clock: clock)
        let tick = TimerTarget()
        timer = clock.source.makeTimer(queue: queue) { tick.service?.tick() }
        tick.service = self
        watch.render = { [unowned self] in self.snapshotJSON() }
    }

    /// The table and the sessions are this queue's alone (checked in debug builds).
    @inline(__always)
    private func assertOnQueue() {
        #if DEBUG
        dispatchPrecondition(condition: .onQueue(queue))
        #endif
    }

    static func format(_ id: LeaseID) -> String {
        "L" + String(id.raw, radix: 36)
    }

    func newLeaseID() -> LeaseID {
        idLock.sync {
            nextRawID &+= 1
            return LeaseID(nextRawID)
        }
    }

    // MARK: from sessions (any loop)

    func acquire(_ id: LeaseID, _ request: AcquireRequest, session: LeaseSession) {
        guard let loop = session.loop else { return }
        let asked = Request(
            want: request.want.map(Self.coreGroup),
            holder: session.tokenName.map { "\($0)/" + (request.holder ?? session.peer) } ?? request.holder ?? session.peer,
            meta: Dictionary(request.meta, uniquingKeysWith: { _, last in last }),
            peer: session.peer,
            // Clamped to 10^9 s (31 years, "as long as it takes"): 10^12 s in nanoseconds overflows Int64.
            wait: request.wait.map { Duration.nanoseconds(Int64(min($0, 1e9) * 1e9)) })
        queue.async { [self] in
            var coreRequest = asked
            let now = clock.now()
            var entry = SessionEntry(session: session, loop: loop, meta: journal == nil ? [] : request.meta)
            if waitingTotal >= waiterLimits.total || waitingByAddress[session.peerHost, default: 0] >= waiterLimits.perAddress {
                coreRequest.wait = .zero
                entry.queueWasFull = true
            }
            sessions[id] = entry
            if logger.logLevel <= .info {
                leaseLogger(id, entry, holder: coreRequest.holder).info("acquire", metadata: ["want": .string(request.want.map { $0.json.serialized() }.joined(separator: ","))])
            }
            let effects = table.acquire(id, coreRequest, now: now)
            apply(effects, now: now)
        }
    }

    func release(_ id: LeaseID, reason: ReleaseReason) {
        queue.async { [self] in
            let now = clock.now()
            guard let facts = table.facts(of: id),
                  end(id, .released(shutdown.isSet ? .shutdown : reason), facts, now: now) != nil else { return }
            let effects = table.release(id, now: now)
            apply(effects, now: now)
            // The table changed even when nobody was waiting for what was freed (no effects).
            markChanged()
        }
    }

    // MARK: admin (any queue; completion on the service queue)

    enum AdminAction { case free(reason: String), disable(reason: String), enable }

    func admin(_ action: AdminAction, resource: String, completion: @escaping @Sendable (AdminResult) -> Void) {
        queue.async { [self] in
            let now = clock.now()
            let result: AdminResult
            let effects: [Effect]
            switch action {
            case .free(let reason):
                (result, effects) = table.revoke(resource: resource, reason: reason, now: now)
            case .disable(let reason):
                (result, effects) = table.disable(resource: resource, reason: reason, now: now)
            case .enable:
                (result, effects) = table.enable(resource: resource, now: now)
            }
            apply(effects, now: now)
            if result == .ok { markChanged() }
            completion(result)
        }
    }

    func reload(_ inventory: Inventory, completion: @escaping @Sendable (ReloadResult) -> Void) {
        queue.async { [self] in
            let now = clock.now()
            let result = table.reload(inventory, now: now)
            if case .applied(let effects) = result {
                apply(effects, now: now)
                markChanged()
            }
            completion(result)
        }
    }

    // MARK: effects

    private func apply(_ effects: [Effect], now: Tick) {
        assertOnQueue()
        for effect in effects {
            let id = effect.lease
            guard var entry = sessions[id] else { continue }
            var resources: [LeaseProtocol.GrantedResource] = []
            switch effect {
            case .granted(_, let granted):
                if shutdown.isSet {
                    // Every connection is closing: a grant now would reach nobody (and count a
                    // grant and an epoch for it). The waiter leaves instead; what it would have
                    // had stays free.
                    let facts = table.facts(of: id).map { LeaseFacts(holder: $0.holder, arrivedAt: $0.arrivedAt, grantedAt: nil) }
                    if let facts { end(id, .released(.shutdown), facts, now: now) }
                    var freed: [Effect] = []
                    table.release(id, now: now, into: &freed)
                    apply(freed, now: now)
                    continue
                }
                if entry.queued {
                    entry.queued = false
                    countWaiting(entry, -1)
                    sessions[id] = entry
                }
                guard let facts = table.facts(of: id) else { continue }
                let unsaved = reserveEpochs(granted, for: id, entry, holder: facts.holder)
                if !unsaved.isEmpty {
                    withhold(id, entry, facts, unsaved: unsaved, now: now)
                    continue
                }
                if let journal {
                    var line: [(String, JSONValue)] = [
                        ("event", .string("granted")), ("lease", .string(Self.format(id))), ("holder", .string(facts.holder)),
                        ("peer", .string(entry.session.peer)),
                    ]
                    if let token = entry.session.tokenName { line.append(("token", .string(token))) }
                    line += [
                        ("resources", .array(granted.map { .object([("name", .string($0.name)), ("epoch", .int(Int64(clamping: $0.epoch)))]) })),
                        ("meta", .object(entry.meta.map { ($0.0, .string($0.1)) })),
                        ("waited_seconds", .double(Self.seconds(now.duration(since: facts.arrivedAt)))),
                    ]
                    journal.record(line)
                }
                resources = granted.map(Self.wireResource)
                metrics.grants += 1
                metrics.grantWait.observe(Self.seconds(now.duration(since: facts.arrivedAt)))
                if logger.logLevel <= .info { leaseLogger(id, entry, holder: facts.holder).info("granted", metadata: [
                    "resources": .string(granted.map { "\($0.name)#\($0.epoch)" }.joined(separator: ",")),
                ]) }
            case .revoked(_, let reason, let facts):
                end(id, .revoked(reason), facts, now: now)
            case .failed(_, let why, let facts):
                end(id, .failed(why), facts, now: now)
            case .queued:
                entry.queued = true
                countWaiting(entry, 1)
                sessions[id] = entry
            case .positionChanged:
                break
            }
            let session = entry.session
            let granted = resources
            var failure: String?
            if case .failed(_, .waitTimeout(let heldBy), let facts) = effect {
                failure = waitTimeoutMessage(heldBy: heldBy, facts: facts, queueWasFull: entry.queueWasFull, now: now)
            }
            entry.loop.execute { [failure] in session.deliver(effect, granted: granted, waitTimeoutMessage: failure) }
        }
        if !effects.isEmpty { markChanged() }
        armTimer()
    }

    /// What a waiter that gave up is told: how long it waited and who held what it still needed,
    /// or that the queue was full when it asked.
    private func waitTimeoutMessage(heldBy: [LeaseID], facts: LeaseFacts, queueWasFull: Bool, now: Tick) -> String {
        if queueWasFull {
            return "the queue is full (at most \(waiterLimits.total) waiters, \(waiterLimits.perAddress) from one address) and the request cannot be granted now; try again later"
        }
        var message = "not granted within the requested wait (waited \(StatusPage.duration(now.nanoseconds - facts.arrivedAt.nanoseconds)))"
        let shown = heldBy.prefix(5).map { id -> String in
            let holder = table.facts(of: id)?.holder ?? "?"
            guard case .granted(let names)? = table.lease(id) else { return "lease \(Self.format(id)) of \(holder)" }
            return "lease \(Self.format(id)) of \(holder) (\(names.joined(separator: ", ")))"
        }
        if !shown.isEmpty {
            message += "; held by " + shown.joined(separator: "; ")
            if heldBy.count > shown.count { message += "; and \(heldBy.count - shown.count) more leases" }
        }
        return message
    }

    /// Makes the grant's epochs durable before it is sent; returns the names whose epoch could
    /// not be (with why). A fencing token that can repeat after a crash is worse than none.
    private func reserveEpochs(_ granted: [LeaseCore.GrantedResource], for id: LeaseID, _ entry: SessionEntry,
                               holder: String) -> [(name: String, failure: String)] {
        guard let epochFile else { return [] }
        var unsaved: [(name: String, failure: String)] = []
        for resource in granted {
            let (safe, failure) = epochFile.reserve(name: resource.name, epoch: resource.epoch)
            guard let failure else { continue }
            if safe {
                leaseLogger(id, entry, holder: holder).critical("fencing epochs cannot be saved; the next grant of this resource will be withheld", metadata: [
                    "resource": .string(resource.name), "error": .string(failure),
                ])
            } else {
                unsaved.append((resource.name, failure))
            }
        }
        return unsaved
    }

    /// A grant whose epochs cannot be made durable is not sent: the resources that need the
    /// write are disabled (so nobody cycles through them), the rest of the lease is freed, and
    /// the connection closes with 1011.
    private func withhold(_ id: LeaseID, _ entry: SessionEntry, _ facts: LeaseFacts,
                          unsaved: [(name: String, failure: String)], now: Tick) {
        end(id, .withheld(names: unsaved.map(\.name), error: unsaved.map(\.failure).first ?? ""), facts, now: now)
        var effects: [Effect] = []
        for (name, failure) in unsaved {
            _ = table.disable(resource: name, reason: "its fencing epoch could not be saved: \(failure)", now: now, into: &effects)
        }
        table.release(id, now: now, into: &effects)
        let session = entry.session
        entry.loop.execute { session.withhold(reason: "fencing epochs cannot be saved") }
        apply(effects, now: now)
        markChanged()
    }

    /// How a lease, or a place in the queue, ended.
    private enum Ending {
        /// The connection released, closed, died or the server stopped.
        case released(ReleaseReason)
        case revoked(String)
        case failed(FailureReason)
        /// Granted by the table but never sent (see `withhold`).
        case withheld(names: [String], error: String)
    }

    /// The one end of every lease and every waiter: takes the session out and writes the log
    /// line, the journal line and the metrics, once. A second end of the same lease finds no
    /// session and does nothing. Returns the entry that ended.
    @discardableResult
    private func end(_ id: LeaseID, _ ending: Ending, _ facts: LeaseFacts, now: Tick) -> SessionEntry? {
        assertOnQueue()
        guard let entry = sessions.removeValue(forKey: id) else { return nil }
        if entry.queued { countWaiting(entry, -1) }
        func log(_ level: Logger.Level, _ message: Logger.Message, _ metadata: Logger.Metadata) {
            guard logger.logLevel <= level else { return }  // no lease logger built for nothing
            leaseLogger(id, entry, holder: facts.holder).log(level: level, message, metadata: metadata)
        }
        var line: [(String, JSONValue)] = [("lease", .string(Self.format(id))), ("holder", .string(facts.holder))]
        let held = ("held_seconds", JSONValue.double(Self.seconds(now.duration(since: facts.grantedAt ?? now))))
        let waited = ("waited_seconds", JSONValue.double(Self.seconds(now.duration(since: facts.arrivedAt))))
        switch ending {
        case .released(let reason) where facts.grantedAt != nil:
            metrics.releases[reason, default: 0] += 1
            log(.info, "released", ["reason": .string(reason.rawValue)])
            line = [("event", .string("released"))] + line + [("reason", .string(reason.rawValue)), held]
        case .released(let reason):
            log(.info, "left the queue", ["reason": .string(reason.rawValue)])
            line = [("event", .string("left_queue"))] + line + [("reason", .string(reason.rawValue)), waited]
        case .revoked(let reason):
            metrics.revokes += 1
            metrics.releases[.revoked, default: 0] += 1
            log(.notice, "revoked", ["reason": .string(reason)])
            line = [("event", .string("revoked"))] + line + [("reason", .string(reason)), held]
        case .failed(let why):
            let (code, message): (String, String)
            switch why {
            case .unsatisfiable(let text): (code, message) = ("unsatisfiable", text)
            case .waitTimeout(let heldBy):
                (code, message) = ("wait_timeout", waitTimeoutMessage(heldBy: heldBy, facts: facts, queueWasFull: entry.queueWasFull, now: now))
            }
            log(.info, "failed", ["code": .string(code), "why": .string(message)])
            line = [("event", .string("failed"))] + line + [("code", .string(code)), ("reason", .string(message)), waited]
        case .withheld(let names, let error):
            log(.critical, "grant withheld: its fencing epochs cannot be saved; the resources stay disabled until an admin enables them", [
                "resources": .string(names.joined(separator: ",")), "error": .string(error),
            ])
            line = [("event", .string("grant_withheld"))] + line + [("disabled", .array(names.map { .string($0) })), ("error", .string(error))]
        }
        journal?.record(line)
        return entry
    }

    private func tick() {
        timerArmedFor = nil
        let now = clock.now()
        let effects = table.tick(now: now)
        apply(effects, now: now)
        armTimer()
    }

    private func armTimer() {
        guard let next = table.nextDeadline else { return }
        if let armed = timerArmedFor, armed <= next { return }
        timerArmedFor = next
        timer.schedule(at: UInt64(clamping: next.nanoseconds))
    }

    // MARK: status

    /// Marks the table changed: watchers get a snapshot soon (at most ten a second).
    private func markChanged() {
        watch.changed()
    }

    /// The status document (same as a watch snapshot). Call on `queue`.
    func snapshotJSON() -> [UInt8] {
        assertOnQueue()
        return StatusDocument.render(table.snapshot(), clock: clock)
    }

    /// Call on `queue`.
    func snapshot() -> Snapshot { table.snapshot() }

    /// Prometheus text; gauges are read from the table now. Call on `queue`.
    func metricsText(connections: Int) -> String {
        assertOnQueue()
        metrics.leases = table.grantedLeaseCount
        metrics.waiters = table.waiterCount
        var counts: [Metrics.ResourceCountKey: Int] = [:]
        let present = table.resourceCounts()
        for type in Set(present.map(\.type)) {
            for state in ResourceState.allCases { counts[Metrics.ResourceCountKey(type: type, state: state.rawValue)] = 0 }
        }
        for count in present {
            counts[Metrics.ResourceCountKey(type: count.type, state: count.state.rawValue)] = count.count
        }
        metrics.resourceCounts = counts
        return metrics.render(connections: connections)
    }


    // MARK: conversions

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.saturatedNanoseconds) / 1e9
    }

    static func wireGroup(_ group: Group) -> WantGroup {
        switch group {
        case .name(let name): return .name(name)
        case .type(let type, let labels, let count): return .type(type, labels: labels, count: count)
        }
    }

    static func coreGroup(_ group: WantGroup) -> Group {
        switch group {
        case .name(let name): return .name(name)
        case .type(let type, let labels, let count): return .type(type, labels: labels, count: count)
        }
    }

    static func wireResource(_ resource: LeaseCore.GrantedResource) -> LeaseProtocol.GrantedResource {
        LeaseProtocol.GrantedResource(name: resource.name, type: resource.type, labels: resource.labels,
                                      attributes: resource.attributes, epoch: resource.epoch)
    }
}

/// Lets a timer made before its owner's init is done call back into it.
final class TimerTarget: @unchecked Sendable {
    weak var service: LeaseService?
}

/// The server's one clock: the event loops' monotonic time for the core and every timer, with a
/// fixed offset to render wall-clock timestamps.
struct ServerClock: Sendable {
    let source: LoopClock
    private let wallOffsetNanoseconds: Int64

    /// When this process's server started (the snapshot's `server.started`).
    let started: Tick

    init(_ source: LoopClock) {
        self.source = source
        wallOffsetNanoseconds = ServerClock.wallNanoseconds() &- Int64(clamping: source.now())
        started = Tick(nanoseconds: Int64(clamping: source.now()))
    }

    func now() -> Tick { Tick(nanoseconds: Int64(clamping: source.now())) }

    /// Milliseconds since the Unix epoch for a core time (what the page's script counts from).
    func unixMilliseconds(_ tick: Tick) -> Int64 {
        (tick.nanoseconds &+ wallOffsetNanoseconds) / 1_000_000
    }

    /// `2026-11-25T16:04:45Z` for a core time.
    func iso8601(_ tick: Tick) -> String {
        let seconds = (tick.nanoseconds + wallOffsetNanoseconds) / 1_000_000_000
        return ISO8601.format(unixSeconds: seconds)
    }

    static func wallNanoseconds() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec)
    }
}

enum ISO8601 {
    /// UTC calendar date from Unix seconds (civil-from-days, proleptic Gregorian).
    static func format(unixSeconds: Int64) -> String {
        let days = unixSeconds >= 0 ? unixSeconds / 86_400 : (unixSeconds - 86_399) / 86_400
        let secondsOfDay = unixSeconds - days * 86_400
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        func two(_ value: Int64) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(year)-\(two(month))-\(two(day))T\(two(secondsOfDay / 3600)):\(two(secondsOfDay / 60 % 60)):\(two(secondsOfDay % 60))Z"
    }
}
