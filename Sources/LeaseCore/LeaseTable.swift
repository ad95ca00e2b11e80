import LeaseProtocol

/// The lease table: inventory, granted leases and the fair queue, as a pure, deterministic state
/// machine. The server owns one, calls it from one serial context, passes the time in, and
/// carries out the returned effects in order.
///
/// ## Calls
/// Every mutating call takes `now` and first fails every waiter whose `wait` ran out
/// (`now ≥ arrival + wait`, with `.failed(id, .waitTimeout)`), so `tick(now:)` is needed only
/// when nothing else happens: call it at `nextDeadline`. Time never goes backwards inside the
/// table (an earlier `now` is treated as the latest seen).
///
/// Each call appends effects to `out` (the `…(into:)` forms, for a reused buffer) or returns
/// them. Effects come out in the order the state changed: e.g. `revoke` gives `.revoked(L1)`
/// and then the `.granted` of the waiters that got L1's resources; `release` of a waiter gives
/// only the grants its reserved resources caused. A lease id is gone from the table after
/// `.failed`/`.revoked`, after `release`, and stays after `.granted` until `release`/`revoke`.
///
/// ## Rules (PROTOCOL.md "Who gets a freed resource")
/// A request is granted whole or not at all. Groups are matched to resources by bipartite
/// matching, so overlapping selectors find an assignment whenever one exists. A request that
/// cannot be granted at once waits (unless `wait` is zero) and at once reserves the free
/// resources it can use. A resource that becomes free goes to the earliest waiter that can use
/// it ("can use": reserving it raises the size of the largest matching of that waiter's reserved
/// set into its request). Reserved resources are out of everyone else's reach; a waiter is
/// granted when it holds a full assignment. Invariant: no free enabled resource is usable by
/// any waiter. Among equally good free resources the earliest in inventory order is taken.
/// After a waiter loses a reserved resource (disable, reload) it may reclaim usable resources
/// reserved by later waiters, so a later waiter never keeps what an earlier one can use and the
/// queue cannot deadlock: with every resource enabled and released, the earliest waiter is
/// always granted.
///
/// ## Cost
/// Grant, release and hand-off touch only the resources and waiters concerned: free resources
/// are indexed per selector (type + labels, or name) in hierarchical bitsets, waiters per
/// selector in heaps ordered by arrival, positions come from a Fenwick tree over the queue.
/// `reload`, `snapshot()` and `resourceCounts()` are O(table).
///
/// ## Reading the code
/// Slots are indices into the table's arrays and keep one letter each throughout: `r` a resource
/// (`resources[r]`), `w` a lease or waiter (`leases[w]`), `s` a selector (`selectors[s]`), `g` a
/// want group, `k` a slot of a lease's `slots`; `t` is the current time of the call.
public struct LeaseTable: Sendable {
    // MARK: Tunables
    /// Per-waiter minimum spacing of `positionChanged` effects.
    public static let positionUpdateInterval: Int64 = 1_000_000_000
    /// Minimum spacing of the queue walks that produce position updates (coalescing).
    public static let positionWalkInterval: Int64 = 100_000_000
    static let idleSelectorCap = 256
    static let maxGroups = 16

    // MARK: Resources
    struct Membership: Sendable {
        var sel: Int32
        var pos: Int32
    }

    struct ResourceRec: Sendable {
        var name: String
        var type: String
        var labels: [String: String]
        var attributes: JSONValue
        var epoch: UInt64
        /// Why and since when it is out of service; nil while enabled.
        var disabled: Disabling?
        var enabled: Bool { disabled == nil }
        /// false: removed by a reload while held ("retired"); it disappears on release.
        var inInventory = true
        /// A retired resource that was released: a tombstone until the next reload.
        var gone = false
        /// Lease slot that holds (`held`) or reserves (waiting lease) it; -1 for none.
        var owner: Int32 = -1
        var held = false
        var since: Tick
        var memberships: [Membership] = []
        var nameSel: Int32 = -1
        /// The inventory's `max_hold` in nanoseconds; `.max`: none.
        var maxHold: Int64 = .max
        var reset: ResetPolicy?
        /// Its reset runs: out of everyone's reach (see Resets.swift).
        var resetting = false

