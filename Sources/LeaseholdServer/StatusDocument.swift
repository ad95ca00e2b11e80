import LeaseCore
import LeaseProtocol
import Transport

/// The latest reset of a resource, as the status document shows it.
struct ResetShown: Equatable, Sendable {
    var result: String
    var at: Tick
    var detail: String
}

/// The status document of PROTOCOL.md ("Watching"): the body of `GET /v1/status` and of every
/// `/v1/watch` snapshot.
enum StatusDocument {
    static func resource(_ resource: ResourceView, clock: ServerClock, reset: ResetShown?) -> JSONValue {
        let showsLease = resource.state == .held || resource.state == .reserved
        var members: [(String, JSONValue)] = [
            ("name", .string(resource.name)),
            ("type", .string(resource.type)),
            ("labels", .labels(resource.labels)),
            ("attributes", resource.attributes),
            ("state", .string(resource.state.rawValue)),
            ("lease", showsLease ? resource.lease.map { .string(LeaseService.format($0)) } ?? .null : .null),
            ("holder", showsLease ? resource.holder.map { .string($0) } ?? .null : .null),
            ("epoch", .int(Int64(clamping: resource.epoch))),
            ("since", .string(clock.iso8601(resource.since))),
            // Beyond PROTOCOL.md (additive): a held resource may also be disabled.
            ("enabled", .bool(resource.enabled)),
        ]
        if let disabled = resource.disabled {
            members.append(("disabled", .object([("reason", .string(disabled.reason)),
                                                 ("since", .string(clock.iso8601(disabled.since)))])))
        }
        // Beyond PROTOCOL.md (additive): the inventory names a reset for it (the page offers Reset).
        if resource.resettable { members.append(("resettable", .bool(true))) }
        if let reset {
            members.append(("reset", .object([("result", .string(reset.result)), ("at", .string(clock.iso8601(reset.at))),
                                              ("detail", .string(reset.detail))])))
        }
        return .object(members)
    }

    /// The document as one JSON value (tests; the server renders it in pieces, `StatusRenderer`).
    static func json(_ snapshot: Snapshot, clock: ServerClock, resets: [String: ResetShown] = [:]) -> JSONValue {
        .object([("event", .string("snapshot")),
                 ("resources", .array(snapshot.resources.map { resource($0, clock: clock, reset: resets[$0.name]) }))]
                + afterResources(snapshot, clock: clock))
    }

    /// Everything but `event` and `resources`, in document order.
    static func afterResources(_ snapshot: Snapshot, clock: ServerClock) -> [(String, JSONValue)] {
        let leases: [JSONValue] = snapshot.leases.map { lease in
            var members: [(String, JSONValue)] = [
                ("id", .string(LeaseService.format(lease.id))),
                ("holder", .string(lease.holder)),
                ("peer", .string(lease.peer)),
                // granted, orphaned (kept for its client to resume) or revoking.
                ("state", .string(lease.phase.rawValue)),
                ("resources", .array(lease.resources.map { .string($0) })),
                ("meta", .labels(lease.meta)),
                ("since", .string(clock.iso8601(lease.since))),
            ]
            if let until = lease.until { members.append(("until", .string(clock.iso8601Precise(until)))) }
            if let expires = lease.expires { members.append(("expires", .string(clock.iso8601Precise(expires)))) }
            return .object(members)
        }
        let queue: [JSONValue] = snapshot.queue.map { waiter in
            // It ends by itself at the earlier of its `wait` and its orphan grace.
            let until = [waiter.deadline, waiter.orphanUntil].compactMap { $0 }.min()
            return .object([
                ("id", .string(LeaseService.format(waiter.id))),
                ("holder", .string(waiter.holder)),
                ("peer", .string(waiter.peer)),
                ("position", .int(Int64(waiter.position))),
                ("want", .array(waiter.want.map { LeaseService.wireGroup($0).json })),
                ("meta", .labels(waiter.meta)),
                ("reserved", .array(waiter.reserved.map { .string($0) })),
                ("since", .string(clock.iso8601(waiter.since))),
                ("until", until.map { .string(clock.iso8601($0)) } ?? .null),
                ("blocked_by", .array(waiter.blockedBy.map { .string(LeaseService.format($0)) })),
                // Beyond PROTOCOL.md (additive): `waiting`, or `orphaned` until its client resumes it.
                ("state", .string(waiter.orphanUntil == nil ? "waiting" : "orphaned")),
            ])
        }
        return [
            ("leases", .array(leases)),
            ("queue", .array(queue)),
            ("server", .object([("version", .string(leaseholdVersion)), ("started", .string(clock.iso8601(clock.started)))])),
        ]
    }
}

