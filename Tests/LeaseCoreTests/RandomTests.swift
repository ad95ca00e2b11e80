import Testing
@testable import LeaseCore

/// Seeded random event sequences over overlapping selectors; invariants after every event.
struct RandomRun {
    var rng: SplitMix64
    var h: Harness
    var live: Set<LeaseID> = []
    var wants: [LeaseID: [Group]] = [:]
    var arrival: [LeaseID: UInt64] = [:]
    var waiting: Set<LeaseID> = []
    var admin: Bool
    var universe: [String] = []
    var clock = 0.0
    /// Resources whose reset the "server" has not finished yet.
    var resetting: [String] = []

    static let labelSets: [[String: String]] = [
        [:], ["p": "fc"], ["p": "iscsi"], ["s": "a"], ["p": "fc", "s": "b"], ["s": "b"],
    ]

    init(seed: UInt64, admin: Bool) {
        rng = SplitMix64(seed: seed)
        self.admin = admin
        h = Harness([])
        let inv = RandomRun.inventory(&rng, size: 8 + Int(rng.next() % 8))
        universe = inv.map(\.name)
        h = Harness(inv)
    }

    static func inventory(_ rng: inout SplitMix64, size: Int) -> [ResourceSpec] {
        var out: [ResourceSpec] = []
        for i in 0..<size {
            let kind = rng.next() % 3
            let type = kind == 0 ? "y" : "x"
            var labels: [String: String] = [:]
            if rng.next() % 3 != 0 { labels["p"] = rng.next() % 2 == 0 ? "fc" : "iscsi" }
            if rng.next() % 2 == 0 { labels["s"] = rng.next() % 2 == 0 ? "a" : "b" }
            var spec = res("r\(i)", type, labels)
            switch rng.next() % 4 {
            case 0: spec.reset = ResetPolicy(command: ["/bin/true"], after: .abnormal)
            case 1: spec.reset = ResetPolicy(command: ["/bin/true"], after: .always)
            default: break
            }
            out.append(spec)
        }
        return out
    }

    mutating func pick<T>(_ a: [T]) -> T { a[Int(rng.next() % UInt64(a.count))] }

    mutating func randomWant() -> [Group] {
        var want: [Group] = []
        for _ in 0..<(1 + Int(rng.next() % 3)) {
            switch rng.next() % 10 {
            case 0, 1, 2: want.append(.name(pick(universe + ["nope"])))
            case 3: want.append(ty(pick(["x", "y", "tape"]), pick(Self.labelSets), count: 1 + Int(rng.next() % 2)))
            default: want.append(ty("x", pick(Self.labelSets), count: 1 + Int(rng.next() % 3)))
            }
        }
        return want
    }

    mutating func absorb(_ effects: [Effect]) {
        for e in effects {
            switch e {
            case .granted(let id, let rs):
                #expect(live.contains(id))
                if !admin, let mine = arrival[id] {
                    // FIFO: an earlier waiter with the same request is never left behind.
                    for other in waiting where other != id && arrival[other, default: 0] < mine && wants[other] == wants[id] {
                        Issue.record("\(id) granted before earlier identical waiter \(other)")
                    }
                }
                #expect(rs.count == wants[id]?.reduce(0) { $0 + $1.count })
                waiting.remove(id)
            case .queued(let id, _):
                waiting.insert(id)
            case .positionChanged(let id, _):
                #expect(waiting.contains(id))
            case .failed(let id, _, _), .revoked(let id, _, _), .expired(let id, _):
                live.remove(id)
                waiting.remove(id)
            case .revoking(let id, _, _):
                #expect(live.contains(id) && !waiting.contains(id))
            }
        }
    }