        var isFree: Bool { owner < 0 && enabled && inInventory && !resetting }
    }

    var resources: [ResourceRec] = []
    var nameToSlot: [ExactKey: Int32] = [:]
    /// Inventory resources by type, in inventory order.
    var typeMembers: [ExactKey: [Int32]] = [:]
    /// Epochs of names as seeded or last seen on removal. Keyed by `String`, as the seeds and
    /// the epoch file are, so two spellings that Swift holds equal ("é", "e" + U+0301) share one
    /// entry; it only ever takes the larger epoch, so both spellings' epochs keep growing.
    var epochStore: [String: UInt64] = [:]
    /// Reused by `augment` (one entry per want group, at most 16): no allocation per grant.
    var augmentScratch = AugmentScratch()
    var inventoryGeneration: UInt64 = 0

    // MARK: Selectors
    /// Compared and hashed by scalars, like `ExactKey`.
    enum SelectorKey: Hashable, Sendable {
        case name(String)
        /// Type and labels flattened as sorted key, value, key, value…
        case type(String, [String])

        static func == (a: SelectorKey, b: SelectorKey) -> Bool {
            switch (a, b) {
            case let (.name(x), .name(y)): return x.exactlyEquals(y)
            case let (.type(x, xs), .type(y, ys)):
                return x.exactlyEquals(y) && xs.count == ys.count && zip(xs, ys).allSatisfy { $0.exactlyEquals($1) }
            default: return false
            }
        }

        func hash(into hasher: inout Hasher) {
            switch self {
            case .name(let name):
                hasher.combine(0)
                ExactKey(name).hash(into: &hasher)
            case .type(let type, let flat):
                hasher.combine(1)
                ExactKey(type).hash(into: &hasher)
                for text in flat { ExactKey(text).hash(into: &hasher) }
            }
        }
    }

    struct Selector: Sendable {
        var key: SelectorKey
        var members: [Int32]
        var free: HierBits
        var refs = 0
        var waiters = MinHeap<WaiterRef>()
        var usableWaiterCount = 0
        var live = true
    }

    var selectors: [Selector] = []
    var selectorIndex: [SelectorKey: Int32] = [:]
    var freeSelectorSlots: [Int32] = []
    var idleTypeSelectors = 0
    var satisfiableCache: [[Int64]: Bool] = [:]

    // MARK: Leases and waiters
    struct GroupRec: Sendable {
        var sel: Int32
        var count: Int32
        var offset: Int32
        var filled: Int32
        /// Other groups whose selectors may share a resource with this one (conservative).
        var overlap: UInt16
        /// Index of the first group with the same selector.
        var rep: Int8
    }

    /// One per lease and waiter (the biggest part of the table when many are held): the small
    /// fields are kept together so that padding does not grow it.
    struct LeaseRec: Sendable {
        var id: LeaseID
        var seq: UInt64
        var request: Request
        var arrivedAt: Tick
        var grantedAt: Tick
        var grantedGeneration: UInt64
        var groups: [GroupRec]
        /// Flat: group g owns `slots[offset ..< offset+count]`, the first `filled` in use.
        /// After the grant this is the granted list, in want order.
        var slots: [Int32]
        var deadline: Int64
        var lastSentAt: Int64
        var queueIndex: Int32
        var lastSentPos: Int32
        var usableGroups: UInt16
        var inWaiterHeaps: UInt16
        var alive: Bool
        var waiting: Bool
        var anyOverlap: Bool
        var holdsSelectorRefs: Bool
        /// Lifecycle beyond waiting and granted (see Lifecycle.swift); `.max`: not in force.
        var orphanUntil: Int64 = .max
        var revokingUntil: Int64 = .max
        var revokeReason = ""
        var expiresAt: Int64 = .max
        var holdLimit: Int64 = .max
    }

