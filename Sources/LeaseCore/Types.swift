// Value types of the lease core: time, ids, inventory, requests, effects.
// The core imports only the standard library and LeaseProtocol's JSONValue (resource attributes,
// which it stores and hands back untouched): no Foundation, no clock, no I/O.
import LeaseProtocol

/// A point in time, as the server tells it to the core. The core never reads a clock: every
/// mutating call takes `now`, and `LeaseTable.nextDeadline` says when the server must call
/// `tick(now:)` next. The origin is the server's choice (e.g. a monotonic clock's zero).
public struct Tick: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var nanoseconds: Int64

    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }

    public static let zero = Tick(nanoseconds: 0)

    /// Seconds since the origin (fractional allowed); saturates instead of trapping.
    public static func seconds(_ s: Double) -> Tick {
        Tick(nanoseconds: saturatingNanoseconds(s * 1e9))
    }

    public static func < (a: Tick, b: Tick) -> Bool { a.nanoseconds < b.nanoseconds }

    /// `self + d`, saturating at the representable range.
    public func advanced(by d: Duration) -> Tick {
        let (sum, o) = nanoseconds.addingReportingOverflow(d.saturatingNanoseconds)
        if o { return Tick(nanoseconds: d.saturatingNanoseconds > 0 ? .max : .min) }
        return Tick(nanoseconds: sum)
    }

    /// `self - earlier`.
    public func duration(since earlier: Tick) -> Duration {
        let (d, o) = nanoseconds.subtractingReportingOverflow(earlier.nanoseconds)
        return .nanoseconds(o ? (nanoseconds > earlier.nanoseconds ? Int64.max : Int64.min) : d)
    }

    public var description: String { "t+\(nanoseconds)ns" }
}

@inline(__always)
func saturatingNanoseconds(_ ns: Double) -> Int64 {
    if ns.isNaN { return 0 }
    if ns >= 9.2e18 { return .max }
    if ns <= -9.2e18 { return .min }
    return Int64(ns)
}

extension Duration {
    /// Whole nanoseconds, saturating at `Int64` (a `wait` of 10^12 seconds is "forever enough").
    var saturatingNanoseconds: Int64 {
        let c = components
        let (s, o) = c.seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if o { return c.seconds > 0 ? .max : .min }
        let (t, o2) = s.addingReportingOverflow(c.attoseconds / 1_000_000_000)
        if o2 { return c.seconds > 0 ? .max : .min }
        return t
    }
}

/// Opaque lease id chosen by the server (which renders it as "L…"). Must be unique among live
/// leases and waiters; an `acquire` with an id that is already live is ignored.
public struct LeaseID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var raw: UInt64
    public init(_ raw: UInt64) { self.raw = raw }
    public init(raw: UInt64) { self.raw = raw }
    public static func < (a: LeaseID, b: LeaseID) -> Bool { a.raw < b.raw }
    public var description: String { "L\(raw)" }
}

/// A name, type or label as the protocol compares them: by Unicode scalars. Swift's `String ==`
/// holds "é" and "e" + U+0301 equal (canonical equivalence); to the protocol, which counts
/// scalars, they are two different names. The core keys every index by this.
struct ExactKey: Hashable, Sendable {
    let text: String
    init(_ text: String) { self.text = text }
    static func == (a: ExactKey, b: ExactKey) -> Bool { a.text.utf8.elementsEqual(b.text.utf8) }
    func hash(into hasher: inout Hasher) {
        var text = text
        text.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}

extension String {
    /// Equal by Unicode scalars (see `ExactKey`).
    func exactlyEquals(_ other: String) -> Bool { utf8.elementsEqual(other.utf8) }
}

/// One resource of the inventory.
public struct ResourceSpec: Sendable, Equatable {
    public var name: String
    public var type: String
    public var labels: [String: String]
    public var attributes: JSONValue
    /// The longest a lease may hold it (the inventory's `max_hold`, type and resource merged);
    /// nil: no limit.
    public var maxHold: Duration?
    /// What cleans it after a lease ends badly (the inventory's `reset`); nil: nothing.
    public var reset: ResetPolicy?

    public init(name: String, type: String, labels: [String: String] = [:],
                attributes: JSONValue = .emptyObject, maxHold: Duration? = nil, reset: ResetPolicy? = nil) {
        self.name = name
        self.type = type
        self.labels = labels
        self.attributes = attributes
        self.maxHold = maxHold
        self.reset = reset
    }
}

/// A resource's reset (PROTOCOL.md "Resetting hardware after an abnormal end"). The core decides
/// when a resource must be reset and keeps it out of reach meanwhile; the server runs `command`.
public struct ResetPolicy: Sendable, Equatable {
    public enum After: String, Sendable, Equatable {
        /// After an abnormal end only.
        case abnormal
        /// After every end, clean releases too.
        case always
    }

