import LeaseProtocol

// Read-only views for the server: snapshots (O(table), for /v1/status and /v1/watch), lookups
// (O(1) or O(log n)) and counts for metrics.

/// A resource's state as shown in snapshots.
public enum ResourceState: String, Sendable, Hashable, CaseIterable {
    case free, held, reserved, disabled, resetting
}

public struct ResourceView: Sendable, Equatable {
    public var name: String
    public var type: String
    public var labels: [String: String]
    public var attributes: JSONValue
    public var state: ResourceState
    /// Holder lease (`held`) or waiter (`reserved`); nil for free and disabled.
    public var lease: LeaseID?
    /// The holder text of that lease or waiter.
    public var holder: String?
    public var epoch: UInt64
    /// When the resource entered its current state (grant time for `held`).
    public var since: Tick
    /// false: removed from the inventory by a reload, still held until its lease ends.
    public var inInventory: Bool
    /// Why and since when it is out of service (a held disabled resource still shows `held`);
    /// nil while enabled.
    public var disabled: Disabling?
    public var enabled: Bool { disabled == nil }
    /// The inventory names a reset for it.
    public var resettable = false

    /// The same resource, and what can change without a reload is the same (between snapshots
    /// of one `Snapshot.inventoryGeneration` the rest cannot differ).
    public func sameState(as other: ResourceView) -> Bool {
        state == other.state && epoch == other.epoch && since == other.since && lease == other.lease
            && holder == other.holder && disabled == other.disabled && inInventory == other.inInventory
            && name == other.name
    }
}

/// Why a resource is out of service, and since when.
public struct Disabling: Sendable, Equatable {
    public var reason: String
    public var since: Tick

    public static let byAdmin = "disabled by an admin"
}

public struct LeaseView: Sendable, Equatable {
    public var id: LeaseID
    public var holder: String
    public var peer: String
    /// Granted resource names, in want order.
    public var resources: [String]
    public var meta: [String: String]
    public var want: [Group]
    /// Grant time.
    public var since: Tick
    public var arrivedAt: Tick
    /// `.granted`, `.orphaned` or `.revoking`.
    public var phase: LeasePhase = .granted
    /// When an orphaned or revoking lease ends by itself.
    public var until: Tick?
    /// When its `max_hold` runs out.
    public var expires: Tick?
}

public struct WaiterView: Sendable, Equatable {
    public var id: LeaseID
    public var holder: String
    public var peer: String
    /// 1-based, in the whole queue.
    public var position: Int
    public var want: [Group]
    public var meta: [String: String]
    /// Arrival time.
    public var since: Tick
    /// Deadline from `wait`, nil when it waits forever.
    public var deadline: Tick?
    /// Names of the resources it has collected so far.
    public var reserved: [String]
    /// The granted leases, in arrival order, that hold a resource matching a group it has not
    /// yet filled (resources reserved for an earlier waiter are not counted).
    public var blockedBy: [LeaseID]
    /// When it ends as an orphan, unless resumed (nil: connected).
    public var orphanUntil: Tick?
}

/// The whole table: resources in inventory order (then removed-but-held ones), granted leases
/// in arrival order, the queue in arrival order.
public struct Snapshot: Sendable, Equatable {
    public var resources: [ResourceView]
    public var leases: [LeaseView]
    public var queue: [WaiterView]
    /// Goes up with every reload, the only change of a resource's name, type, labels, attributes
    /// or reset: between two snapshots of one generation only a resource's state can differ.
    public var inventoryGeneration: UInt64 = 0
}

/// Where a lease id stands.
public enum LeaseStatus: Sendable, Equatable {
    case waiting(position: Int, reserved: [String])
    case granted(resources: [String])
}

public struct ResourceCount: Sendable, Hashable {
    public var type: String
    public var state: ResourceState
    public var count: Int
}

extension LeaseTable {
    func state(_ r: Int) -> ResourceState {
        Self.state(resources[r])
    }

    static func state(_ x: borrowing ResourceRec) -> ResourceState {
        if x.owner >= 0 { return x.held ? .held : .reserved }
        if x.resetting { return .resetting }
        return x.enabled ? .free : .disabled
    }

    func view(_ r: Int) -> ResourceView {
        leases.withUnsafeBufferPointer { Self.view(resources[r], leases: $0) }
    }

    /// Borrows the records instead of copying them: a snapshot of a big lab makes one view per
    /// resource on the lease queue, and copying each record (a dozen references) cost more than
    /// the view.
    static func view(_ x: borrowing ResourceRec, leases: UnsafeBufferPointer<LeaseRec>) -> ResourceView {
        let owner = Int(x.owner)
        return ResourceView(
            name: x.name, type: x.type, labels: x.labels, attributes: x.attributes, state: state(x),
            lease: owner >= 0 ? leases[owner].id : nil, holder: owner >= 0 ? leases[owner].request.holder : nil,
            epoch: x.epoch, since: x.since, inInventory: x.inInventory, disabled: x.disabled, resettable: x.reset != nil)
    }

    func names(_ slots: [Int32]) -> [String] {
        slots.compactMap { $0 >= 0 ? resources[Int($0)].name : nil }
    }

