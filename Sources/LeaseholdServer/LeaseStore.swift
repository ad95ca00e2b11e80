import Dispatch
import Synchronization
import LeaseCore
import LeaseProtocol
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// What the server keeps of one lease or waiter so that the next process can take it over.
/// Times are wall-clock nanoseconds since the Unix epoch (a restart has a new monotonic clock).
struct KeptLease: Sendable {
    var id: LeaseID
    /// SHA-256 of the resume token, in hex: the token itself is never stored.
    var tokenHash: String
    var holder: String
    var peer: String
    var peerHost: String
    var tokenName: String?
    var want: [WantGroup]
    /// In the order the client sent it.
    var meta: [(String, String)]
    var arrivedAt: Int64
    /// When its `wait` runs out (waiters only); nil: never.
    var waitUntil: Int64?
    var grace: Double?
    var revokeWait: Double?
    var maxHold: Double?
    var grant: Grant?
    /// Orphaned (its connection gone) until then; nil: connected when last recorded.
    var orphanUntil: Int64?
    /// Revoked and waiting for its client to stop: a restart ends it.
    var revoking = false

    struct Grant: Sendable {
        var resources: [LeaseProtocol.GrantedResource]
        var at: Int64
        var expires: Int64?
        var holdLimit: Int64?
    }
}

/// What a previous process kept.
struct KeptState: Sendable {
    var leases: [KeptLease] = []
    var epochs: [String: UInt64] = [:]
    var disabled: [String: Disabled] = [:]
    /// Resets that were running: they run again.
    var resetting: [String: Resetting] = [:]

    struct Resetting: Sendable, Equatable {
        var reason: String
        var lastHolder: String?
    }

    struct Disabled: Sendable, Equatable {
        var reason: String
        /// Wall-clock nanoseconds.
        var since: Int64
    }
}

/// Leases, waiters and fencing epochs that outlive the process. The lease service records every
/// change on its queue and sends nothing a client relies on (a grant above all) before
/// `whenDurable` says it is safe. The interface is small on purpose: the same calls map onto a
/// replicated store (etcd: a key per lease under a lease prefix, a transaction per batch) without
/// touching the lease core.
protocol LeaseStore: AnyObject {
    /// Everything kept: leases and waiters in arrival order, epochs and disabled resources by
    /// name. Once, at start.
    func load() throws(StartupError) -> KeptState
    /// A new lease or waiter (with everything but its grant).
    func recordArrival(_ lease: KeptLease)
    func recordGrant(_ id: LeaseID, _ grant: KeptLease.Grant)
    /// Orphaned until `until`; nil: resumed.
    func recordOrphan(_ id: LeaseID, until: Int64?)
    func recordRevoking(_ id: LeaseID)
    /// The lease or waiter is over.
    func recordEnd(_ id: LeaseID)
    /// A resource taken out of service (with why), or put back (nil).
    func recordDisabled(_ name: String, _ disabled: KeptState.Disabled?)
    /// A reset started (it runs again after a restart until `recordResetDone`).
    func recordResetting(_ name: String, reason: String, lastHolder: String?)
    func recordResetDone(_ name: String)
    /// Calls `done` on the service queue once everything recorded so far is durable (at once
    /// when it already is). Calls run in the order they were asked for.
    func whenDurable(_ done: @escaping () -> Void)
    /// Whether the last write succeeded (`/healthz` fails while it does not).
    var isHealthy: Bool { get }
}

/// The first `LeaseStore`: one append-only file of JSON lines in the state directory, written
/// with group commit (one `fdatasync` for every change that arrived while the previous one ran),
/// rewritten compactly at start and whenever it grows well past what is live.
///
/// A crash can tear only the last line, which loading skips; a failed write is retried from a
/// fresh line, and until it succeeds nothing waiting for durability is sent.
final class FileLeaseStore: LeaseStore, @unchecked Sendable {
    static let fileName = "leases.jsonl"
    let directory: String
    private var path: String { directory + "/" + Self.fileName }
    /// The lease service's queue: every call but the I/O runs on it.
    private let queue: DispatchQueue
    private let io = DispatchQueue(label: "leasehold.state")
    private let logger: Logger
    private var fd: Int32 = -1

