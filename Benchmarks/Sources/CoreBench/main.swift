// CoreBench: LeaseCore operations per second at 100,000 resources and 10,000 waiters.
//
//   cd Benchmarks && swift run -c release CoreBench [--iterations N]
//
// Setup: 100,000 resources in 100 types of 1,000 (labels proto=fc|iscsi, site=a..d), plus a
// contended type "hot" of 100 resources, all held, with 10,000 waiters queued on it. Then:
//   A. acquire+release by name of random other resources (grant at once, release with no taker)
//   B. acquire+release of {type: tN, labels: {proto: fc}} (selector index, lowest free)
//   C. hand-offs: release the oldest "hot" holder (its resource goes to the earliest waiter,
//      which is granted) and queue a new waiter, keeping 10,000 waiters
//   D. waiters leaving from the middle of the queue and re-joining at the end
//   E. (apart) the snapshot of a 20,000-resource lab that /v1/status and /v1/watch take
// Every op is one call to the table; ops/s counts each acquire and each release as one op.
import LeaseCore
#if canImport(Glibc)
import Glibc  // links libm, which LeaseProtocol (under LeaseCore) needs for round()
#endif

@inline(never)
func benchmark() {

    var iterations = 1_000_000
    var args = CommandLine.arguments.dropFirst().makeIterator()
    while let a = args.next() {
        if a == "--iterations", let v = args.next(), let n = Int(v), n > 0 { iterations = n }
        if a == "--help" {
            print("usage: CoreBench [--iterations N]")
            return
        }
    }


    let typeCount = 100
    let perType = 1_000
    let hotCount = 100
    let waiterCount = 10_000

    var specs: [ResourceSpec] = []
    specs.reserveCapacity(typeCount * perType + hotCount)
    for t in 0..<typeCount {
        for i in 0..<perType {
            specs.append(ResourceSpec(
                name: "t\(t)-\(i)", type: "t\(t)",
                labels: ["proto": i % 2 == 0 ? "fc" : "iscsi", "site": ["a", "b", "c", "d"][i % 4]],
                attributes: .object([("mgmt", .string("10.\(t).\(i / 256).\(i % 256)"))])))
        }
    }
    for i in 0..<hotCount { specs.append(ResourceSpec(name: "hot-\(i)", type: "hot")) }

    let clock = ContinuousClock()
    let setupStart = clock.now
    var table: LeaseTable
    do {
        table = try LeaseTable(inventory: Inventory(specs))
    } catch {
        fatalError("inventory: \(error)")
    }
    var out: [Effect] = []
    out.reserveCapacity(64)
    var now = Tick.zero
    var nextID: UInt64 = 1
    func newID() -> LeaseID { defer { nextID += 1 }; return LeaseID(nextID) }

    var hotHolders: [LeaseID] = []   // FIFO of granted hot leases
    var hotHead = 0
    for _ in 0..<hotCount {
        let id = newID()
        out.removeAll(keepingCapacity: true)
        table.acquire(id, Request(want: [.type("hot", labels: [:], count: 1)], holder: "bench"), now: now, into: &out)
        hotHolders.append(id)
    }
    var waiters: [LeaseID] = []
    for _ in 0..<waiterCount {
        let id = newID()
        out.removeAll(keepingCapacity: true)
        table.acquire(id, Request(want: [.type("hot", labels: [:], count: 1)], holder: "bench"), now: now, into: &out)
        waiters.append(id)
    }
    precondition(table.waiterCount == waiterCount)
    print("setup: \(specs.count) resources, \(table.waiterCount) waiters in \(clock.now - setupStart)")

    var rng = SplitMix64(seed: 42)
    let names = (0..<typeCount).flatMap { t in (0..<perType).map { "t\(t)-\($0)" } }
    let nameRequests = names.map { Request(want: [.name($0)], holder: "bench", peer: "10.0.0.1:1") }
    let typeRequests = (0..<typeCount).map {
        Request(want: [.type("t\($0)", labels: ["proto": "fc"], count: 1)], holder: "bench", peer: "10.0.0.1:1")
    }
    let hotRequest = Request(want: [.type("hot", labels: [:], count: 1)], holder: "bench", peer: "10.0.0.1:1")

    @inline(never) func report(_ label: String, ops: Int, _ d: Duration) {
        let s = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        let perSec = Double(ops) / s
        print("\(label): \(ops) ops in \(d) = \(Int(perSec)) ops/s (\(Int(1e9 / perSec)) ns/op)")
    }

    var grants = 0
    var totalOps = 0
    var totalTime = Duration.zero

    // A. by name.
    do {
        let n = iterations / 2
        let start = clock.now
        for _ in 0..<n {
            now.nanoseconds += 1_000
            let id = newID()
            out.removeAll(keepingCapacity: true)
            table.acquire(id, nameRequests[Int(rng.next() % UInt64(nameRequests.count))], now: now, into: &out)
            grants += out.count
            out.removeAll(keepingCapacity: true)
            table.release(id, now: now, into: &out)
        }
        let d = clock.now - start
        report("A acquire+release by name", ops: 2 * n, d)
        totalOps += 2 * n; totalTime += d
    }

    // B. by type + labels.
    do {
        let n = iterations / 2
        let start = clock.now
        for _ in 0..<n {
            now.nanoseconds += 1_000
            let id = newID()
            out.removeAll(keepingCapacity: true)
            table.acquire(id, typeRequests[Int(rng.next() % UInt64(typeRequests.count))], now: now, into: &out)
            grants += out.count
            out.removeAll(keepingCapacity: true)
            table.release(id, now: now, into: &out)
        }
        let d = clock.now - start
        report("B acquire+release by type+labels", ops: 2 * n, d)
        totalOps += 2 * n; totalTime += d
    }

    // C. hand-offs among 10,000 waiters.
    do {
        let n = iterations / 2
        var handed = 0
        let start = clock.now
        for _ in 0..<n {
            now.nanoseconds += 1_000
            let holder = hotHolders[hotHead]
            hotHead += 1
            out.removeAll(keepingCapacity: true)
            table.release(holder, now: now, into: &out)
            for e in out { if case .granted(let id, _) = e { hotHolders.append(id); handed += 1 } }
            let id = newID()
            out.removeAll(keepingCapacity: true)
            table.acquire(id, hotRequest, now: now, into: &out)
            if hotHead > 1 << 16 { hotHolders.removeFirst(hotHead); hotHead = 0 }
        }
        let d = clock.now - start
        precondition(handed == n && table.waiterCount == waiterCount)
        report("C hand-off to earliest waiter + new waiter (10k queued)", ops: 2 * n, d)
        totalOps += 2 * n; totalTime += d
    }

    // D. waiters leave from the middle and re-join at the end; position updates ticked each 10 ms.
    do {
        let n = iterations / 2
        var queued: [LeaseID] = table.snapshot().queue.map(\.id)
        var positionUpdates = 0
        var ticks = 0
        let start = clock.now
        for i in 0..<n {
            now.nanoseconds += 10_000
            let k = Int(rng.next() % UInt64(queued.count))
            out.removeAll(keepingCapacity: true)
            table.release(queued[k], now: now, into: &out)
            let id = newID()
            queued[k] = id
            out.removeAll(keepingCapacity: true)
            table.acquire(id, hotRequest, now: now, into: &out)
            if i % 1_000 == 0, let next = table.nextDeadline, next <= now.advanced(by: .milliseconds(10)) {
                now = max(now, next)
                out.removeAll(keepingCapacity: true)
                table.tick(now: now, into: &out)
                positionUpdates += out.count
                ticks += 1
            }
        }
        let d = clock.now - start
        precondition(table.waiterCount == waiterCount)
        report("D waiter leaves mid-queue + new waiter (\(ticks) ticks, \(positionUpdates) position updates)",
               ops: 2 * n, d)
        totalOps += 2 * n; totalTime += d
    }

    report("total", ops: totalOps, totalTime)
    print("grants seen: \(grants), leases: \(table.grantedLeaseCount), waiters: \(table.waiterCount)")

    // E. What a watched lab costs the lease queue: snapshots of 20,000 resources, 50 held.
    do {
        var lab = try LeaseTable(inventory: Inventory(Array(specs.prefix(20_000))))
        for i in 0..<50 { _ = lab.acquire(LeaseID(UInt64(i + 1)), Request(want: [.name("t0-\(i)")], holder: "ci/\(i)"), now: now) }
        let rounds = 200
        let start = clock.now
        var resources = 0
        for _ in 0..<rounds { resources += lab.snapshot().resources.count }
        let d = clock.now - start
        precondition(resources == rounds * 20_000)
        print("E snapshot of 20,000 resources (50 held): \(d / rounds) each")
    } catch {
        fatalError("inventory: \(error)")
    }

}

benchmark()

/// Seeded PRNG (SplitMix64): the same runs on every platform.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