    mutating func step() {
        resetting += h.table.takeResetStarts().map(\.name)
        let r = rng.next() % 100
        switch r {
        case 0..<40:
            let want = randomWant()
            let w = rng.next() % 10
            let wait: Double? = w < 5 ? nil : (w < 7 ? 0 : Double(1 + rng.next() % 8) / 2)
            let id = LeaseID(h.nextID)
            live.insert(id)
            wants[id] = want
            arrival[id] = h.nextID
            let revokeWait: Double? = admin && rng.next() % 3 == 0 ? Double(rng.next() % 6) / 2 : nil
            let maxHold: Double? = admin && rng.next() % 4 == 0 ? Double(1 + rng.next() % 8) / 2 : nil
            let (_, e) = h.acquire(want, wait: wait, revokeWait: revokeWait, maxHold: maxHold)
            let mine = e.filter { $0.lease == id }
            #expect(mine.count == 1, "acquire gave \(mine)")
            absorb(e)
        case 40..<62:
            guard let id = live.sorted().first(where: { _ in rng.next() % 3 == 0 }) ?? live.sorted().first else { return }
            live.remove(id)
            waiting.remove(id)
            absorb(h.release(id, reason: pick([.release, .release, .disconnect, .deadPeer])))
            resetting += h.table.takeResetStarts().map(\.name)
        case 62..<64 where !resetting.isEmpty:
            let name = resetting.remove(at: Int(rng.next() % UInt64(resetting.count)))
            absorb(h.finishReset(name, succeeded: rng.next() % 4 != 0))
        case 62..<67 where admin:
            let (result, e) = h.revoke(pick(universe + ["nope"]))
            if result == .ok, let first = e.first {
                switch first {
                case .revoked, .revoking: break
                default: Issue.record("revoke began with \(first)")
                }
            }
            absorb(e)
        case 67..<69 where admin:
            let (result, e) = h.revokeNow(pick(universe + ["nope"]))
            if result == .ok { #expect(e.first.map { if case .revoked = $0 { true } else { false } } == true) }
            absorb(e)
        case 69..<71:
            guard let id = live.sorted().first(where: { _ in rng.next() % 3 == 0 }) else { return }
            let phase = h.table.phase(of: id)
            let ok = h.orphan(id, for: Double(rng.next() % 6) / 2)
            #expect(ok == (phase != .revoking), "orphan of a \(String(describing: phase)) lease")
        case 71..<72:
            guard let id = live.sorted().first(where: { h.table.phase(of: $0) == .orphaned }) else { return }
            let r = h.resume(id)
            #expect(r != nil)
            #expect(h.table.phase(of: id) == .granted || h.table.phase(of: id) == .waiting)
        case 72..<80 where admin:
            absorb(h.disable(pick(universe)).1)
        case 80..<88 where admin:
            absorb(h.enable(pick(universe)).1)
        case 88..<92 where admin:
            var inv = Self.inventory(&rng, size: 6 + Int(rng.next() % 10))
            if rng.next() % 5 == 0 { inv.append(inv[0]) }  // invalid now and then
            if case .applied(let e) = h.reload(inv) {
                universe = inv.map(\.name)
                absorb(e)
            }
        default:
            clock += Double(rng.next() % 16) / 10
            absorb(h.tick(at: clock))
        }
    }

    /// A restart: a fresh table with the same inventory and epochs gets every live lease back
    /// through `restore`, and the run goes on with it. Granted leases keep their resources and
    /// epochs, the queue its order; nobody is granted by the restore itself (without admin
    /// operations nothing free was usable before either).
    mutating func restart(orphanedFor seconds: Double) {
        let old = h.table
        let kept = old.keptForTest(orphanUntil: h.now.advanced(by: .nanoseconds(Int64(seconds * 1e9))))
        guard var fresh = try? LeaseTable(inventory: Inventory(universe.map { name in
            old.resources.first { $0.name == name && $0.inInventory }.map { old in
                var spec = res(old.name, old.type, old.labels)
                spec.reset = old.reset
                return spec
            } ?? res(name, "x")
        }), epochs: old.epochs, now: h.now) else {
            Issue.record("inventory refused on restart")
            return
        }
        var effects: [Effect] = []
        // The server restarts the resets that were running (with a state directory).
        // (A reload may have dropped the policy of one that runs: the server disables those.)
        resetting = (resetting + old.resetStarts.map(\.name)).filter { old.resource(named: $0)?.state == .resetting }
        for name in resetting {
            let result = fresh.beginReset(name, reason: "restart", force: true, now: h.now, into: &effects)
            #expect(result == (fresh.resources.first { $0.name == name }?.reset == nil
                ? .conflict("'\(name)' has no reset command in the inventory") : .started))
        }
        resetting = fresh.takeResetStarts().map(\.name)
        let refused = fresh.restore(kept, now: h.now, into: &effects)
        #expect(refused.isEmpty)
        h.table = fresh
        h.record(effects, #_sourceLocation)
        let before = old.snapshot(), after = fresh.snapshot()
        // Every lease keeps what it held. (With admin operations, a waiter may be granted at
        // once: this fresh table has nothing disabled; the server restores disables first.)
        let afterLeases = Dictionary(uniqueKeysWithValues: after.leases.map { ($0.id, $0.resources) })
        for lease in before.leases { #expect(afterLeases[lease.id] == lease.resources) }
        for view in before.resources where view.state == .held {
            #expect(fresh.resource(named: view.name)?.lease == view.lease)
            #expect(fresh.resource(named: view.name)?.epoch == view.epoch)
        }
        if !admin {
            #expect(after.leases.map(\.id) == before.leases.map(\.id))
            #expect(grantedIDs(effects).isEmpty)
            #expect(after.queue.map(\.id) == before.queue.map(\.id))
        }
        #expect(fresh.orphanCount == fresh.grantedLeaseCount + fresh.waiterCount, "every restored lease is orphaned")
        absorb(effects)
    }

    /// Enable everything and release every holder until the queue drains: every waiter that
    /// is still in the table is satisfiable and must be granted.
    mutating func drain() {
        resetting += h.table.takeResetStarts().map(\.name)
        for name in resetting { absorb(h.finishReset(name, succeeded: true)) }
        resetting = []
        for name in universe { absorb(h.enable(name).1) }
        var rounds = 0
        while h.table.waiterCount > 0 && rounds < 1000 {
            rounds += 1
            let holders = live.filter { !waiting.contains($0) }.sorted()
            if holders.isEmpty { break }
            for id in holders {
                live.remove(id)
                absorb(h.release(id))
            }
            // Resets after `always` releases: done at once.
            for start in h.table.takeResetStarts() { absorb(h.finishReset(start.name, succeeded: true)) }
        }
        #expect(h.table.waiterCount == 0, "waiters left: \(h.table.snapshot().queue.map(\.id))")
    }
}

@Suite struct Randomized {
    @Test("random sequences with admin operations and reloads", arguments: 0..<100)
    func withAdmin(_ seed: Int) {
        var run = RandomRun(seed: UInt64(seed) &* 7919 &+ 1, admin: true)
        for _ in 0..<120 { run.step() }
        run.drain()
    }

