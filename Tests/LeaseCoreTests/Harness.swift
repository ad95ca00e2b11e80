import LeaseProtocol
import Testing
@testable import LeaseCore

func res(_ name: String, _ type: String, _ labels: [String: String] = [:],
         attributes: JSONValue = .emptyObject) -> ResourceSpec {
    ResourceSpec(name: name, type: type, labels: labels, attributes: attributes)
}

func ty(_ t: String, _ labels: [String: String] = [:], count: Int = 1) -> Group {
    .type(t, labels: labels, count: count)
}

/// Drives a table with synthetic time and checks the invariants after every step.
struct Harness {
    var table: LeaseTable
    var now = Tick.zero
    var nextID: UInt64 = 1
    /// Every effect so far, in order.
    var log: [Effect] = []
    /// By the name's scalars, as the core keys names.
    var lastEpoch: [[UInt8]: UInt64] = [:]
    /// What the table should report of each lease when it ends it: holder, arrival, grant time.
    var expectedFacts: [LeaseID: LeaseFacts] = [:]

    init(_ specs: [ResourceSpec], epochs: [String: UInt64] = [:],
         sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            table = try LeaseTable(inventory: Inventory(specs), epochs: epochs)
        } catch {
            Issue.record("inventory rejected: \(error)", sourceLocation: sourceLocation)
            table = LeaseTable()
        }
        lastEpoch = Dictionary(epochs.map { (Array($0.key.utf8), $0.value) }, uniquingKeysWith: max)
    }

    mutating func record(_ effects: [Effect], _ loc: SourceLocation) {
        log += effects
        for e in effects {
            switch e {
            case .failed(let id, _, let facts), .revoked(let id, _, let facts), .expired(let id, let facts):
                #expect(facts == expectedFacts[id], "facts of \(id)", sourceLocation: loc)
            case .granted(let id, _):
                expectedFacts[id]?.grantedAt = now
            default:
                break
            }
            if case .granted(_, let rs) = e {
                for r in rs {
                    #expect(r.epoch > lastEpoch[Array(r.name.utf8), default: 0], "epoch of \(r.name) did not grow",
                            sourceLocation: loc)
                    lastEpoch[Array(r.name.utf8)] = r.epoch
                }
            }
        }
        let problems = table.checkInvariants()
        #expect(problems.isEmpty, "invariants: \(problems)", sourceLocation: loc)
    }

    @discardableResult
    mutating func acquire(_ want: [Group], wait: Double? = nil, holder: String = "",
                          meta: [String: String] = [:], revokeWait: Double? = nil, maxHold: Double? = nil,
                          sourceLocation: SourceLocation = #_sourceLocation) -> (LeaseID, [Effect]) {
        let id = LeaseID(nextID)
        nextID += 1
        let req = Request(want: want, holder: holder.isEmpty ? "h\(id.raw)" : holder, meta: meta,
                          peer: "10.0.0.1:\(id.raw)", wait: wait.map { .nanoseconds(Int64($0 * 1e9)) },
                          revokeWait: revokeWait.map { .nanoseconds(Int64($0 * 1e9)) },
                          maxHold: maxHold.map { .nanoseconds(Int64($0 * 1e9)) })
        expectedFacts[id] = LeaseFacts(holder: req.holder, arrivedAt: now, grantedAt: nil)
        let e = table.acquire(id, req, now: now)
        record(e, sourceLocation)
        return (id, e)
    }

    @discardableResult
    mutating func release(_ id: LeaseID, reason: EndReason = .release, sourceLocation: SourceLocation = #_sourceLocation) -> [Effect] {
        let e = table.release(id, reason: reason, now: now)
        record(e, sourceLocation)
        return e
    }

    @discardableResult
    mutating func revoke(_ name: String, reason: String = "admin",
                         sourceLocation: SourceLocation = #_sourceLocation) -> (AdminResult, [Effect]) {
        let (r, e) = table.revoke(resource: name, reason: reason, now: now)
        record(e, sourceLocation)
        return (r, e)
    }

    @discardableResult
    mutating func finishReset(_ name: String, succeeded: Bool, detail: String = "exit 1: broken",
                              sourceLocation: SourceLocation = #_sourceLocation) -> [Effect] {
        var e: [Effect] = []
        table.finishReset(name, succeeded: succeeded, detail: detail, now: now, into: &e)
        record(e, sourceLocation)
        return e
    }

    @discardableResult
    mutating func revokeNow(_ name: String, reason: String = "admin",
                            sourceLocation: SourceLocation = #_sourceLocation) -> (AdminResult, [Effect]) {
        let (r, e) = table.revoke(resource: name, reason: reason, now: now, immediately: true)
        record(e, sourceLocation)
        return (r, e)
    }

    @discardableResult
    mutating func orphan(_ id: LeaseID, for seconds: Double, sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        var e: [Effect] = []
        let ok = table.orphan(id, until: now.advanced(by: .nanoseconds(Int64(seconds * 1e9))), now: now, into: &e)
        record(e, sourceLocation)
        return ok
    }

    @discardableResult
    mutating func resume(_ id: LeaseID, sourceLocation: SourceLocation = #_sourceLocation) -> Resumption? {
        var e: [Effect] = []
        let r = table.resume(id, now: now, into: &e)
        record(e, sourceLocation)
        return r
    }

    @discardableResult
    mutating func disable(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) -> (AdminResult, [Effect]) {
        let (r, e) = table.disable(resource: name, now: now)
        record(e, sourceLocation)
        return (r, e)
    }

    @discardableResult
    mutating func enable(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) -> (AdminResult, [Effect]) {
        let (r, e) = table.enable(resource: name, now: now)
        record(e, sourceLocation)
        return (r, e)
    }

    @discardableResult
    mutating func reload(_ specs: [ResourceSpec], sourceLocation: SourceLocation = #_sourceLocation) -> ReloadResult {
        let r = table.reload(Inventory(specs), now: now)
        if case .applied(let e) = r { record(e, sourceLocation) } else { record([], sourceLocation) }
        return r
    }

    @discardableResult
    mutating func tick(at seconds: Double, sourceLocation: SourceLocation = #_sourceLocation) -> [Effect] {
        now = .seconds(seconds)
        let e = table.tick(now: now)
        record(e, sourceLocation)
        return e
    }

    func state(_ name: String) -> ResourceState? { table.resource(named: name)?.state }

    /// The facts an ending of `id` carries.
    func facts(_ id: LeaseID) -> LeaseFacts {
        expectedFacts[id] ?? LeaseFacts(holder: "unknown lease", arrivedAt: .zero, grantedAt: nil)
    }
}

/// Names granted to `id` in `effects`, nil when not granted there.
func granted(_ effects: [Effect], _ id: LeaseID) -> [String]? {
    for e in effects { if case .granted(id, let rs) = e { return rs.map(\.name) } }
    return nil
}

func grantedIDs(_ effects: [Effect]) -> [LeaseID] {
    effects.compactMap { if case .granted(let id, _) = $0 { return id } else { return nil } }
}

func failure(_ effects: [Effect], _ id: LeaseID) -> FailureReason? {
    for e in effects { if case .failed(id, let f, _) = e { return f } }
    return nil
}

func isUnsatisfiable(_ f: FailureReason?) -> Bool {
    if case .unsatisfiable = f { return true }
    return false
}

func queuedPosition(_ effects: [Effect], _ id: LeaseID) -> Int? {
    for e in effects { if case .queued(id, let p) = e { return p } }
    return nil
}

/// Seeded PRNG (SplitMix64): the same runs on every platform.
struct SplitMix64: RandomNumberGenerator, Sendable {
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
