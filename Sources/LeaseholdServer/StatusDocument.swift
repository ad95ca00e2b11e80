import LeaseCore
import LeaseProtocol

/// The status document of PROTOCOL.md ("Watching"): the body of `GET /v1/status` and of every
/// `/v1/watch` snapshot.
enum StatusDocument {
    /// `resets`: the latest reset of each resource (result, when, detail).
    static func json(_ snapshot: Snapshot, clock: ServerClock, resets: [String: (String, Tick, String)] = [:]) -> JSONValue {
        let resources: [JSONValue] = snapshot.resources.map { resource in
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
            if let (result, at, detail) = resets[resource.name] {
                members.append(("reset", .object([("result", .string(result)), ("at", .string(clock.iso8601(at))),
                                                  ("detail", .string(detail))])))
            }
            return .object(members)
        }
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
        return .object([
            ("event", .string("snapshot")),
            ("resources", .array(resources)),
            ("leases", .array(leases)),
            ("queue", .array(queue)),
            ("server", .object([("version", .string(leaseholdVersion)), ("started", .string(clock.iso8601(clock.started)))])),
        ])
    }

    /// The document as UTF-8, ready for a socket.
    static func render(_ snapshot: Snapshot, clock: ServerClock, resets: [String: (String, Tick, String)] = [:]) -> [UInt8] {
        json(snapshot, clock: clock, resets: resets).serializedBytes()
    }
}