    // Owned by `queue`.
    private var live: [LeaseID: KeptLease] = [:]
    private var order: [LeaseID: UInt64] = [:]
    private var nextOrder: UInt64 = 0
    private var epochs: [String: UInt64] = [:]
    private var disabled: [String: KeptState.Disabled] = [:]
    private var resetting: [String: KeptState.Resetting] = [:]
    private var pending: [UInt8] = []
    private var recorded: UInt64 = 0
    private var durable: UInt64 = 0
    private var waiting: [(seq: UInt64, done: () -> Void)] = []
    private var writing = false
    private var fileBytes = 0
    private var failing = false
    /// The file is rewritten once it is larger than this and four times what is live.
    var compactionFloor = 8 << 20
    private let healthy = Atomic<Bool>(true)

    var isHealthy: Bool { healthy.load(ordering: .relaxed) }

    init(directory: String, queue: DispatchQueue, logger: Logger) throws(StartupError) {
        self.directory = directory
        self.queue = queue
        self.logger = logger
        if access(directory, F_OK) != 0 && mkdir(directory, 0o750) != 0 {
            throw StartupError(message: "cannot create --state-dir \(directory): \(String(cString: strerror(errno)))")
        }
        guard access(directory, W_OK) == 0 else {
            throw StartupError(message: "--state-dir \(directory) is not writable: \(String(cString: strerror(errno)))")
        }
    }

    deinit { if fd >= 0 { close(fd) } }

    // MARK: load

    func load() throws(StartupError) -> KeptState {
        try importLegacyEpochs()
        if access(path, F_OK) == 0 {
            let text: String
            do { text = try readTextFile(path, limit: 1 << 30) } catch {
                throw StartupError(message: "cannot read the lease state \(path): \(error.description)")
            }
            var skipped = 0
            let lines = text.split(separator: "\n", omittingEmptySubsequences: true)
            for (index, line) in lines.enumerated() {
                guard let value = try? JSONValue.parse(Array(line.utf8)), apply(value) else {
                    // A torn last line is what a crash leaves; anything else is worth a word.
                    if index != lines.count - 1 || text.hasSuffix("\n") { skipped += 1 }
                    continue
                }
            }
            if skipped > 0 {
                logger.warning("lease state: skipped unreadable lines", metadata: ["path": .string(path), "lines": .stringConvertible(skipped)])
            }
        }
        try rewrite()
        let kept = live.values.sorted { order[$0.id, default: 0] < order[$1.id, default: 0] }
        return KeptState(leases: kept, epochs: epochs, disabled: disabled, resetting: resetting)
    }

    /// `epochs.json` from an older release's `--epoch-file` in this directory (its ceilings are
    /// safe starting points): read so that epochs keep growing over the upgrade.
    private func importLegacyEpochs() throws(StartupError) {
        let legacy = directory + "/epochs.json"
        guard access(legacy, F_OK) == 0 else { return }
        let text: String
        do { text = try readTextFile(legacy, limit: 64 << 20) } catch {
            throw StartupError(message: "cannot read \(legacy): \(error.description)")
        }
        guard let value = try? JSONValue.parse(text), case .object(let members) = value else {
            throw StartupError(message: "\(legacy) (fencing epochs of an older release) is not a JSON object of epochs; fix or remove it")
        }
        for (name, number) in members {
            guard case .int(let epoch) = number, epoch >= 0 else {
                throw StartupError(message: "\(legacy): the epoch of '\(name)' is not a non-negative integer")
            }
            epochs[name] = max(epochs[name] ?? 0, UInt64(epoch))
        }
    }

    /// Applies one line; false if it is not a record this store wrote.
    private func apply(_ value: JSONValue) -> Bool {
        guard case .string(let op)? = value["op"] else { return false }
        if op == "epochs" {
            guard case .object(let members)? = value["epochs"] else { return false }
            for (name, number) in members {
                guard case .int(let epoch) = number, epoch >= 0 else { return false }
                epochs[name] = max(epochs[name] ?? 0, UInt64(epoch))
            }
            return true
        }
        if op == "resetting" {
            guard let name = value["name"]?.stringValue else { return false }
            if let reason = value["reason"]?.stringValue {
                resetting[name] = KeptState.Resetting(reason: reason, lastHolder: value["last_holder"]?.stringValue)
            } else {
                resetting[name] = nil
            }
            return true
        }
        if op == "disabled" {
            guard let name = value["name"]?.stringValue else { return false }
            if let reason = value["reason"]?.stringValue, let since = value["since"]?.int64Value {
                disabled[name] = KeptState.Disabled(reason: reason, since: since)
            } else {
                disabled[name] = nil
            }
            return true
        }
        guard let id = value["id"]?.stringValue.flatMap(LeaseService.parseID) else { return false }
        switch op {
        case "lease":
            guard let lease = Self.kept(from: value, id: id) else { return false }
            adopt(lease)
        case "grant":
            guard let grant = value["grant"].flatMap(Self.grant(from:)) else { return false }
            live[id]?.grant = grant
            noteEpochs(grant)
        case "orphan":
            live[id]?.orphanUntil = value["until"].flatMap(\.int64Value)
        case "revoking":
            live[id]?.revoking = true
        case "end":
            live[id] = nil
            order[id] = nil
        default:
            return false
        }
        return true
    }