/// Renders status documents in pieces that outlive a snapshot: the resources in blocks, each
/// kept (as JSON, and compressed once per window by `MessagePiece`) until one of its resources
/// changes. A big lab changes a few resources at a time, so a snapshot costs the blocks that
/// changed, the leases and the queue, not the whole lab. Any thread; renders take turns.
final class StatusRenderer: @unchecked Sendable {
    static let blockSize = 128
    private let clock: ServerClock
    private struct Kept {
        var blocks: [Block] = []
        var inventoryGeneration: UInt64 = 0
    }
    private let kept = Locked(Kept())

    private final class Block {
        let views: [ResourceView]
        /// The latest reset of each; nil when none of them has one.
        let resets: [ResetShown?]?
        let piece: MessagePiece

        init(views: [ResourceView], resets: [ResetShown?]?, piece: MessagePiece) {
            self.views = views
            self.resets = resets
            self.piece = piece
        }
    }

    private static let opening = MessagePiece(Array(#"{"event":"snapshot","resources":["#.utf8))

    init(clock: ServerClock) {
        self.clock = clock
    }

    /// The document's UTF-8 in order: joined, they are the JSON of `StatusDocument.json`.
    func render(_ snapshot: Snapshot, resets: [String: ResetShown]) -> [MessagePiece] {
        let resources = snapshot.resources
        let fresh: [Block] = kept.withLock { kept in
            // After a reload every block is rendered again; otherwise only state can differ.
            if kept.inventoryGeneration != snapshot.inventoryGeneration {
                kept = Kept(blocks: [], inventoryGeneration: snapshot.inventoryGeneration)
            }
            var made: [Block] = []
            made.reserveCapacity((resources.count + Self.blockSize - 1) / Self.blockSize)
            for (index, start) in stride(from: 0, to: resources.count, by: Self.blockSize).enumerated() {
                let views = resources[start..<min(start + Self.blockSize, resources.count)]
                var shownResets: [ResetShown?]? = resets.isEmpty ? nil : views.map { resets[$0.name] }
                if shownResets?.allSatisfy({ $0 == nil }) == true { shownResets = nil }
                if index < kept.blocks.count, kept.blocks[index].resets == shownResets,
                   kept.blocks[index].views.elementsEqual(views, by: { $0.sameState(as: $1) }) {
                    made.append(kept.blocks[index])
                    continue
                }
                var bytes: [UInt8] = []
                for (position, view) in views.enumerated() {
                    if index > 0 || position > 0 { bytes.append(UInt8(ascii: ",")) }
                    StatusDocument.resource(view, clock: clock, reset: shownResets?[position]).write(to: &bytes)
                }
                made.append(Block(views: Array(views), resets: shownResets, piece: MessagePiece(bytes)))
            }
            kept.blocks = made
            return made
        }
        var closing = Array("],".utf8)
        var rest = JSONValue.object(StatusDocument.afterResources(snapshot, clock: clock)).serializedBytes()
        rest.removeFirst()  // its "{": the document's is in `opening`
        closing.append(contentsOf: rest)
        return [Self.opening] + fresh.map(\.piece) + [MessagePiece(closing)]
    }
}
