import LeaseProtocol

// A lease's life beyond "waiting" and "granted" (PROTOCOL.md "Surviving restarts and network
// blips", "Revocation waits for the holder to stop", "Lease time limits"):
// - orphaned: its connection is gone but it keeps its resources (or its place in the queue)
//   until `orphanUntil`, when it ends as `.expired`, unless the client resumes it first;
// - revoking: revoked, but its resources stay out of reach until its client closes (the server
//   calls `release`) or `revokingUntil` passes, when `.revoked` ends it;
// - a hold limit (`max_hold`): at `expiresAt` it is revoked as an admin would revoke it.
// A revoking lease is never orphaned: any end of its connection frees it.

/// How a live lease or waiter stands, beyond its resources.
public enum LeasePhase: String, Sendable, Equatable {
    case waiting, granted, orphaned, revoking
}

/// A lease or waiter as a restart restores it (see `LeaseTable.restore`).
public struct RestoredLease: Sendable, Equatable {
    public var id: LeaseID
    public var request: Request
    public var arrivedAt: Tick
    /// For a waiter: when its `wait` runs out (nil: never).
    public var deadline: Tick?
    /// nil: a waiter.
    public var grant: Grant?
    /// It stays orphaned until then unless resumed.
    public var orphanUntil: Tick

    public struct Grant: Sendable, Equatable {
        /// In want order, with the epochs they were granted with.
        public var resources: [GrantedResource]
        public var grantedAt: Tick
        /// The `max_hold` deadline (nil: none) and the limit it came from.
        public var expires: Tick?
        public var holdLimit: Duration?

        public init(resources: [GrantedResource], grantedAt: Tick, expires: Tick? = nil, holdLimit: Duration? = nil) {
            self.resources = resources
            self.grantedAt = grantedAt
            self.expires = expires
            self.holdLimit = holdLimit
        }
    }

    public init(id: LeaseID, request: Request, arrivedAt: Tick, deadline: Tick? = nil, grant: Grant? = nil, orphanUntil: Tick) {
        self.id = id
        self.request = request
        self.arrivedAt = arrivedAt
        self.deadline = deadline
        self.grant = grant
        self.orphanUntil = orphanUntil
    }
}

/// What a resumed lease is told.
public enum Resumption: Sendable, Equatable {
    case granted([GrantedResource])
    case waiting(position: Int)
}

/// Entry of the lease-timer heap, ordered by time then arrival.
struct LeaseTimerRef: HeapOrdered {
    enum Kind: UInt8 { case orphan, revoking, holdLimit }
    var at: Int64
    var seq: UInt64
    var slot: Int32
    var kind: Kind
    @inline(__always) func before(_ o: LeaseTimerRef) -> Bool { at != o.at ? at < o.at : seq < o.seq }
}

extension LeaseTable {
    // MARK: Events

    /// The lease's connection ended without a release and the lease asked to survive that (or
    /// the server is restarting): it keeps its resources, or its place, until `until`. Returns
    /// false (and changes nothing) for an unknown id or a revoking lease, which the caller
    /// releases instead.
    public mutating func orphan(_ id: LeaseID, until: Tick, now: Tick, into out: inout [Effect]) -> Bool {
        let t = begin(now, &out)
        defer { finish() }
        guard let s = leaseIndex[id] else { return false }
        let w = Int(s)
        guard leases[w].revokingUntil == .max else { return false }
        setOrphan(w, until: max(until.nanoseconds, t.nanoseconds))
        return true
    }

    /// A client took its lease back: it is no longer orphaned. nil for an unknown id.
    public mutating func resume(_ id: LeaseID, now: Tick, into out: inout [Effect]) -> Resumption? {
        _ = begin(now, &out)
        defer { finish() }
        guard let s = leaseIndex[id] else { return nil }
        let w = Int(s)
        if leases[w].orphanUntil != .max {
            leases[w].orphanUntil = .max
            orphanCount -= 1
        }
        if leases[w].waiting {
            leases[w].lastSentPos = Int32(position(w))
            leases[w].lastSentAt = lastNow
            return .waiting(position: position(w))
        }
        return .granted(grantedList(w))
    }

    /// Admin force-free (or a hold limit): revokes the whole lease that holds `resource`.
    /// `.notFound` for an unknown name, `.notHeld` if it is free, reserved or disabled.
    /// A lease that asked for a `revokeWait` (and is connected) becomes revoking: `.revoking`,
    /// resources kept. Otherwise, or with `immediately`, `.revoked` and the grants its resources
    /// caused. A revoking lease revoked again without `immediately` is `.ok` and unchanged.
    public mutating func revoke(resource name: String, reason: String, now: Tick, immediately: Bool = false,
                                into out: inout [Effect]) -> AdminResult {
        let t = begin(now, &out)
        defer { finish() }
        guard let s = nameToSlot[ExactKey(name)], !resources[Int(s)].gone else { return .notFound }
        let r = Int(s)
        guard resources[r].owner >= 0, resources[r].held else { return .notHeld }
        revokeLease(Int(resources[r].owner), reason: reason, t, immediately: immediately, &out)
        return .ok
    }

