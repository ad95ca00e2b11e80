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
            out.append(res("r\(i)", type, labels))
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
            case .failed(let id, _, _), .revoked(let id, _, _):
                live.remove(id)
                waiting.remove(id)
            }
        }
    }

    mutating func step() {
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
            let (_, e) = h.acquire(want, wait: wait)
            let mine = e.filter { $0.lease == id }
            #expect(mine.count == 1, "acquire gave \(mine)")
            absorb(e)
        case 40..<62:
            guard let id = live.sorted().first(where: { _ in rng.next() % 3 == 0 }) ?? live.sorted().first else { return }
            live.remove(id)
            waiting.remove(id)
            absorb(h.release(id))
        case 62..<72 where admin:
            let (result, e) = h.revoke(pick(universe + ["nope"]))
            if result == .ok { #expect(e.first.map { if case .revoked = $0 { true } else { false } } == true) }
            absorb(e)
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

    /// Enable everything and release every holder until the queue drains: every waiter that
    /// is still in the table is satisfiable and must be granted.
    mutating func drain() {
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

    @Test("random sequences without admin operations: identical requests keep arrival order", arguments: 0..<100)
    func fifo(_ seed: Int) {
        var run = RandomRun(seed: UInt64(seed) &* 104_729 &+ 3, admin: false)
        for _ in 0..<120 { run.step() }
        run.drain()
    }
}
