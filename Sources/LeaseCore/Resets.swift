// Resets (PROTOCOL.md "Resetting hardware after an abnormal end"): when a lease ends badly (or
// at all, under `after: always`), each of its resources with a reset policy enters `resetting`
// instead of being freed: out of everyone's reach, counted as inventory like a disabled one.
// The server takes the decisions (`takeResetStarts`), runs the commands, and reports each
// outcome back (`finishReset`): success frees the resource (unless it was disabled meanwhile),
// failure disables it with the reason.

/// Result of `beginReset`.
public enum ResetRequestResult: Sendable, Equatable {
    case started
    case notFound
    /// Held, reserved, already resetting, or without a reset policy (409).
    case conflict(String)
}

extension EndReason {
    /// Every end but a clean release; a shutdown starts nothing (the process is going away).
    var isAbnormal: Bool { self != .release && self != .shutdown }
}

extension LeaseTable {
    /// The resets decided since the last call, in the order they were decided. The server runs
    /// each and reports back with `finishReset`.
    public mutating func takeResetStarts() -> [ResetStart] {
        defer { resetStarts.removeAll() }
        return resetStarts
    }

    /// The outcome of a reset: success frees `name` (to the earliest waiter that can use it)
    /// unless it was disabled meanwhile; failure disables it with `reset failed: detail`.
    /// Unknown names (removed by a reload meanwhile) and resources not resetting are a no-op.
    public mutating func finishReset(_ name: String, succeeded: Bool, detail: String, now: Tick, into out: inout [Effect]) {
        let t = begin(now, &out)
        defer { finish() }
        guard let s = nameToSlot[ExactKey(name)], !resources[Int(s)].gone, resources[Int(s)].resetting else { return }
        let r = Int(s)
        resources[r].resetting = false
        resources[r].since = t
        if !succeeded {
            resources[r].disabled = Disabling(reason: "reset failed: \(detail)", since: t)
        } else if resources[r].enabled {
            handoff(r, t, &out)
        }
    }

    /// Starts a reset outside a lease's end: an admin's (`reason: "admin"`, on a free or disabled
    /// resource), or one that a restart interrupted (`force`: whatever the resource's state but
    /// held or reserved).
    public mutating func beginReset(_ name: String, reason: String, lastHolder: String? = nil, force: Bool = false,
                                    now: Tick, into out: inout [Effect]) -> ResetRequestResult {
        let t = begin(now, &out)
        defer { finish() }
        guard let s = nameToSlot[ExactKey(name)], !resources[Int(s)].gone, resources[Int(s)].inInventory else { return .notFound }
        let r = Int(s)
        guard resources[r].reset != nil else { return .conflict("'\(name)' has no reset command in the inventory") }
        if resources[r].owner >= 0 {
            return .conflict("'\(name)' is \(resources[r].held ? "held" : "reserved for a waiter"); it is reset when its lease ends")
        }
        guard !resources[r].resetting else { return force ? .started : .conflict("'\(name)' is being reset already") }
        if resources[r].isFree { clearFree(r) }
        resources[r].since = t
        startReset(r, reason: reason, lastHolder: lastHolder)
        return .started
    }

    /// Whether `r`, just released by a lease that ended for `reason`, must be reset first.
    func needsReset(_ r: Int, after reason: EndReason) -> Bool {
        guard let policy = resources[r].reset, reason != .shutdown else { return false }
        return reason.isAbnormal || policy.after == .always
    }

    mutating func startReset(_ r: Int, reason: String, lastHolder: String?) {
        guard let policy = resources[r].reset else { return }
        resources[r].resetting = true
        let x = resources[r]
        resetStarts.append(ResetStart(name: x.name, type: x.type, labels: x.labels, attributes: x.attributes,
                                      policy: policy, reason: reason, lastHolder: lastHolder))
    }
}