    var leases: [LeaseRec] = []
    var freeLeaseSlots: [Int32] = []
    var leaseIndex: [LeaseID: Int32] = [:]
    var nextSeq: UInt64 = 1
    public internal(set) var grantedLeaseCount = 0
    public internal(set) var waiterCount = 0

    // MARK: Queue, positions, deadlines
    var queue: [Int32] = []
    var fenwick = Fenwick(capacity: 64)
    var posDirtyFrom = -1
    var nextPositionWalk: Int64 = .max
    var lastWalk: Int64 = .min
    var deadlines = MinHeap<DeadlineRef>()
    var deadlineLive = 0
    var lastNow: Int64 = .min
    /// Orphan, revocation and `max_hold` deadlines of leases (stale entries are skipped).
    var leaseTimers = MinHeap<LeaseTimerRef>()
    public internal(set) var orphanCount = 0
    /// Resets decided and not yet taken by the server.
    var resetStarts: [ResetStart] = []

    // MARK: Scratch (reused to avoid per-event allocation)
    var scratchResolved: [GroupRec] = []
    var scratchReleased: [Int32] = []

    // MARK: Init

    /// An empty table.
    public init() {}

    /// A table with `inventory` in force. `epochs` seeds the per-name fencing counters (e.g. as
    /// persisted from `epochs` before a restart); names not in the inventory are remembered too.
    public init(inventory: Inventory, epochs: [String: UInt64] = [:], now: Tick = .zero) throws(InventoryError) {
        self.init()
        epochStore = epochs
        switch reload(inventory, now: now) {
        case .invalid(let p): throw InventoryError(problems: p)
        case .applied: break
        }
    }

    // MARK: Public read-only state

    /// When the server must call `tick(now:)` next: the earliest wait deadline or pending
    /// position update. nil: nothing is scheduled.
    public var nextDeadline: Tick? {
        var t = nextPositionWalk
        if let d = deadlines.top?.deadline, d < t { t = d }
        if let d = leaseTimers.top?.at, d < t { t = d }
        return t == .max ? nil : Tick(nanoseconds: t)
    }

    /// Current fencing epochs of every name granted at least once (or seeded), including names
    /// no longer in the inventory. Persist this to keep epochs growing across restarts.
    public var epochs: [String: UInt64] {
        var e = epochStore
        for r in resources where !r.gone && r.epoch > 0 { e[r.name] = max(e[r.name] ?? 0, r.epoch) }
        return e
    }

    /// The epoch of one name (0 before its first grant).
    public func epoch(of name: String) -> UInt64 {
        if let s = nameToSlot[ExactKey(name)] { return resources[Int(s)].epoch }
        return epochStore[name] ?? 0
    }

    // MARK: Events

    /// A new lease request. Effects: exactly one of `.granted(id)`, `.queued(id, position)` or
    /// `.failed(id, …)` for `id` (after any wait timeouts of others that were due). An `id`
    /// already live is ignored (no effect for it).
    public mutating func acquire(_ id: LeaseID, _ request: Request, now: Tick, into out: inout [Effect]) {
        let t = begin(now, &out)
        defer { finish() }
        guard leaseIndex[id] == nil else { return }
        let waitNs = request.wait.map { max(0, $0.saturatingNanoseconds) }
        var deadline: Int64?
        if let ns = waitNs {
            let (d, o) = t.nanosecondsValue.addingReportingOverflow(ns)
            deadline = o ? Int64.max - 1 : min(d, Int64.max - 1)
        }
        _ = admit(id, request, arrivedAt: t, now: t, deadline: deadline, mayQueue: waitNs != 0, &out)
    }