    private func adopt(_ lease: KeptLease) {
        if order[lease.id] == nil {
            order[lease.id] = nextOrder
            nextOrder += 1
        }
        live[lease.id] = lease
        if let grant = lease.grant { noteEpochs(grant) }
    }

    private func noteEpochs(_ grant: KeptLease.Grant) {
        for resource in grant.resources { epochs[resource.name] = max(epochs[resource.name] ?? 0, resource.epoch) }
    }

    // MARK: record (on `queue`)

    func recordArrival(_ lease: KeptLease) {
        adopt(lease)
        append(Self.json(lease))
    }

    func recordGrant(_ id: LeaseID, _ grant: KeptLease.Grant) {
        live[id]?.grant = grant
        noteEpochs(grant)
        append(.object([("op", .string("grant")), ("id", .string(LeaseService.format(id))), ("grant", Self.json(grant))]))
    }

    func recordOrphan(_ id: LeaseID, until: Int64?) {
        live[id]?.orphanUntil = until
        append(.object([("op", .string("orphan")), ("id", .string(LeaseService.format(id))), ("until", until.map { .int($0) } ?? .null)]))
    }

    func recordRevoking(_ id: LeaseID) {
        live[id]?.revoking = true
        append(.object([("op", .string("revoking")), ("id", .string(LeaseService.format(id)))]))
    }

    func recordEnd(_ id: LeaseID) {
        guard live.removeValue(forKey: id) != nil else { return }
        order[id] = nil
        append(.object([("op", .string("end")), ("id", .string(LeaseService.format(id)))]))
    }

    func recordResetting(_ name: String, reason: String, lastHolder: String?) {
        resetting[name] = KeptState.Resetting(reason: reason, lastHolder: lastHolder)
        append(Self.json(resettingName: name, resetting[name]))
    }

    func recordResetDone(_ name: String) {
        guard resetting.removeValue(forKey: name) != nil else { return }
        append(Self.json(resettingName: name, nil))
    }

    private static func json(resettingName name: String, _ state: KeptState.Resetting?) -> JSONValue {
        var members: [(String, JSONValue)] = [("op", .string("resetting")), ("name", .string(name))]
        if let state { members += [("reason", .string(state.reason)), ("last_holder", state.lastHolder.map { .string($0) } ?? .null)] }
        return .object(members)
    }

    func recordDisabled(_ name: String, _ state: KeptState.Disabled?) {
        disabled[name] = state
        append(Self.json(disabledName: name, state))
    }

    private static func json(disabledName name: String, _ state: KeptState.Disabled?) -> JSONValue {
        var members: [(String, JSONValue)] = [("op", .string("disabled")), ("name", .string(name))]
        if let state { members += [("reason", .string(state.reason)), ("since", .int(state.since))] }
        return .object(members)
    }

    private func append(_ record: JSONValue) {
        pending.append(contentsOf: record.serialized().utf8)
        pending.append(UInt8(ascii: "\n"))
        recorded += 1
    }

    func whenDurable(_ done: @escaping () -> Void) {
        if durable == recorded && waiting.isEmpty { return done() }
        waiting.append((recorded, done))
        flush()
    }

    // MARK: writing

    /// Writes what is pending (or the whole live state, when the file has grown well past it)
    /// and syncs it; then runs what waited for it and starts the next batch.
    private func flush() {
        guard !writing, durable < recorded || !waiting.isEmpty else { return }
        writing = true
        let target = recorded
        let compact = fileBytes > compactionFloor && fileBytes > 4 * (live.count * 512 + 4096)
        let batch: [UInt8]
        if compact {
            batch = Self.contents(live.values.sorted { order[$0.id, default: 0] < order[$1.id, default: 0] }, epochs: epochs, disabled: disabled, resetting: resetting)
        } else {
            batch = pending
        }
        pending.removeAll(keepingCapacity: true)
        let retry = failing
        io.async { [self] in
            var failure: String?
            do throws(StartupError) {
                if compact {
                    try writeAtomically(batch)
                } else {
                    try appendAndSync(batch, freshLine: retry)
                }
            } catch {
                failure = error.message
            }
            queue.async { [self, failure] in written(target: target, batch: batch, compacted: compact, failure: failure) }
        }
    }