    /// Builds the status document's contents. O(table).
    public func snapshot() -> Snapshot {
        var views: [ResourceView] = []
        views.reserveCapacity(resources.count)
        resources.withUnsafeBufferPointer { records in
            leases.withUnsafeBufferPointer { leases in
                for r in records.indices where !records[r].gone { views.append(Self.view(records[r], leases: leases)) }
            }
        }
        var granted: [(UInt64, LeaseView)] = []
        for w in leases.indices where leases[w].alive && !leases[w].waiting {
            let lease = leases[w]
            granted.append((lease.seq, LeaseView(
                id: lease.id, holder: lease.request.holder, peer: lease.request.peer, resources: names(lease.slots),
                meta: lease.request.meta, want: lease.request.want, since: lease.grantedAt, arrivedAt: lease.arrivedAt,
                phase: phase(w), until: [lease.orphanUntil, lease.revokingUntil].min().flatMap { $0 == .max ? nil : Tick(nanoseconds: $0) },
                expires: lease.expiresAt == .max ? nil : Tick(nanoseconds: lease.expiresAt))))
        }
        granted.sort { $0.0 < $1.0 }
        var waiting: [WaiterView] = []
        waiting.reserveCapacity(waiterCount)
        var pos = 0
        var holdersBySelector: [Int32: [Int32]] = [:]
        for s in queue where s >= 0 {
            pos += 1
            waiting.append(waiterView(Int(s), position: pos, holdersBySelector: &holdersBySelector))
        }
        return Snapshot(resources: views, leases: granted.map(\.1), queue: waiting, inventoryGeneration: inventoryGeneration)
    }

    func waiterView(_ w: Int, position: Int, holdersBySelector: inout [Int32: [Int32]]) -> WaiterView {
        let lease = leases[w]
        let blockedBy = blockers(of: w, cache: &holdersBySelector)
        return WaiterView(
            id: lease.id, holder: lease.request.holder, peer: lease.request.peer, position: position,
            want: lease.request.want, meta: lease.request.meta, since: lease.arrivedAt,
            deadline: lease.deadline == .max ? nil : Tick(nanoseconds: lease.deadline), reserved: names(lease.slots),
            blockedBy: blockedBy, orphanUntil: lease.orphanUntil == .max ? nil : Tick(nanoseconds: lease.orphanUntil))
    }

    /// The granted leases, in arrival order, that hold a resource matching a group of waiter `w`
    /// that it has not filled yet.
    func blockers(of w: Int) -> [LeaseID] {
        var cache: [Int32: [Int32]] = [:]
        return blockers(of: w, cache: &cache)
    }

    func blockers(of w: Int, cache: inout [Int32: [Int32]]) -> [LeaseID] {
        var blocking = Set<Int32>()
        for group in leases[w].groups where group.filled < group.count {
            blocking.formUnion(holders(ofSelector: group.sel, cache: &cache))
        }
        return blocking.sorted { leases[Int($0)].seq < leases[Int($1)].seq }.map { leases[Int($0)].id }
    }

    /// Lease slots of the granted leases that hold a member of selector `s`; with a cache kept
    /// over a snapshot, each selector's members are walked once.
    func holders(ofSelector s: Int32, cache: inout [Int32: [Int32]]) -> [Int32] {
        if let known = cache[s] { return known }
        var found = Set<Int32>()
        for r in selectors[Int(s)].members {
            let resource = resources[Int(r)]
            if resource.owner >= 0, resource.held { found.insert(resource.owner) }
        }
        let list = Array(found)
        cache[s] = list
        return list
    }

    /// Where lease `id` stands; nil when unknown (never seen, or gone).
    public func lease(_ id: LeaseID) -> LeaseStatus? {
        guard let s = leaseIndex[id] else { return nil }
        let w = Int(s)
        if leases[w].waiting {
            return .waiting(position: position(w), reserved: names(leases[w].slots))
        }
        return .granted(resources: names(leases[w].slots))
    }

    /// Holder and times of a live lease or waiter; nil when unknown.
    public func facts(of id: LeaseID) -> LeaseFacts? {
        leaseIndex[id].map { facts(Int($0)) }
    }

    func facts(_ w: Int) -> LeaseFacts {
        LeaseFacts(holder: leases[w].request.holder, arrivedAt: leases[w].arrivedAt,
                   grantedAt: leases[w].waiting ? nil : leases[w].grantedAt)
    }

    /// The granted lease holding `name` (nil if the resource is not held or unknown).
    public func holder(ofResource name: String) -> LeaseID? {
        guard let s = nameToSlot[ExactKey(name)] else { return nil }
        let r = resources[Int(s)]
        guard r.owner >= 0, r.held else { return nil }
        return leases[Int(r.owner)].id
    }

    /// One resource (also a removed-but-held one); nil if unknown.
    public func resource(named name: String) -> ResourceView? {
        guard let s = nameToSlot[ExactKey(name)], !resources[Int(s)].gone else { return nil }
        return view(Int(s))
    }

    /// Number of resources per (type, state), sorted by type then state; only non-zero
    /// entries. O(table). Removed-but-held resources count as held.
    public func resourceCounts() -> [ResourceCount] {
        var counts: [String: [Int]] = [:]
        for r in resources.indices where !resources[r].gone {
            let st = state(r)
            let idx = ResourceState.allCases.firstIndex(of: st) ?? 0
            counts[resources[r].type, default: Array(repeating: 0, count: ResourceState.allCases.count)][idx] += 1
        }
        var out: [ResourceCount] = []
        for (type, c) in counts.sorted(by: { $0.key < $1.key }) {
            for (i, st) in ResourceState.allCases.enumerated() where c[i] > 0 {
                out.append(ResourceCount(type: type, state: st, count: c[i]))
            }
        }
        return out
    }

    /// Number of resources in the inventory (not counting removed-but-held ones).
    public var inventoryCount: Int { typeMembers.values.reduce(0) { $0 + $1.count } }
}