    /// A request enters the table: granted, queued (with `deadline`, if any) or failed. Returns
    /// its slot while it is live.
    mutating func admit(_ id: LeaseID, _ request: Request, arrivedAt: Tick, now t: Tick, deadline: Int64?,
                        mayQueue: Bool, _ out: inout [Effect]) -> Int? {
        if let message = resolve(request) {
            out.append(.failed(id, .unsatisfiable(message), LeaseFacts(holder: request.holder, arrivedAt: arrivedAt, grantedAt: nil)))
            return nil
        }
        let w = newLease(id, request, arrivedAt)
        let complete = fill(w, t)
        if complete {
            grant(w, t, &out)
            return w
        }
        if !mayQueue {
            // Not grantable at once and may not queue: give back what it took.
            let heldBy = blockers(of: w)
            for k in leases[w].slots where k >= 0 {
                let r = Int(k)
                resources[r].owner = -1
                resources[r].since = t
                setFree(r)
            }
            out.append(.failed(id, .waitTimeout(heldBy: heldBy), LeaseFacts(holder: request.holder, arrivedAt: arrivedAt, grantedAt: nil)))
            dropLease(w)
            return nil
        }
        // Becomes a waiter.
        leases[w].waiting = true
        enqueue(w)
        let pos = Int32(waiterCount)
        leases[w].lastSentPos = pos
        leases[w].lastSentAt = t.nanosecondsValue
        if let deadline {
            leases[w].deadline = deadline
            deadlines.push(DeadlineRef(deadline: deadline, seq: leases[w].seq, slot: Int32(w)))
            deadlineLive += 1
        }
        updateUsableGroups(w)
        out.append(.queued(id, position: Int(pos)))
        return w
    }

    /// Release op or connection closed, for a granted lease or a waiter. Unknown ids are a
    /// no-op. Effects: grants of waiters that received the freed resources. `reason`: how it
    /// ended; resources with a reset policy that applies go to `resetting` instead of being freed.
    public mutating func release(_ id: LeaseID, reason: EndReason = .release, now: Tick, into out: inout [Effect]) {
        let t = begin(now, &out)
        defer { finish() }
        guard let s = leaseIndex[id] else { return }
        let w = Int(s)
        if leases[w].waiting {
            removeWaiter(w, t, failure: nil, &out)
        } else {
            // A revoked lease that waited for its client ends as revoked, however the client closed.
            releaseGranted(w, t, reason: leases[w].revokingUntil != .max ? .revoked : reason, &out)
        }
    }

    /// Takes a resource out of service. Free: becomes disabled. Reserved: taken back from its
    /// waiter (which may take a free replacement). Held: the lease runs on; the resource shows
    /// `held` until the lease ends, then `disabled`. Disabling twice is `.ok`.
    /// Disabling twice keeps the first reason.
    public mutating func disable(resource name: String, reason: String = Disabling.byAdmin, now: Tick,
                                 into out: inout [Effect]) -> AdminResult {
        let t = begin(now, &out)
        defer { finish() }
        guard let s = nameToSlot[ExactKey(name)], resources[Int(s)].inInventory else { return .notFound }
        let r = Int(s)
        guard resources[r].enabled else { return .ok }
        let disabling = Disabling(reason: reason, since: t)
        if resources[r].owner < 0 {
            clearFree(r)
            resources[r].disabled = disabling
            resources[r].since = t
        } else if !resources[r].held {
            let w = Int(resources[r].owner)
            resources[r].disabled = disabling
            takeAway(w, r)
            resources[r].since = t
            rebalance([w], t, &out)
        } else {
            resources[r].disabled = disabling
        }
        return .ok
    }

    /// Puts a resource back in service; a free one goes to the earliest waiter that can use it.
    public mutating func enable(resource name: String, now: Tick, into out: inout [Effect]) -> AdminResult {
        let t = begin(now, &out)
        defer { finish() }
        guard let s = nameToSlot[ExactKey(name)], resources[Int(s)].inInventory else { return .notFound }
        let r = Int(s)
        guard !resources[r].enabled else { return .ok }
        resources[r].disabled = nil
        if resources[r].owner < 0 && !resources[r].resetting {
            resources[r].since = t
            handoff(r, t, &out)
        }
        return .ok
    }