    private func written(target: UInt64, batch: [UInt8], compacted: Bool, failure: String?) {
        writing = false
        if let failure {
            // Nothing waiting is released: a grant that is not durable is not sent.
            if !compacted { pending.insert(contentsOf: batch, at: 0) }
            if !failing {
                logger.critical("lease state cannot be written; grants are held back until it can", metadata: [
                    "path": .string(path), "error": .string(failure),
                ])
            }
            failing = true
            healthy.store(false, ordering: .relaxed)
            queue.asyncAfter(deadline: .now() + .seconds(1)) { [self] in flush() }
            return
        }
        if failing {
            logger.notice("lease state is written again", metadata: ["path": .string(path)])
            failing = false
            healthy.store(true, ordering: .relaxed)
        }
        fileBytes = compacted ? batch.count : fileBytes + batch.count
        durable = target
        while let first = waiting.first, first.seq <= durable {
            waiting.removeFirst()
            first.done()
        }
        flush()
    }

    /// The file as a fresh start writes it: the epochs, then every live lease.
    private static func contents(_ leases: [KeptLease], epochs: [String: UInt64], disabled: [String: KeptState.Disabled],
                                 resetting: [String: KeptState.Resetting]) -> [UInt8] {
        var bytes: [UInt8] = []
        let epochLine = JSONValue.object([("op", .string("epochs")), ("epochs", .object(epochs.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64(clamping: $0.value))) }))])
        bytes.append(contentsOf: epochLine.serialized().utf8)
        bytes.append(UInt8(ascii: "\n"))
        for (name, state) in disabled.sorted(by: { $0.key < $1.key }) {
            bytes.append(contentsOf: json(disabledName: name, state).serialized().utf8)
            bytes.append(UInt8(ascii: "\n"))
        }
        for (name, state) in resetting.sorted(by: { $0.key < $1.key }) {
            bytes.append(contentsOf: json(resettingName: name, state).serialized().utf8)
            bytes.append(UInt8(ascii: "\n"))
        }
        for lease in leases {
            bytes.append(contentsOf: json(lease).serialized().utf8)
            bytes.append(UInt8(ascii: "\n"))
        }
        return bytes
    }

    /// At start: the compact file replaces what was read.
    private func rewrite() throws(StartupError) {
        let bytes = Self.contents(live.values.sorted { order[$0.id, default: 0] < order[$1.id, default: 0] }, epochs: epochs, disabled: disabled, resetting: resetting)
        do { try writeAtomically(bytes) } catch {
            throw StartupError(message: "cannot write the lease state in --state-dir \(directory): \(error.message)")
        }
        fileBytes = bytes.count
    }

    /// Temporary file, fsync, rename, fsync of the directory; then appends go to the new file.
    private func writeAtomically(_ bytes: [UInt8]) throws(StartupError) {
        let temporary = path + ".tmp"
        let out = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard out >= 0 else { throw StartupError(message: "open \(temporary): \(String(cString: strerror(errno)))") }
        do throws(StartupError) {
            try Self.writeAll(out, bytes)
            guard fsync(out) == 0 else { throw StartupError(message: "fsync \(temporary): \(String(cString: strerror(errno)))") }
        } catch {
            close(out)
            throw error
        }
        close(out)
        guard rename(temporary, path) == 0 else { throw StartupError(message: "rename \(temporary): \(String(cString: strerror(errno)))") }
        let dir = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dir >= 0 else { throw StartupError(message: "open \(directory): \(String(cString: strerror(errno)))") }
        defer { close(dir) }
        guard fsync(dir) == 0 else { throw StartupError(message: "fsync \(directory): \(String(cString: strerror(errno)))") }
        if fd >= 0 { close(fd) }
        fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
        guard fd >= 0 else { throw StartupError(message: "open \(path): \(String(cString: strerror(errno)))") }
    }

    /// `freshLine`: after a failed write, which may have left half a line.
    private func appendAndSync(_ bytes: [UInt8], freshLine: Bool) throws(StartupError) {
        if fd < 0 {
            fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            guard fd >= 0 else { throw StartupError(message: "open \(path): \(String(cString: strerror(errno)))") }
        }
        if freshLine { try Self.writeAll(fd, [UInt8(ascii: "\n")]) }
        try Self.writeAll(fd, bytes)
        guard fdatasync(fd) == 0 else { throw StartupError(message: "fdatasync \(path): \(String(cString: strerror(errno)))") }
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(StartupError) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return write(fd, base + offset, raw.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw StartupError(message: "write: \(String(cString: strerror(errno)))")
            }
            offset += written
        }
    }

    // MARK: JSON

    static func json(_ lease: KeptLease) -> JSONValue {
        var members: [(String, JSONValue)] = [
            ("op", .string("lease")), ("id", .string(LeaseService.format(lease.id))), ("token_sha256", .string(lease.tokenHash)),
            ("holder", .string(lease.holder)), ("peer", .string(lease.peer)), ("peer_host", .string(lease.peerHost)),
            ("want", .array(lease.want.map(\.json))), ("meta", .object(lease.meta.map { ($0.0, .string($0.1)) })),
            ("arrived", .int(lease.arrivedAt)),
        ]
        if let name = lease.tokenName { members.append(("token_name", .string(name))) }
        if let until = lease.waitUntil { members.append(("wait_until", .int(until))) }
        if let grace = lease.grace { members.append(("grace", .double(grace))) }
        if let wait = lease.revokeWait { members.append(("revoke_wait", .double(wait))) }
        if let hold = lease.maxHold { members.append(("max_hold", .double(hold))) }
        if let grant = lease.grant { members.append(("grant", json(grant))) }
        if let until = lease.orphanUntil { members.append(("orphan_until", .int(until))) }
        if lease.revoking { members.append(("revoking", .bool(true))) }
        return .object(members)
    }

    static func json(_ grant: KeptLease.Grant) -> JSONValue {
        var members: [(String, JSONValue)] = [("at", .int(grant.at)), ("resources", .array(grant.resources.map(\.json)))]
        if let expires = grant.expires { members.append(("expires", .int(expires))) }
        if let limit = grant.holdLimit { members.append(("hold_limit", .int(limit))) }
        return .object(members)
    }

    static func kept(from value: JSONValue, id: LeaseID) -> KeptLease? {
        guard let tokenHash = value["token_sha256"]?.stringValue, let holder = value["holder"]?.stringValue,
              let peer = value["peer"]?.stringValue, let arrived = value["arrived"]?.int64Value,
              case .array(let groups)? = value["want"] else { return nil }
        var want: [WantGroup] = []
        for (index, group) in groups.enumerated() {
            guard case .success(let parsed) = ClientMessage.parseGroup(group, index: index) else { return nil }
            want.append(parsed)
        }
        var meta: [(String, String)] = []
        if case .object(let members)? = value["meta"] {
            for (key, text) in members { if let text = text.stringValue { meta.append((key, text)) } }
        }
        var lease = KeptLease(id: id, tokenHash: tokenHash, holder: holder, peer: peer,
                              peerHost: value["peer_host"]?.stringValue ?? peer, tokenName: value["token_name"]?.stringValue,
                              want: want, meta: meta, arrivedAt: arrived, waitUntil: value["wait_until"]?.int64Value,
                              grace: value["grace"]?.numberValue, revokeWait: value["revoke_wait"]?.numberValue,
                              maxHold: value["max_hold"]?.numberValue)
        if let grant = value["grant"] {
            guard let parsed = Self.grant(from: grant) else { return nil }
            lease.grant = parsed
        }
        lease.orphanUntil = value["orphan_until"]?.int64Value
        lease.revoking = value["revoking"] == .bool(true)
        return lease
    }

    static func grant(from value: JSONValue) -> KeptLease.Grant? {
        guard let at = value["at"]?.int64Value, case .array(let items)? = value["resources"] else { return nil }
        var resources: [LeaseProtocol.GrantedResource] = []
        for item in items {
            guard let name = item["name"]?.stringValue, let type = item["type"]?.stringValue,
                  let epoch = item["epoch"]?.int64Value, epoch >= 0 else { return nil }
            var labels: [String: String] = [:]
            if case .object(let pairs)? = item["labels"] { for (key, text) in pairs { labels[key] = text.stringValue } }
            resources.append(.init(name: name, type: type, labels: labels, attributes: item["attributes"] ?? .emptyObject,
                                   epoch: UInt64(epoch)))
        }
        return KeptLease.Grant(resources: resources, at: at, expires: value["expires"]?.int64Value,
                               holdLimit: value["hold_limit"]?.int64Value)
    }
}

extension JSONValue {
    var int64Value: Int64? {
        if case .int(let value) = self { return value }
        return nil
    }
}