    /// Puts leases and waiters kept by a previous process back, in arrival order, all orphaned.
    /// Call on a fresh table (after `init(inventory:epochs:)`), before any other event.
    /// A granted lease gets exactly its recorded resources and epochs, also resources the
    /// inventory no longer has (they are kept until it ends, as after a reload). A lease that
    /// names a resource another restored lease holds is refused (never two holders); so is one
    /// the id of which is already live. Waiters queue again, with their arrival time and
    /// deadline: effects as for `acquire` (one may be granted or fail at once).
    /// Returns the ids that were refused.
    public mutating func restore(_ kept: [RestoredLease], now: Tick, into out: inout [Effect]) -> [LeaseID] {
        let t = begin(now, &out)
        defer { finish() }
        var refused: [LeaseID] = []
        for entry in kept where entry.grant != nil {
            guard let grant = entry.grant, leaseIndex[entry.id] == nil, restoreGrant(entry, grant, t) else {
                refused.append(entry.id)
                continue
            }
        }
        for entry in kept where entry.grant == nil {
            guard leaseIndex[entry.id] == nil else {
                refused.append(entry.id)
                continue
            }
            let w = admit(entry.id, entry.request, arrivedAt: entry.arrivedAt, now: t,
                          deadline: entry.deadline.map { $0.nanoseconds }, mayQueue: true, &out)
            if let w { setOrphan(w, until: entry.orphanUntil.nanoseconds) }
        }
        return refused
    }

    // MARK: Views

    public func phase(of id: LeaseID) -> LeasePhase? {
        leaseIndex[id].map { phase(Int($0)) }
    }

    func phase(_ w: Int) -> LeasePhase {
        if leases[w].revokingUntil != .max { return .revoking }
        if leases[w].orphanUntil != .max { return .orphaned }
        return leases[w].waiting ? .waiting : .granted
    }

    /// When an orphan ends (nil when it is not orphaned).
    public func orphanedUntil(_ id: LeaseID) -> Tick? {
        guard let s = leaseIndex[id], leases[Int(s)].orphanUntil != .max else { return nil }
        return Tick(nanoseconds: leases[Int(s)].orphanUntil)
    }

    /// When a granted lease reaches its `max_hold`, and that limit (nil: no limit).
    public func holdLimit(of id: LeaseID) -> (expires: Tick, limit: Duration)? {
        guard let s = leaseIndex[id], leases[Int(s)].expiresAt != .max else { return nil }
        return (Tick(nanoseconds: leases[Int(s)].expiresAt), .nanoseconds(leases[Int(s)].holdLimit))
    }

    /// The resources a granted lease holds, with their epochs, in want order.
    func grantedList(_ w: Int) -> [GrantedResource] {
        leases[w].slots.map { k in
            let x = resources[Int(k)]
            return GrantedResource(name: x.name, type: x.type, labels: x.labels, attributes: x.attributes, epoch: x.epoch)
        }
    }

    // MARK: Internals

    mutating func setOrphan(_ w: Int, until: Int64) {
        if leases[w].orphanUntil == .max { orphanCount += 1 }
        let at = min(until, Int64.max - 1)
        leases[w].orphanUntil = at
        leaseTimers.push(LeaseTimerRef(at: at, seq: leases[w].seq, slot: Int32(w), kind: .orphan))
    }

    /// Starts the `max_hold` clock of a lease granted at `t`: the smallest limit among its
    /// resources and its request.
    mutating func startHoldLimit(_ w: Int, _ t: Tick) {
        var limit = leases[w].request.maxHold.map { max(0, $0.saturatingNanoseconds) } ?? .max
        for k in leases[w].slots { limit = min(limit, resources[Int(k)].maxHold) }
        guard limit != .max else { return }
        let (at, o) = t.nanoseconds.addingReportingOverflow(limit)
        leases[w].holdLimit = limit
        leases[w].expiresAt = o ? Int64.max - 1 : min(at, Int64.max - 1)
        leaseTimers.push(LeaseTimerRef(at: leases[w].expiresAt, seq: leases[w].seq, slot: Int32(w), kind: .holdLimit))
    }

    mutating func revokeLease(_ w: Int, reason: String, _ t: Tick, immediately: Bool, _ out: inout [Effect]) {
        if leases[w].revokingUntil != .max {
            guard immediately else { return }
            out.append(.revoked(leases[w].id, reason: leases[w].revokeReason, facts(w)))
            releaseGranted(w, t, reason: .revoked, &out)
            return
        }
        let wait = leases[w].request.revokeWait.map { max(0, $0.saturatingNanoseconds) } ?? 0
        if immediately || wait == 0 || leases[w].orphanUntil != .max {
            // An orphan has no connection to wait for.
            out.append(.revoked(leases[w].id, reason: reason, facts(w)))
            releaseGranted(w, t, reason: .revoked, &out)
            return
        }
        let (at, o) = t.nanoseconds.addingReportingOverflow(wait)
        leases[w].revokingUntil = o ? Int64.max - 1 : min(at, Int64.max - 1)
        leases[w].revokeReason = reason
        leaseTimers.push(LeaseTimerRef(at: leases[w].revokingUntil, seq: leases[w].seq, slot: Int32(w), kind: .revoking))
        out.append(.revoking(leases[w].id, reason: reason, until: Tick(nanoseconds: leases[w].revokingUntil)))
    }