    /// Timeouts and position updates that are due. Effects: `.failed(…, .waitTimeout)` in
    /// deadline order (each followed by the grants it caused), then `.positionChanged` in queue
    /// order.
    public mutating func tick(now: Tick, into out: inout [Effect]) {
        let t = begin(now, &out)
        defer { finish() }
        if t.nanosecondsValue >= nextPositionWalk { walkPositions(t.nanosecondsValue, &out) }
    }

    // MARK: Convenience forms returning effects

    public mutating func acquire(_ id: LeaseID, _ request: Request, now: Tick) -> [Effect] {
        var out: [Effect] = []
        acquire(id, request, now: now, into: &out)
        return out
    }

    public mutating func release(_ id: LeaseID, reason: EndReason = .release, now: Tick) -> [Effect] {
        var out: [Effect] = []
        release(id, reason: reason, now: now, into: &out)
        return out
    }

    public mutating func revoke(resource name: String, reason: String, now: Tick, immediately: Bool = false) -> (AdminResult, [Effect]) {
        var out: [Effect] = []
        let r = revoke(resource: name, reason: reason, now: now, immediately: immediately, into: &out)
        return (r, out)
    }

    public mutating func disable(resource name: String, reason: String = Disabling.byAdmin, now: Tick) -> (AdminResult, [Effect]) {
        var out: [Effect] = []
        let r = disable(resource: name, reason: reason, now: now, into: &out)
        return (r, out)
    }

    public mutating func enable(resource name: String, now: Tick) -> (AdminResult, [Effect]) {
        var out: [Effect] = []
        let r = enable(resource: name, now: now, into: &out)
        return (r, out)
    }

    public mutating func tick(now: Tick) -> [Effect] {
        var out: [Effect] = []
        tick(now: now, into: &out)
        return out
    }

    // MARK: Event plumbing

    mutating func begin(_ now: Tick, _ out: inout [Effect]) -> Tick {
        let t = max(now.nanoseconds, lastNow)
        lastNow = t
        expireDue(t, &out)
        fireLeaseTimers(t, &out)
        return Tick(nanoseconds: t)
    }

    /// Keeps the deadline heap's top live so `nextDeadline` is exact.
    mutating func finish() {
        sweepIdleSelectors()
        while let top = deadlines.top, !deadlineValid(top) { deadlines.pop() }
        while let top = leaseTimers.top, !timerValid(top) { leaseTimers.pop() }
        if leaseTimers.count > 3 * leases.count + 32 {
            var heap = leaseTimers
            leaseTimers = MinHeap()
            heap.compact { timerValid($0) }
            leaseTimers = heap
        }
        if deadlines.count > 2 * deadlineLive + 32 {
            var heap = deadlines
            deadlines = MinHeap()
            heap.compact { deadlineValid($0) }
            deadlines = heap
        }
    }

    func deadlineValid(_ d: DeadlineRef) -> Bool {
        let lease = leases[Int(d.slot)]
        return lease.alive && lease.waiting && lease.seq == d.seq && lease.deadline == d.deadline
    }

    mutating func expireDue(_ t: Int64, _ out: inout [Effect]) {
        while let top = deadlines.top, top.deadline <= t {
            deadlines.pop()
            guard deadlineValid(top) else { continue }
            let w = Int(top.slot)
            removeWaiter(w, Tick(nanoseconds: t), failure: .waitTimeout(heldBy: blockers(of: w)), &out)
        }
    }
}

extension Tick {
    @inline(__always) var nanosecondsValue: Int64 { nanoseconds }
}

/// The breadth-first search state of `augment`: per group, the group it was reached from and
/// the slot it takes over; the queue of groups to visit.
struct AugmentScratch {
    var parentGroup = [Int8](repeating: 0, count: LeaseTable.maxGroups)
    var parentSlot = [Int32](repeating: 0, count: LeaseTable.maxGroups)
    var queue = [Int8](repeating: 0, count: LeaseTable.maxGroups)
}