    /// argv; `command[0]` an absolute path.
    public var command: [String]
    public var after: After
    public var timeout: Duration

    public init(command: [String], after: After = .abnormal, timeout: Duration = .seconds(300)) {
        self.command = command
        self.after = after
        self.timeout = timeout
    }
}

/// How a lease ended (the `reason` of releases; `LEASEHOLD_END_REASON` of a reset). Every end but
/// `release` is abnormal; `shutdown` (the server stops without keeping state) starts no reset.
public enum EndReason: String, Sendable, CaseIterable {
    case release
    case disconnect
    case deadPeer = "dead_peer"
    case revoked
    case shutdown
    /// An orphan nobody resumed in time.
    case expired
    /// The client broke the protocol (e.g. a binary message).
    case `protocol`
}

/// A reset the server must run now (see `LeaseTable.takeResetStarts`).
public struct ResetStart: Sendable, Equatable {
    public var name: String
    public var type: String
    public var labels: [String: String]
    public var attributes: JSONValue
    public var policy: ResetPolicy
    /// `LEASEHOLD_END_REASON`: an `EndReason`'s raw value, or `admin`.
    public var reason: String
    /// The holder of the lease that ended (nil for an admin's reset).
    public var lastHolder: String?
}

/// The resources, in inventory (file) order. Snapshots list resources in this order.
public struct Inventory: Sendable, Equatable {
    public var resources: [ResourceSpec]
    public init(_ resources: [ResourceSpec] = []) { self.resources = resources }
    public init(resources: [ResourceSpec]) { self.resources = resources }

    /// What is wrong with this inventory, in file order; empty when it is valid.
    public func problems() -> [InventoryProblem] {
        var out: [InventoryProblem] = []
        var seen: [ExactKey: Int] = [:]
        seen.reserveCapacity(resources.count)
        for (i, r) in resources.enumerated() {
            if r.name.isEmpty { out.append(.emptyName(index: i)) }
            if r.type.isEmpty { out.append(.emptyType(index: i, name: r.name)) }
            if !r.name.isEmpty {
                if let first = seen[ExactKey(r.name)] {
                    out.append(.duplicateName(r.name, first: first, index: i))
                } else {
                    seen[ExactKey(r.name)] = i
                }
            }
        }
        return out
    }
}

/// Why an inventory is invalid. `description` is a sentence fit for a 400 response.
public enum InventoryProblem: Sendable, Equatable, CustomStringConvertible {
    case emptyName(index: Int)
    case emptyType(index: Int, name: String)
    case duplicateName(String, first: Int, index: Int)

    public var description: String {
        switch self {
        case .emptyName(let i): return "resource #\(i + 1) has an empty name"
        case .emptyType(let i, let n): return "resource #\(i + 1) (\(n)) has an empty type"
        case .duplicateName(let n, let f, let i):
            return "resource name \"\(n)\" appears twice (#\(f + 1) and #\(i + 1))"
        }
    }
}

/// Thrown by `LeaseTable.init(inventory:epochs:)` for an invalid inventory.
public struct InventoryError: Error, Sendable, Equatable, CustomStringConvertible {
    public var problems: [InventoryProblem]
    public init(problems: [InventoryProblem]) { self.problems = problems }
    public var description: String { problems.map(\.description).joined(separator: "; ") }
}

/// One entry of `want`.
public enum Group: Sendable, Hashable, CustomStringConvertible {
    /// Exactly the resource with this name.
    case name(String)
    /// `count` resources of `type`, each carrying every listed label with exactly that value.
    case type(String, labels: [String: String], count: Int)

    /// A single resource of a type.
    public static func type(_ t: String, labels: [String: String] = [:]) -> Group {
        .type(t, labels: labels, count: 1)
    }

    /// How many granted resources this group contributes.
    public var count: Int {
        switch self {
        case .name: return 1
        case .type(_, _, let c): return c
        }
    }

    public var description: String {
        switch self {
        case .name(let n): return "{name: \(n)}"
        case .type(let t, let l, let c):
            let ls = l.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
            return "{type: \(t)\(ls.isEmpty ? "" : " labels: \(ls)") count: \(c)}"
        }
    }
}

/// An acquire request, already syntax-checked by the server (PROTOCOL.md limits).
public struct Request: Sendable, Equatable {
    public var want: [Group]
    public var holder: String
    public var meta: [String: String]
    public var peer: String
    /// nil: wait as long as it takes; zero: do not queue; otherwise the queue time limit.
    public var wait: Duration? {
        get { Self.duration(waitNanoseconds) }
        set { waitNanoseconds = Self.nanoseconds(newValue) }
    }
    /// After a revocation the resources stay out of reach until the client closes, at most
    /// this long; nil or zero: freed at once.
    public var revokeWait: Duration? {
        get { Self.duration(revokeWaitNanoseconds) }
        set { revokeWaitNanoseconds = Self.nanoseconds(newValue) }
    }
    /// The client's own hold limit (the inventory's may be smaller); nil: none asked.
    public var maxHold: Duration? {
        get { Self.duration(maxHoldNanoseconds) }
        set { maxHoldNanoseconds = Self.nanoseconds(newValue) }
    }