    func timerValid(_ e: LeaseTimerRef) -> Bool {
        let lease = leases[Int(e.slot)]
        guard lease.alive, lease.seq == e.seq else { return false }
        switch e.kind {
        case .orphan: return lease.orphanUntil == e.at
        case .revoking: return lease.revokingUntil == e.at
        case .holdLimit: return !lease.waiting && lease.expiresAt == e.at && lease.revokingUntil == .max
        }
    }

    mutating func fireLeaseTimers(_ t: Int64, _ out: inout [Effect]) {
        guard let first = leaseTimers.top, first.at <= t else { return }
        var due: [LeaseTimerRef] = []
        while let top = leaseTimers.top, top.at <= t {
            leaseTimers.pop()
            if timerValid(top) { due.append(top) }
        }
        let now = Tick(nanoseconds: t)
        // Orphaned waiters first, latest first: what one gave back never goes to another that is
        // expiring too (a grant nobody would receive, an epoch spent for nothing).
        let leaving = due.filter { $0.kind == .orphan && leases[Int($0.slot)].waiting }.sorted { $0.seq > $1.seq }
        for timer in leaving where timerValid(timer) {
            let w = Int(timer.slot)
            out.append(.expired(leases[w].id, facts(w)))
            removeWaiter(w, now, failure: nil, &out)
        }
        for timer in due where timerValid(timer) {
            let w = Int(timer.slot)
            switch timer.kind {
            case .orphan:
                out.append(.expired(leases[w].id, facts(w)))
                if leases[w].waiting {
                    removeWaiter(w, now, failure: nil, &out)
                } else {
                    releaseGranted(w, now, reason: .expired, &out)
                }
            case .revoking:
                out.append(.revoked(leases[w].id, reason: leases[w].revokeReason, facts(w)))
                releaseGranted(w, now, reason: .revoked, &out)
            case .holdLimit:
                revokeLease(w, reason: "max_hold: held for \(Self.seconds(leases[w].holdLimit)) seconds", now, immediately: false, &out)
            }
        }
    }

    /// Seconds as a JSON number would show them: `3600`, `0.5`.
    static func seconds(_ nanoseconds: Int64) -> String {
        if nanoseconds % 1_000_000_000 == 0 { return String(nanoseconds / 1_000_000_000) }
        return String(Double(nanoseconds) / 1e9)
    }

    /// Puts a restored grant in place: each named resource held by `w` with its recorded epoch.
    private mutating func restoreGrant(_ entry: RestoredLease, _ grant: RestoredLease.Grant, _ t: Tick) -> Bool {
        var slots: [Int32] = []
        for resource in grant.resources {
            if let s = nameToSlot[ExactKey(resource.name)] {
                let x = resources[Int(s)]
                guard x.owner < 0, !x.gone, !slots.contains(s) else { return false }
                slots.append(s)
            } else {
                slots.append(-1)   // retired: added below once the lease is known to be valid
            }
        }
        scratchResolved.removeAll(keepingCapacity: true)
        let w = newLease(entry.id, entry.request, entry.arrivedAt)
        releaseSelectorRefs(w)
        for (i, resource) in grant.resources.enumerated() where slots[i] < 0 {
            // No longer in the inventory: kept, like a resource a reload removed while held.
            var rec = ResourceRec(name: resource.name, type: resource.type, labels: resource.labels,
                                  attributes: resource.attributes, epoch: 0, since: grant.grantedAt)
            rec.inInventory = false
            rec.epoch = epochStore[resource.name] ?? 0
            slots[i] = Int32(resources.count)
            nameToSlot[ExactKey(resource.name)] = slots[i]
            resources.append(rec)
        }
        for (i, s) in slots.enumerated() {
            let r = Int(s)
            if resources[r].isFree { clearFree(r) }
            resources[r].owner = Int32(w)
            resources[r].held = true
            resources[r].since = grant.grantedAt
            resources[r].epoch = max(resources[r].epoch, grant.resources[i].epoch)
        }
        leases[w].groups = []
        leases[w].slots = slots
        leases[w].grantedAt = grant.grantedAt
        leases[w].grantedGeneration = 0
        grantedLeaseCount += 1
        if let expires = grant.expires {
            leases[w].expiresAt = min(expires.nanoseconds, Int64.max - 1)
            leases[w].holdLimit = grant.holdLimit?.saturatingNanoseconds ?? max(0, expires.nanoseconds - grant.grantedAt.nanoseconds)
            leaseTimers.push(LeaseTimerRef(at: leases[w].expiresAt, seq: leases[w].seq, slot: Int32(w), kind: .holdLimit))
        }
        setOrphan(w, until: max(entry.orphanUntil.nanoseconds, t.nanoseconds))
        return true
    }
}
