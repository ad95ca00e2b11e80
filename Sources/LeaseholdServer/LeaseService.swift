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
    let queue: DispatchQueue
    private var table: LeaseTable
    private var leases: [LeaseID: LeaseEntry] = [:]
    private let clock: ServerClock
    private let logger: Logger
    let metrics: Metrics
    private let timer: LoopTimer
    private var timerArmedFor: Tick?
    private var nextRawID: UInt64
    private let shutdown: ShutdownFlag
    private let idLock = DispatchQueue(label: "leasehold.lease-ids")
    let limits: Limits
    /// Where leases outlive the process (`--state-dir`); nil: they end with it.
    let store: LeaseStore?

    let watch: WatchHub
    /// Keeps the status document's unchanged parts between snapshots.
    let renderer: StatusRenderer

    /// The I/O side of a lease or waiter: where its effects go (nowhere while it is orphaned),
    /// and what the table does not keep. Holder, arrival and grant time are the table's
    /// (`LeaseFacts`).
    private struct LeaseEntry {
        /// nil while orphaned.
        var session: LeaseSession?
        /// The session's (set before it asks for anything).
        var loop: EventLoop? { session?.loop }
        let peer: String
        /// What per-address limits count by.
        let peerHost: String
        /// The resume token, while this process knows it: it makes it, or hears it in `resume`
        /// (after a restart only its hash is known). Never logged or stored.
        var secret: ResumeSecret
        /// In the queue (counted in `waitingTotal` and `waitingByAddress`).
        var queued = false
        /// Asked while the queue was full: it could only be granted at once.
        var queueWasFull = false
        /// What it was granted (for the journal's end line and per-type metrics).
        var granted: [(name: String, type: String)] = []
        /// What most leases never have, boxed: this table is the biggest cost per lease when tens
        /// of thousands are held.
        private var rare: Rare?

        private final class Rare {
            let tokenName: String?
            let meta: [(String, String)]
            let grace: Duration?
            let clientSubject: String?
            var revokeReason: String?
            var revokedBy: String?

            init(tokenName: String? = nil, meta: [(String, String)] = [], grace: Duration? = nil, clientSubject: String? = nil,
                 revokeReason: String? = nil, revokedBy: String? = nil) {
                self.tokenName = tokenName
                self.meta = meta
                self.grace = grace
                self.clientSubject = clientSubject
                self.revokeReason = revokeReason
                self.revokedBy = revokedBy
            }

            func copy() -> Rare {
                Rare(tokenName: tokenName, meta: meta, grace: grace, clientSubject: clientSubject,
                     revokeReason: revokeReason, revokedBy: revokedBy)
            }
        }

        init(session: LeaseSession?, peer: String, peerHost: String, tokenName: String?,
             meta: [(String, String)], secret: ResumeSecret, grace: Duration?,
             clientSubject: String? = nil, granted: [(name: String, type: String)] = []) {
            self.session = session
            self.peer = peer
            self.peerHost = peerHost
            self.secret = secret
            self.granted = granted
            if tokenName != nil || !meta.isEmpty || grace != nil || clientSubject != nil {
                rare = Rare(tokenName: tokenName, meta: meta, grace: grace, clientSubject: clientSubject)
            }
        }

        /// Changes the rare fields of this entry only (copied first if shared with another copy).
        private mutating func changeRare(_ change: (Rare) -> Void) {
            if rare == nil {
                rare = Rare()
            } else if !isKnownUniquelyReferenced(&rare) {
                rare = rare?.copy()
            }
            if let rare { change(rare) }
        }

        var tokenName: String? { rare?.tokenName }
        /// In the order the client sent it (the table keeps a dictionary); kept only when there
        /// is an audit journal or a store to write it to.
        var meta: [(String, String)] { rare?.meta ?? [] }
        /// How long it survives an abrupt end of its connection; nil: not at all.
        var grace: Duration? { rare?.grace }
        /// The verified client certificate's subject (mutual TLS), for the journal.
        var clientSubject: String? { rare?.clientSubject }
        /// Set once revoked while its client stops (`revoke_wait`).
        var revokeReason: String? {
            get { rare?.revokeReason }
            set { changeRare { $0.revokeReason = newValue } }
        }
        /// The admin's address that revoked it (nil: not revoked, or the server did: `max_hold`).
        var revokedBy: String? {
            get { rare?.revokedBy }
            set { changeRare { $0.revokedBy = newValue } }
        }
    }

    /// Server settings for the lease lifecycle.
    struct Limits {
        /// The most waiters in all and from one client address; past them a request that cannot
        /// be granted at once fails (as with `wait: 0`) instead of queueing.
        var waitersTotal = 10_000
        var waitersPerAddress = 2_000
        /// How long a lease kept over a restart waits for its client.
        var resumeGrace: Duration = .seconds(60)
        /// The largest `grace` an acquire may ask for (more is `bad_request`).
        var maxGrace: Double = 300
        /// The largest `revoke_wait` honoured (more is capped).
        var maxRevokeWait: Double = 60
        /// Reset commands running at once.
        var resetConcurrency = 4
    }
    private var waitingTotal = 0
    private var waitingByAddress: [String: Int] = [:]

    private func countWaiting(_ entry: LeaseEntry, _ delta: Int) {
        waitingTotal += delta
        let count = waitingByAddress[entry.peerHost, default: 0] + delta
        waitingByAddress[entry.peerHost] = count > 0 ? count : nil
    }

    /// A logger whose lines carry the lease id, holder and peer (built only when logging, so a
    /// held lease does not keep a metadata dictionary around).
    private func leaseLogger(_ id: LeaseID, _ entry: LeaseEntry, holder: String) -> Logger {
        var leaseLogger = logger
        leaseLogger[metadataKey: "lease.id"] = .string(Self.format(id))
        leaseLogger[metadataKey: "lease.holder"] = .string(holder)
        leaseLogger[metadataKey: "connection.peer"] = .string(entry.peer)
        return leaseLogger
    }

    private let epochFile: EpochFile?
    let journal: AuditJournal?
    let resetRunner: ResetRunner
    /// The latest reset of each resource (snapshots' `reset`, `GET …/reset`).
    private var resets: [String: ResetInfo] = [:]

    struct ResetInfo {
        enum Result: String { case running, ok, failed }
        var result: Result
        var at: Tick
        var detail: String
        var output: String
        var reason: String

        var json: JSONValue {
            .object([("result", .string(result.rawValue)), ("detail", .string(detail))])
        }
    }

    /// `store`: the state kept by a previous process is restored from it, its leases and waiters
    /// orphaned for `limits.resumeGrace` (or what remains of their own grace, if longer).
    /// `queue`: the service's own (the store calls back on it).
    init(queue: DispatchQueue = DispatchQueue(label: "leasehold.leases"), inventory: Inventory, epochFile: EpochFile?,
         journal: AuditJournal?, store: LeaseStore? = nil, clock: ServerClock,
         logger: Logger, metrics: Metrics, shutdown: ShutdownFlag, limits: Limits = Limits()) throws(StartupError) {
        self.queue = queue
        self.shutdown = shutdown
        self.limits = limits
        self.journal = journal
        self.clock = clock
        self.logger = logger
        self.metrics = metrics
        self.epochFile = epochFile
        self.store = store
        resetRunner = ResetRunner(concurrency: limits.resetConcurrency)
        let kept = try store?.load() ?? KeptState()
        let epochs = (epochFile?.seeds ?? [:]).merging(kept.epochs, uniquingKeysWith: max)
        do {
            table = try LeaseTable(inventory: inventory, epochs: epochs, now: clock.now())
        } catch {
            throw StartupError(message: "\(error)")
        }
        var generator = SystemRandomNumberGenerator()
        // Ids unlikely to repeat across restarts, so a log line names one lease; above every kept one.
        nextRawID = max((generator.next() as UInt64) >> 24, kept.leases.map(\.id.raw).max() ?? 0)
        watch = WatchHub(queue: queue, clock: clock)
        renderer = StatusRenderer(clock: clock)
        let tick = TimerTarget()
        timer = clock.source.makeTimer(queue: queue) { tick.service?.tick() }
        tick.service = self
        watch.prepare = { [unowned self] in self.statusRenderer() }
        if !kept.leases.isEmpty || !kept.disabled.isEmpty || !kept.resetting.isEmpty { queue.sync { restore(kept) } }
    }

    /// The table and the leases are this queue's alone (checked in debug builds).
    @inline(__always)
    private func assertOnQueue() {
        #if DEBUG
        dispatchPrecondition(condition: .onQueue(queue))
        #endif
    }

    static func format(_ id: LeaseID) -> String {
        "L" + String(id.raw, radix: 36)
    }

    /// `L…` as `format` writes it; nil for anything else.
    static func parseID(_ text: String) -> LeaseID? {
        guard text.hasPrefix("L"), text.utf8.count <= 14, let raw = UInt64(text.dropFirst(), radix: 36),
              format(LeaseID(raw)) == text else { return nil }
        return LeaseID(raw)
    }

    func newLeaseID() -> LeaseID {
        idLock.sync {
            nextRawID &+= 1
            return LeaseID(nextRawID)
        }
    }

    // MARK: from sessions (any loop)

    func acquire(_ id: LeaseID, _ request: AcquireRequest, session: LeaseSession) {
        guard session.loop != nil else { return }
        // The default holder: the client certificate's name under mutual TLS, else the address.
        let named = request.holder ?? session.clientCertificate?.name ?? session.peer
        let holder = session.tokenName.map { "\($0)/" + named } ?? named
        let asked = Request(
            want: request.want.map(Self.coreGroup),
            holder: holder,
            meta: Dictionary(request.meta, uniquingKeysWith: { _, last in last }),
            peer: session.peer,
            // Clamped to 10^9 s (31 years, "as long as it takes"): 10^12 s in nanoseconds overflows Int64.
            wait: request.wait.map(Self.duration),
            revokeWait: request.revokeWait.map { Self.duration(min($0, limits.maxRevokeWait)) },
            maxHold: request.maxHold.map(Self.duration))
        let token = ResumeToken.random()
        queue.async { [self] in
            var coreRequest = asked
            let now = clock.now()
            var entry = LeaseEntry(session: session, peer: session.peer, peerHost: session.peerHost,
                                   tokenName: session.tokenName,
                                   meta: journal == nil && store == nil ? [] : request.meta,
                                   secret: .token(token),
                                   grace: request.grace.flatMap { $0 > 0 ? Self.duration($0) : nil },
                                   clientSubject: session.clientCertificate?.subject)
            if waitingTotal >= limits.waitersTotal || waitingByAddress[session.peerHost, default: 0] >= limits.waitersPerAddress {
                coreRequest.wait = .zero
                entry.queueWasFull = true
            }
            leases[id] = entry
            if logger.logLevel <= .info {
                leaseLogger(id, entry, holder: coreRequest.holder).info("acquire", metadata: ["want": .string(request.want.map { $0.json.serialized() }.joined(separator: ","))])
            }
            store?.recordArrival(KeptLease(
                id: id, tokenHash: token.digest.hex, holder: coreRequest.holder, peer: entry.peer, peerHost: entry.peerHost,
                tokenName: entry.tokenName, want: request.want, meta: request.meta, arrivedAt: clock.wallNanoseconds(now),
                waitUntil: coreRequest.wait.map { clock.wallNanoseconds(now.advanced(by: $0)) },
                grace: request.grace, revokeWait: request.revokeWait.map { min($0, limits.maxRevokeWait) }, maxHold: request.maxHold))
            let effects = table.acquire(id, coreRequest, now: now)
            apply(effects, now: now)
        }
    }

    /// The connection of lease `id` ended. `abrupt`: without a release (no `release` op, no close
    /// frame with 1000); such a lease that asked for a `grace` is kept as an orphan instead.
    /// A connection that no longer carries the lease (resumed elsewhere) changes nothing.
    func release(_ id: LeaseID, reason: ReleaseReason, abrupt: Bool, session: LeaseSession) {
        queue.async { [self] in
            let now = clock.now()
            guard var entry = leases[id], entry.session === session else { return }
            // Restarting with a state directory: everything is kept for the next process.
            if shutdown.isSet && store != nil { return }
            if abrupt, !shutdown.isSet, let grace = entry.grace {
                var effects: [Effect] = []
                let until = now.advanced(by: grace)
                if table.orphan(id, until: until, now: now, into: &effects) {
                    entry.session = nil
                    leases[id] = entry
                    store?.recordOrphan(id, until: clock.wallNanoseconds(until))
                    journalLine(id, entry, "orphaned", [("reason", .string(reason.rawValue)), ("until", .string(clock.iso8601(until)))])
                    if logger.logLevel <= .info, let facts = table.facts(of: id) {
                        leaseLogger(id, entry, holder: facts.holder).info("orphaned", metadata: ["reason": .string(reason.rawValue), "until": .string(clock.iso8601(until))])
                    }
                    apply(effects, now: now)
                    markChanged()
                    return
                }
                apply(effects, now: now)
            }
            guard let facts = table.facts(of: id) else { return }
            let ending: Ending = entry.revokeReason.map { .revoked($0) } ?? .released(shutdown.isSet ? .shutdown : reason)
            guard end(id, ending, facts, now: now) != nil else { return }
            let effects = table.release(id, reason: shutdown.isSet ? .shutdown : reason, now: now)
            apply(effects, now: now)
            // The table changed even when nobody was waiting for what was freed (no effects).
            markChanged()
        }
    }

    /// A client takes a kept lease or waiter back (`{"op":"resume"}`): with the right token it
    /// moves to `session` (a connection that still had it is closed with 4002); otherwise the
    /// session is refused (4410).
    func resume(_ idText: String, token: String, session: LeaseSession) {
        guard let loop = session.loop else { return }
        let presented = TokenDigest(of: token)
        queue.async { [self] in
            let now = clock.now()
            guard let id = Self.parseID(idText), var entry = leases[id], entry.secret.accepts(presented) else {
                metrics.resumes["refused", default: 0] += 1
                logger.notice("resume refused", metadata: ["lease.id": .string(String(idText.prefix(20))), "connection.peer": .string(session.peer)])
                loop.execute { session.refuseResume("no lease \(idText.prefix(20)) is kept for this token") }
                return
            }
            guard entry.revokeReason == nil else {
                metrics.resumes["refused", default: 0] += 1
                loop.execute { session.refuseResume("lease \(idText) was revoked") }
                return
            }
            var effects: [Effect] = []
            let wasOrphan = table.phase(of: id) == .orphaned
            guard let resumption = table.resume(id, now: now, into: &effects) else { return }
            if let old = entry.session, old !== session, let oldLoop = entry.loop {
                oldLoop.execute { old.resumedElsewhere() }
            }
            entry.session = session
            if let known = ResumeToken(token) { entry.secret = .token(known) }
            leases[id] = entry
            if wasOrphan { store?.recordOrphan(id, until: nil) }
            metrics.resumes["ok", default: 0] += 1
            journalLine(id, entry, "resumed", [("peer", .string(session.peer))])
            if logger.logLevel <= .info, let facts = table.facts(of: id) {
                leaseLogger(id, entry, holder: facts.holder).info("resumed", metadata: ["connection.new_peer": .string(session.peer)])
            }
            let text = Self.format(id)
            let event: ServerEvent
            switch resumption {
            case .granted(let resources):
                event = .granted(lease: text, resources: resources.map(Self.wireResource), resume: token, expires: expiresText(id))
            case .waiting(let position):
                event = .queued(lease: text, position: position, resume: token)
            }
            deliver(entry, id, event)
            apply(effects, now: now)
            markChanged()
        }
    }

    /// A `resume` refused before it reached the service (no lease id at all).
    func countRefusedResume() {
        queue.async { [self] in metrics.resumes["refused", default: 0] += 1 }
    }

    /// Puts the leases and waiters a previous process kept back in the table, orphaned.
    private func restore(_ kept: KeptState) {
        let now = clock.now()
        var effects: [Effect] = []
        // Out of service before, out of service still (before anyone can be granted them).
        for (name, disabled) in kept.disabled.sorted(by: { $0.key < $1.key }) {
            if table.disable(resource: name, reason: disabled.reason, now: clock.tick(wallNanoseconds: disabled.since), into: &effects) == .notFound {
                store?.recordDisabled(name, nil)
            }
        }
        // Resets a stop or a crash interrupted run again, before anyone can be granted those.
        for (name, interrupted) in kept.resetting.sorted(by: { $0.key < $1.key }) {
            let result = table.beginReset(name, reason: interrupted.reason, lastHolder: interrupted.lastHolder, force: true,
                                          now: now, into: &effects)
            guard result != .started else { continue }
            store?.recordResetDone(name)
            if result != .notFound {
                let reason = "its reset was interrupted by a restart, and the inventory has no reset command for it now"
                _ = table.disable(resource: name, reason: reason, now: now, into: &effects)
                store?.recordDisabled(name, KeptState.Disabled(reason: reason, since: clock.wallNanoseconds(now)))
            }
        }
        var restored: [RestoredLease] = []
        for lease in kept.leases {
            if lease.revoking {
                // Revoked and waiting for its client to stop: the restart ended that connection.
                store?.recordEnd(lease.id)
                journal?.record([("event", .string("released")), ("lease", .string(Self.format(lease.id))),
                                 ("holder", .string(lease.holder)), ("reason", .string("revoked")),
                                 ("resources", .array((lease.grant?.resources ?? []).map { .object([("name", .string($0.name)), ("type", .string($0.type))]) })),
                                 ("held_seconds", .double(lease.grant.map { Self.seconds(now.duration(since: clock.tick(wallNanoseconds: $0.at))) } ?? 0))])
                continue
            }
            let grace = lease.grace.map(Self.duration) ?? .zero
            let ownUntil = lease.orphanUntil.map(clock.tick(wallNanoseconds:)) ?? now.advanced(by: grace)
            let until = max(now.advanced(by: limits.resumeGrace), ownUntil)
            let request = Request(want: lease.want.map(Self.coreGroup), holder: lease.holder,
                                  meta: Dictionary(lease.meta, uniquingKeysWith: { _, last in last }), peer: lease.peer,
                                  wait: nil, revokeWait: lease.revokeWait.map(Self.duration), maxHold: lease.maxHold.map(Self.duration))
            let grant = lease.grant.map { grant in
                RestoredLease.Grant(resources: grant.resources.map(Self.coreResource), grantedAt: clock.tick(wallNanoseconds: grant.at),
                                    expires: grant.expires.map(clock.tick(wallNanoseconds:)), holdLimit: grant.holdLimit.map { .nanoseconds($0) })
            }
            restored.append(RestoredLease(id: lease.id, request: request, arrivedAt: clock.tick(wallNanoseconds: lease.arrivedAt),
                                          deadline: lease.waitUntil.map(clock.tick(wallNanoseconds:)), grant: grant, orphanUntil: until))
            leases[lease.id] = LeaseEntry(session: nil, peer: lease.peer, peerHost: lease.peerHost, tokenName: lease.tokenName,
                                          meta: lease.meta, secret: TokenDigest(hex: lease.tokenHash).map { .digest($0) } ?? .none,
                                          grace: lease.grace.flatMap { $0 > 0 ? Self.duration($0) : nil },
                                          granted: (lease.grant?.resources ?? []).map { ($0.name, $0.type) })
            store?.recordOrphan(lease.id, until: clock.wallNanoseconds(until))
        }
        let refused = table.restore(restored, now: now, into: &effects)
        for id in refused {
            logger.critical("a kept lease names a resource another kept lease holds; it is dropped", metadata: ["lease.id": .string(Self.format(id))])
            leases[id] = nil
            store?.recordEnd(id)
        }
        for lease in restored where !refused.contains(lease.id) {
            if let entry = leases[lease.id], table.phase(of: lease.id) == .orphaned {
                journalLine(lease.id, entry, "orphaned", [("reason", .string("restart")), ("until", .string(clock.iso8601(lease.orphanUntil)))])
            }
        }
        logger.notice("leases restored from the state directory", metadata: [
            "leases": .stringConvertible(table.grantedLeaseCount), "waiters": .stringConvertible(table.waiterCount),
        ])
        apply(effects, now: now)
    }

    /// Seconds (as the protocol sends them) as a duration, clamped to 10^9 s.
    static func duration(_ seconds: Double) -> Duration {
        .nanoseconds(Int64(max(0, min(seconds, 1e9)) * 1e9))
    }

    // MARK: admin (any queue; completion on the service queue)

    enum AdminAction { case free(reason: String, now: Bool), disable(reason: String), enable }

    /// `by`: the admin's address (journalled as the `by` of the revocation a `free` causes).
    func admin(_ action: AdminAction, resource: String, by: String = "", completion: @escaping @Sendable (AdminResult) -> Void) {
        queue.async { [self] in
            let now = clock.now()
            let result: AdminResult
            let effects: [Effect]
            switch action {
            case .free(let reason, let immediately):
                (result, effects) = table.revoke(resource: resource, reason: reason, now: now, immediately: immediately)
                for effect in effects {
                    switch effect {
                    case .revoking(let id, _, _), .revoked(let id, _, _): leases[id]?.revokedBy = by
                    default: break
                    }
                }
            case .disable(let reason):
                (result, effects) = table.disable(resource: resource, reason: reason, now: now)
                if result == .ok, let disabled = table.resource(named: resource)?.disabled {
                    store?.recordDisabled(resource, KeptState.Disabled(reason: disabled.reason, since: clock.wallNanoseconds(disabled.since)))
                }
            case .enable:
                (result, effects) = table.enable(resource: resource, now: now)
                if result == .ok { store?.recordDisabled(resource, nil) }
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

    /// Calls `completion` (on the service queue) once everything the store was told is durable.
    func whenDurable(_ completion: @escaping @Sendable () -> Void) {
        queue.async { [self] in
            guard let store else { return completion() }
            store.whenDurable(completion)
        }
    }

    // MARK: effects

    /// Sends `event` (and the close that follows, if any) to the lease's connection, once what
    /// the store was told so far is durable: a client is never told of a grant a crash could
    /// forget. Deliveries keep their order.
    private func deliver(_ entry: LeaseEntry, _ id: LeaseID, _ event: ServerEvent?, close: (code: UInt16, reason: String)? = nil) {
        guard let session = entry.session, let loop = entry.loop else { return }
        let send = { loop.execute { session.deliver(id, event, close: close) } }
        if let store { store.whenDurable(send) } else { send() }
    }

    private func expiresText(_ id: LeaseID) -> String? {
        table.holdLimit(of: id).map { clock.iso8601Precise($0.expires) }
    }

    private func apply(_ effects: [Effect], now: Tick) {
        assertOnQueue()
        for effect in effects {
            let id = effect.lease
            guard var entry = leases[id] else { continue }
            let text = Self.format(id)
            switch effect {
            case .granted(_, let granted):
                if shutdown.isSet && store == nil {
                    // Every connection is closing: a grant now would reach nobody (and count a
                    // grant and an epoch for it). The waiter leaves instead; what it would have
                    // had stays free.
                    let facts = table.facts(of: id).map { LeaseFacts(holder: $0.holder, arrivedAt: $0.arrivedAt, grantedAt: nil) }
                    if let facts { end(id, .released(.shutdown), facts, now: now) }
                    var freed: [Effect] = []
                    table.release(id, reason: .shutdown, now: now, into: &freed)
                    apply(freed, now: now)
                    continue
                }
                if entry.queued {
                    entry.queued = false
                    countWaiting(entry, -1)
                }
                entry.granted = granted.map { ($0.name, $0.type) }
                leases[id] = entry
                guard let facts = table.facts(of: id) else { continue }
                let unsaved = reserveEpochs(granted, for: id, entry, holder: facts.holder)
                if !unsaved.isEmpty {
                    withhold(id, entry, facts, unsaved: unsaved, now: now)
                    continue
                }
                let limit = table.holdLimit(of: id)
                store?.recordGrant(id, KeptLease.Grant(
                    resources: granted.map(Self.wireResource), at: clock.wallNanoseconds(now),
                    expires: limit.map { clock.wallNanoseconds($0.expires) }, holdLimit: limit.map { $0.limit.saturatedNanoseconds }))
                if let journal {
                    var line: [(String, JSONValue)] = [
                        ("event", .string("granted")), ("lease", .string(text)), ("holder", .string(facts.holder)),
                        ("peer", .string(entry.peer)),
                    ]
                    if let token = entry.tokenName { line.append(("token", .string(token))) }
                    if let subject = entry.clientSubject { line.append(("client_certificate", .string(subject))) }
                    line += [
                        ("resources", .array(granted.map { .object([("name", .string($0.name)), ("type", .string($0.type)), ("epoch", .int(Int64(clamping: $0.epoch)))]) })),
                        ("meta", .object(entry.meta.map { ($0.0, .string($0.1)) })),
                        ("waited_seconds", .double(Self.seconds(now.duration(since: facts.arrivedAt)))),
                    ]
                    if let limit { line.append(("expires", .string(clock.iso8601Precise(limit.expires)))) }
                    journal.record(line)
                }
                metrics.grants += 1
                metrics.byType.granted(types: granted.map(\.type), wait: Self.seconds(now.duration(since: facts.arrivedAt)))
                if logger.logLevel <= .info { leaseLogger(id, entry, holder: facts.holder).info("granted", metadata: [
                    "resources": .string(granted.map { "\($0.name)#\($0.epoch)" }.joined(separator: ",")),
                ]) }
                deliver(entry, id, .granted(lease: text, resources: granted.map(Self.wireResource), resume: entry.secret.tokenText,
                                            expires: limit.map { clock.iso8601Precise($0.expires) }))
            case .revoking(_, let reason, let until):
                entry.revokeReason = reason
                leases[id] = entry
                store?.recordRevoking(id)
                journalLine(id, entry, "revoking", [("reason", .string(reason)), ("until", .string(clock.iso8601(until)))])
                if logger.logLevel <= .notice, let facts = table.facts(of: id) {
                    leaseLogger(id, entry, holder: facts.holder).notice("revoked; waiting for the holder to stop", metadata: [
                        "reason": .string(reason), "until": .string(clock.iso8601(until)),
                    ])
                }
                deliver(entry, id, .revoked(lease: text, reason: reason))
            case .revoked(_, let reason, let facts):
                end(id, .revoked(reason), facts, now: now)
                deliver(entry, id, entry.revokeReason == nil ? .revoked(lease: text, reason: reason) : nil,
                        close: (CloseCode.revoked, "revoked"))
            case .expired(_, let facts):
                metrics.resumes["expired", default: 0] += 1
                end(id, .released(.expired), facts, now: now)
            case .failed(_, let why, let facts):
                end(id, .failed(why), facts, now: now)
                switch why {
                case .unsatisfiable(let message):
                    deliver(entry, id, .error(code: .unsatisfiable, message: message), close: (CloseCode.unsatisfiable, ErrorCode.unsatisfiable.rawValue))
                case .waitTimeout(let heldBy):
                    let message = waitTimeoutMessage(heldBy: heldBy, facts: facts, queueWasFull: entry.queueWasFull, now: now)
                    deliver(entry, id, .error(code: .waitTimeout, message: message), close: (CloseCode.waitTimeout, ErrorCode.waitTimeout.rawValue))
                }
            case .queued(_, let position):
                entry.queued = true
                countWaiting(entry, 1)
                leases[id] = entry
                deliver(entry, id, .queued(lease: text, position: position, resume: entry.secret.tokenText))
            case .positionChanged(_, let position):
                deliver(entry, id, .queued(lease: text, position: position))
            }
        }
        if !effects.isEmpty { markChanged() }
        launchResets(now: now)
        armTimer()
    }

    // MARK: resets

    /// Runs the resets the table decided (off this queue); their outcomes come back to it.
    private func launchResets(now: Tick) {
        for start in table.takeResetStarts() {
            resets[start.name] = ResetInfo(result: .running, at: now, detail: "", output: "", reason: start.reason)
            store?.recordResetting(start.name, reason: start.reason, lastHolder: start.lastHolder)
            journal?.record([("event", .string("reset_started")), ("resource", .string(start.name)),
                             ("reason", .string(start.reason)), ("last_holder", start.lastHolder.map { .string($0) } ?? .null)])
            logger.notice("reset started", metadata: [
                "resource.name": .string(start.name), "reason": .string(start.reason),
                "command": .string(start.policy.command.joined(separator: " ")),
            ])
            metrics.resetsRunning += 1
            resetRunner.run(start) { [self] outcome in
                queue.async { [self] in resetFinished(start, outcome) }
            }
            markChanged()
        }
    }

    private func resetFinished(_ start: ResetStart, _ outcome: ResetOutcome) {
        let now = clock.now()
        var effects: [Effect] = []
        table.finishReset(start.name, succeeded: outcome.succeeded, detail: outcome.detail, now: now, into: &effects)
        resets[start.name] = ResetInfo(result: outcome.succeeded ? .ok : .failed, at: now, detail: outcome.detail,
                                       output: outcome.output, reason: start.reason)
        store?.recordResetDone(start.name)
        if !outcome.succeeded {
            if let disabled = table.resource(named: start.name)?.disabled {
                store?.recordDisabled(start.name, KeptState.Disabled(reason: disabled.reason, since: clock.wallNanoseconds(disabled.since)))
            }
        }
        metrics.resetsRunning -= 1
        metrics.resets[outcome.succeeded ? "ok" : "failed", default: 0] += 1
        metrics.resetDuration.observe(outcome.seconds)
        journal?.record([
            ("event", .string("reset")), ("resource", .string(start.name)), ("result", .string(outcome.succeeded ? "ok" : "failed")),
            ("detail", .string(outcome.detail)), ("reason", .string(start.reason)), ("seconds", .double(outcome.seconds)),
            ("output", .string(outcome.output)),
        ])
        let level: Logger.Level = outcome.succeeded ? .notice : .error
        logger.log(level: level, outcome.succeeded ? "reset done" : "reset failed; the resource is disabled", metadata: [
            "resource.name": .string(start.name), "detail": .string(outcome.detail),
        ])
        apply(effects, now: now)
        markChanged()
    }

    /// An admin's reset of a free or disabled resource (`POST …/reset`).
    func adminReset(_ name: String, completion: @escaping @Sendable (ResetRequestResult) -> Void) {
        queue.async { [self] in
            let now = clock.now()
            var effects: [Effect] = []
            let result = table.beginReset(name, reason: "admin", now: now, into: &effects)
            apply(effects, now: now)
            markChanged()
            completion(result)
        }
    }

    /// The latest reset of `name`, with its output (`GET …/reset`); nil if none ran. Call on `queue`.
    func latestReset(_ name: String) -> JSONValue? {
        assertOnQueue()
        guard let info = resets[name] else { return nil }
        return .object([
            ("resource", .string(name)), ("result", .string(info.result.rawValue)), ("at", .string(clock.iso8601(info.at))),
            ("reason", .string(info.reason)), ("detail", .string(info.detail)), ("output", .string(info.output)),
        ])
    }

    /// A journal line about a lease that goes on (orphaned, resumed, revoking).
    private func journalLine(_ id: LeaseID, _ entry: LeaseEntry, _ event: String, _ fields: [(String, JSONValue)]) {
        guard let journal else { return }
        let holder = table.facts(of: id)?.holder ?? ""
        journal.record([("event", .string(event)), ("lease", .string(Self.format(id))), ("holder", .string(holder))] + fields)
    }

    /// What a waiter that gave up is told: how long it waited and who held what it still needed,
    /// or that the queue was full when it asked.
    private func waitTimeoutMessage(heldBy: [LeaseID], facts: LeaseFacts, queueWasFull: Bool, now: Tick) -> String {
        if queueWasFull {
            return "the queue is full (at most \(limits.waitersTotal) waiters, \(limits.waitersPerAddress) from one address) and the request cannot be granted now; try again later"
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
    private func reserveEpochs(_ granted: [LeaseCore.GrantedResource], for id: LeaseID, _ entry: LeaseEntry,
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
    private func withhold(_ id: LeaseID, _ entry: LeaseEntry, _ facts: LeaseFacts,
                          unsaved: [(name: String, failure: String)], now: Tick) {
        end(id, .withheld(names: unsaved.map(\.name), error: unsaved.map(\.failure).first ?? ""), facts, now: now)
        var effects: [Effect] = []
        for (name, failure) in unsaved {
            let reason = "its fencing epoch could not be saved: \(failure)"
            if table.disable(resource: name, reason: reason, now: now, into: &effects) == .ok {
                store?.recordDisabled(name, KeptState.Disabled(reason: reason, since: clock.wallNanoseconds(now)))
            }
        }
        table.release(id, now: now, into: &effects)
        if let session = entry.session, let loop = entry.loop {
            loop.execute { session.withhold(reason: "fencing epochs cannot be saved") }
        }
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
    private func end(_ id: LeaseID, _ ending: Ending, _ facts: LeaseFacts, now: Tick) -> LeaseEntry? {
        assertOnQueue()
        guard let entry = leases.removeValue(forKey: id) else { return nil }
        if entry.queued { countWaiting(entry, -1) }
        store?.recordEnd(id)
        func log(_ level: Logger.Level, _ message: Logger.Message, _ metadata: Logger.Metadata) {
            guard logger.logLevel <= level else { return }  // no lease logger built for nothing
            leaseLogger(id, entry, holder: facts.holder).log(level: level, message, metadata: metadata)
        }
        var line: [(String, JSONValue)] = [("lease", .string(Self.format(id))), ("holder", .string(facts.holder))]
        if facts.grantedAt != nil {
            line += [("peer", .string(entry.peer)),
                     ("resources", .array(entry.granted.map { .object([("name", .string($0.name)), ("type", .string($0.type))]) }))]
        }
        let held = ("held_seconds", JSONValue.double(Self.seconds(now.duration(since: facts.grantedAt ?? now))))
        if let grantedAt = facts.grantedAt {
            metrics.byType.ended(types: entry.granted.map(\.type), seconds: Self.seconds(now.duration(since: grantedAt)))
        } else if case .released(let reason) = ending {
            metrics.byType.queueDepartures[reason.rawValue, default: 0] += 1
        } else if case .failed(.waitTimeout) = ending {
            metrics.byType.waitTimeouts += 1
        }
        let waited = ("waited_seconds", JSONValue.double(Self.seconds(now.duration(since: facts.arrivedAt))))
        switch ending {
        case .released(.expired):
            log(.notice, "expired: not resumed in time", [:])
            if facts.grantedAt != nil { metrics.releases[.expired, default: 0] += 1 }
            line = [("event", .string("expired"))] + line + [facts.grantedAt != nil ? held : waited]
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
            line = [("event", .string("revoked"))] + line + [("reason", .string(reason)), ("by", .string(entry.revokedBy ?? "server")), held]
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

    /// The status document (same as a watch snapshot), as of now, to be rendered off the lease
    /// queue: taking the snapshot is quick, writing a big lab's JSON is not, and grants must not
    /// wait for it. Call on `queue`.
    /// Takes a snapshot now; the returned closure renders it, off this queue.
    func statusRenderer() -> @Sendable () -> [MessagePiece] {
        assertOnQueue()
        let snapshot = table.snapshot()
        let resets = resets.mapValues { ResetShown(result: $0.result.rawValue, at: $0.at, detail: $0.detail) }
        let renderer = renderer
        return { renderer.render(snapshot, resets: resets) }
    }

    /// Call on `queue`.
    func snapshot() -> Snapshot { table.snapshot() }

    /// Prometheus text; gauges are read from the table now. Call on `queue`.
    func metricsText(connections: Int) -> String {
        assertOnQueue()
        metrics.leases = table.grantedLeaseCount
        metrics.waiters = table.waiterCount
        metrics.orphans = table.orphanCount
        var counts: [Metrics.ResourceCountKey: Int] = [:]
        let present = table.resourceCounts()
        for type in Set(present.map(\.type)) {
            for state in ResourceState.allCases { counts[Metrics.ResourceCountKey(type: type, state: state.rawValue)] = 0 }
        }
        for count in present {
            counts[Metrics.ResourceCountKey(type: count.type, state: count.state.rawValue)] = count.count
        }
        metrics.resourceCounts = counts
        metrics.byType.readQueue(table.snapshot(), now: clock.now())
        return metrics.render(connections: connections)
    }


    // MARK: conversions

    /// `300`, `2.5`.
    static func secondsText(_ seconds: Double) -> String {
        seconds == seconds.rounded() && abs(seconds) < 1e15 ? String(Int64(seconds)) : String(seconds)
    }

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

    static func coreResource(_ resource: LeaseProtocol.GrantedResource) -> LeaseCore.GrantedResource {
        LeaseCore.GrantedResource(name: resource.name, type: resource.type, labels: resource.labels,
                                  attributes: resource.attributes, epoch: resource.epoch)
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

    /// Wall-clock nanoseconds since the Unix epoch for a core time (what the state directory keeps).
    func wallNanoseconds(_ tick: Tick) -> Int64 { tick.nanoseconds &+ wallOffsetNanoseconds }

    /// The core time of a wall-clock instant (one a previous process recorded).
    func tick(wallNanoseconds: Int64) -> Tick { Tick(nanoseconds: wallNanoseconds &- wallOffsetNanoseconds) }

    /// `2026-11-25T16:04:45.250Z`: with milliseconds, for deadlines a client acts on.
    func iso8601Precise(_ tick: Tick) -> String {
        let milliseconds = (tick.nanoseconds &+ wallOffsetNanoseconds) / 1_000_000
        let whole = milliseconds >= 0 ? milliseconds / 1000 : (milliseconds - 999) / 1000
        let fraction = milliseconds - whole * 1000
        let text = ISO8601.format(unixSeconds: whole)
        return String(text.dropLast()) + "." + String(String(fraction + 1000).dropFirst()) + "Z"
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