    @Test("a restart restores every lease and waiter, and the run goes on", arguments: 0..<60)
    func restored(_ seed: Int) {
        var run = RandomRun(seed: UInt64(seed) &* 6_151 &+ 5, admin: seed % 2 == 0)
        for _ in 0..<60 { run.step() }
        run.restart(orphanedFor: Double(seed % 4))
        for _ in 0..<60 { run.step() }
        run.drain()
    }

    @Test("random sequences without admin operations: identical requests keep arrival order", arguments: 0..<100)
    func fifo(_ seed: Int) {
        var run = RandomRun(seed: UInt64(seed) &* 104_729 &+ 3, admin: false)
        for _ in 0..<120 { run.step() }
        run.drain()
    }
}

extension LeaseTable {
    /// What a store would keep of every live lease, in arrival order (for restore tests).
    func keptForTest(orphanUntil: Tick) -> [RestoredLease] {
        leases.indices.filter { leases[$0].alive }.sorted { leases[$0].seq < leases[$1].seq }.map { w in
            let lease = leases[w]
            var grant: RestoredLease.Grant?
            if !lease.waiting {
                grant = RestoredLease.Grant(
                    resources: grantedList(w), grantedAt: lease.grantedAt,
                    expires: lease.expiresAt == .max ? nil : Tick(nanoseconds: lease.expiresAt),
                    holdLimit: lease.holdLimit == .max ? nil : .nanoseconds(lease.holdLimit))
            }
            return RestoredLease(id: lease.id, request: lease.request, arrivedAt: lease.arrivedAt,
                                 deadline: lease.deadline == .max ? nil : Tick(nanoseconds: lease.deadline),
                                 grant: grant, orphanUntil: orphanUntil)
        }
    }
}