    // The durations as the table uses them, whole nanoseconds (saturated), `Int64.min` for nil:
    // every lease record keeps its request, and three `Duration?` take 72 bytes where these take 24.
    private var waitNanoseconds: Int64 = .min
    private var revokeWaitNanoseconds: Int64 = .min
    private var maxHoldNanoseconds: Int64 = .min

    private static func nanoseconds(_ duration: Duration?) -> Int64 {
        guard let duration else { return .min }
        return max(duration.saturatingNanoseconds, .min + 1)
    }

    private static func duration(_ nanoseconds: Int64) -> Duration? {
        nanoseconds == .min ? nil : .nanoseconds(nanoseconds)
    }

    public init(want: [Group], holder: String = "", meta: [String: String] = [:],
                peer: String = "", wait: Duration? = nil, revokeWait: Duration? = nil, maxHold: Duration? = nil) {
        self.want = want
        self.holder = holder
        self.meta = meta
        self.peer = peer
        self.wait = wait
        self.revokeWait = revokeWait
        self.maxHold = maxHold
    }
}

/// A resource as handed to a client in a `granted` event.
public struct GrantedResource: Sendable, Equatable {
    public var name: String
    public var type: String
    public var labels: [String: String]
    public var attributes: JSONValue
    public var epoch: UInt64

    public init(name: String, type: String, labels: [String: String], attributes: JSONValue, epoch: UInt64) {
        self.name = name
        self.type = type
        self.labels = labels
        self.attributes = attributes
        self.epoch = epoch
    }
}

/// Why a lease attempt ended without (or before) a grant.
public enum FailureReason: Sendable, Equatable {
    /// Close 4404 `unsatisfiable`: unknown name/type, the same name twice, more than the
    /// inventory has (counting disabled and held resources), or a reload made it so.
    case unsatisfiable(String)
    /// Close 4408 `wait_timeout`: `wait` ran out, or `wait: 0` and not grantable at once.
    /// `heldBy`: the granted leases that held what it still needed then (as `blocked_by`).
    case waitTimeout(heldBy: [LeaseID])
}

/// What the table knew of a lease it ended, for whoever records the ending.
public struct LeaseFacts: Sendable, Equatable {
    public var holder: String
    public var arrivedAt: Tick
    /// nil for a waiter.
    public var grantedAt: Tick?

    public init(holder: String, arrivedAt: Tick, grantedAt: Tick?) {
        self.holder = holder
        self.arrivedAt = arrivedAt
        self.grantedAt = grantedAt
    }
}

/// What the server must tell clients. Effects come out in the order the state changed.
public enum Effect: Sendable, Equatable {
    /// Resources in the order of the want groups; a count-N group gives N consecutive entries.
    case granted(LeaseID, [GrantedResource])
    /// The request waits; sent once, at once, for each new waiter.
    case queued(LeaseID, position: Int)
    /// A later position update (at most one a second per waiter; positions only go down).
    case positionChanged(LeaseID, position: Int)
    /// The lease attempt is over and gone from the table.
    case failed(LeaseID, FailureReason, LeaseFacts)
    /// The lease was revoked (an admin, or its `max_hold`) and its resources are free again;
    /// the lease is gone from the table. Preceded by `.revoking` when the lease asked for a
    /// `revokeWait` (then the reason was told already).
    case revoked(LeaseID, reason: String, LeaseFacts)
    /// The lease is revoked but keeps its resources out of reach until its client closes or
    /// `until` (its `revokeWait`) passes; then `.revoked` follows.
    case revoking(LeaseID, reason: String, until: Tick)
    /// An orphan (lease or waiter) was not resumed in time; it is gone from the table.
    case expired(LeaseID, LeaseFacts)

    public var lease: LeaseID {
        switch self {
        case .granted(let l, _), .queued(let l, _), .positionChanged(let l, _),
             .failed(let l, _, _), .revoked(let l, _, _), .revoking(let l, _, _), .expired(let l, _):
            return l
        }
    }
}

/// Result of an admin call on one resource (`revoke`, `disable`, `enable`).
public enum AdminResult: Sendable, Equatable {
    case ok
    /// No such resource (404).
    case notFound
    /// `revoke` of a resource that is free, reserved or disabled (409).
    case notHeld
}

/// Result of `reload`.
public enum ReloadResult: Sendable, Equatable {
    /// The new inventory is in force; effects as for any event.
    case applied([Effect])
    /// Nothing changed (400 with these reasons).
    case invalid([InventoryProblem])
}
