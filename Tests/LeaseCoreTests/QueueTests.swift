import Testing
@testable import LeaseCore

@Suite struct FairQueue {
    @Test func waitersAreServedInArrivalOrder() {
        var h = Harness([res("a1", "array"), res("a2", "array")])
        let (l, _) = h.acquire([ty("array", count: 2)])
        let (w1, e1) = h.acquire([ty("array")])
        let (w2, e2) = h.acquire([ty("array")])
        let (w3, e3) = h.acquire([ty("array")])
        #expect([queuedPosition(e1, w1), queuedPosition(e2, w2), queuedPosition(e3, w3)] == [1, 2, 3])
        let r = h.release(l)
        #expect(grantedIDs(r) == [w1, w2])
        #expect(grantedIDs(h.release(w1)) == [w3])
    }

    @Test func laterRequestNeverOvertakesForAResourceTheEarlierCanUse() {
        var h = Harness([res("a1", "array"), res("a2", "array"), res("s1", "switch")])
        let (l, _) = h.acquire([.name("a1"), .name("s1")])
        // w1 needs two arrays: it reserves a2 now and waits for a1.
        let (w1, _) = h.acquire([ty("array", count: 2)])
        #expect(h.state("a2") == .reserved)
        #expect(h.table.resource(named: "a2")?.lease == w1)
        #expect(h.table.resource(named: "a2")?.holder == "h\(w1.raw)")
        // w2 needs one array: a2 is out of its reach even though w1 cannot be granted yet.
        let (w2, e) = h.acquire([ty("array")])
        #expect(queuedPosition(e, w2) == 2)
        let r = h.release(l)
        #expect(grantedIDs(r) == [w1])
        #expect(granted(r, w1) == ["a1", "a2"])
    }

    @Test func freedResourceGoesToTheEarliestWaiterThatCanUseIt() {
        var h = Harness([res("a1", "array"), res("s1", "switch"), res("s2", "switch")])
        let (l1, _) = h.acquire([.name("a1"), .name("s1")])
        let (l2, _) = h.acquire([.name("s2")])
        let (w1, _) = h.acquire([.name("s2")])       // cannot use a1 or s1
        let (w2, _) = h.acquire([ty("switch")])     // can use s1
        let (w3, _) = h.acquire([ty("array")])      // can use a1
        let r = h.release(l1)  // a1 first (lease order), then s1
        #expect(grantedIDs(r) == [w3, w2])
        #expect(grantedIDs(h.release(l2)) == [w1])
    }

    @Test func waiterCollectsResourcesOutOfEveryoneElsesReach() {
        var h = Harness([res("a", "array"), res("b", "array"), res("s", "switch")])
        let (la, _) = h.acquire([.name("a")])
        let (lb, _) = h.acquire([.name("b")])
        let (w1, _) = h.acquire([.name("a"), .name("b")])
        let r1 = h.release(la)
        #expect(r1.isEmpty)
        #expect(h.state("a") == .reserved)
        let (w2, e) = h.acquire([.name("a")], wait: 0)
        #expect(failure(e, w2) == .waitTimeout(heldBy: []), "a is only reserved, for an earlier waiter")
        let r2 = h.release(lb)
        #expect(granted(r2, w1) == ["a", "b"])
    }

    @Test func leavingWaiterHandsItsReservedResourcesOn() {
        var h = Harness([res("a", "array"), res("b", "array")])
        let (lb, _) = h.acquire([.name("b")])
        let (w1, _) = h.acquire([.name("a"), .name("b")])
        let (w2, _) = h.acquire([.name("a")])
        #expect(h.state("a") == .reserved)
        let r = h.release(w1)
        #expect(grantedIDs(r) == [w2])
        _ = lb
    }

    @Test func waitZeroFailsWithoutQueuedAndGivesBackWhatItTook() {
        var h = Harness([res("a", "array"), res("b", "array")])
        let (l, _) = h.acquire([.name("b")])
        let (w, e) = h.acquire([ty("array", count: 2)], wait: 0)
        #expect(e == [.failed(w, .waitTimeout(heldBy: [l]), h.facts(w))])
        #expect(h.state("a") == .free)
        let (g, e2) = h.acquire([.name("a")], wait: 0)
        #expect(granted(e2, g) == ["a"])
        _ = l
    }

    @Test("wait timeout via tick, fractional seconds", arguments: [0.25, 1.5, 2.0])
    func waitTimeout(_ wait: Double) {
        var h = Harness([res("a", "array")])
        let (l, _) = h.acquire([.name("a")])
        h.now = .seconds(10)
        let (w, e) = h.acquire([.name("a")], wait: wait)
        #expect(queuedPosition(e, w) == 1)
        #expect(h.table.nextDeadline == .seconds(10 + wait))
        #expect(h.tick(at: 10 + wait - 0.001).isEmpty)
        #expect(h.tick(at: 10 + wait) == [.failed(w, .waitTimeout(heldBy: [l]), h.facts(w))])
        #expect(h.table.lease(w) == nil)
        #expect(h.table.nextDeadline == nil)
        _ = l
    }

    @Test func timeoutReleasesReservedToTheNextWaiter() {
        var h = Harness([res("a", "array"), res("b", "array")])
        let (lb, _) = h.acquire([.name("b")])
        let (w1, _) = h.acquire([.name("a"), .name("b")], wait: 1)
        let (w2, _) = h.acquire([.name("a")])
        #expect(h.tick(at: 1) == [.failed(w1, .waitTimeout(heldBy: [lb]), h.facts(w1)), .granted(w2, [GrantedResource(
            name: "a", type: "array", labels: [:], attributes: .emptyObject, epoch: 1)])])
        _ = lb
    }

    @Test func hugeWaitIsForeverEnoughAndTimeNeverGoesBack() {
        var h = Harness([res("a", "array")])
        let (l, _) = h.acquire([.name("a")])
        let id = LeaseID(100)
        let e = h.table.acquire(id, Request(want: [.name("a")], wait: .seconds(Int64.max / 2)), now: .seconds(1))
        #expect(e == [.queued(id, position: 1)])
        #expect(h.table.tick(now: .seconds(1e9)).isEmpty)
        // An earlier `now` is treated as the latest seen.
        #expect(h.table.release(l, now: .seconds(0)).count == 1)
        #expect(h.table.resource(named: "a")?.since == .seconds(1e9))
        #expect(h.table.checkInvariants().isEmpty)
    }

    @Test func nextDeadlineIsTheEarliestTimeoutOrPositionUpdate() {
        var h = Harness([res("a", "array")])
        _ = h.acquire([.name("a")])
        let (w1, _) = h.acquire([.name("a")], wait: 5)
        _ = h.acquire([.name("a")], wait: 3)
        #expect(h.table.nextDeadline == .seconds(3))
        h.now = .seconds(0.5)
        h.release(w1)
        #expect(h.table.nextDeadline == .seconds(0.5))
        #expect(h.tick(at: 0.5).isEmpty)
        #expect(h.table.nextDeadline == .seconds(1))
    }

    @Test func anyEventExpiresDueWaitersFirst() {
        var h = Harness([res("a", "array"), res("b", "array")])
        let (la, _) = h.acquire([.name("a")])
        let (w1, _) = h.acquire([.name("a")], wait: 1)
        let (w2, _) = h.acquire([.name("a")])
        h.now = .seconds(2)
        let r = h.release(la)
        #expect(failure(r, w1) == .waitTimeout(heldBy: [la]), "expired before la's release is looked at")
        #expect(grantedIDs(r) == [w2])
    }
}

@Suite struct Positions {
    @Test func firstQueuedAtOnceThenAtMostOneUpdateASecond() {
        var h = Harness([res("a", "array")])
        let (l, _) = h.acquire([.name("a")])
        var ids: [LeaseID] = []
        for i in 0..<5 {
            let (w, e) = h.acquire([.name("a")])
            #expect(e == [.queued(w, position: i + 1)])
            ids.append(w)
        }
        // t=0.2: the first waiter leaves: the others moved up, but their first queued was at t=0.
        h.now = .seconds(0.2)
        h.release(ids[0])
        let next = h.table.nextDeadline
        #expect(next != nil)
        #expect(h.tick(at: 0.5).isEmpty)
        #expect(h.table.nextDeadline == .seconds(1))
        // t=0.7: another leaves; the update at t=1 carries the position at that moment.
        h.now = .seconds(0.7)
        h.release(ids[1])
        #expect(h.tick(at: 1.0) == [.positionChanged(ids[2], position: 1), .positionChanged(ids[3], position: 2),
                                    .positionChanged(ids[4], position: 3)])
        #expect(h.table.nextDeadline == nil)
        // t=1.3: a change is held back until a second after the last update.
        h.now = .seconds(1.3)
        h.release(ids[2])
        #expect(h.tick(at: 1.5).isEmpty)
        #expect(h.table.nextDeadline == .seconds(2))
        #expect(h.tick(at: 2.0) == [.positionChanged(ids[3], position: 1), .positionChanged(ids[4], position: 2)])
        _ = l
    }

    @Test func noUpdateWhenNothingAheadChanged() {
        var h = Harness([res("a", "array")])
        _ = h.acquire([.name("a")])
        let (w1, _) = h.acquire([.name("a")])
        let (w2, _) = h.acquire([.name("a")])
        h.now = .seconds(3)
        h.release(w2)   // the last one leaves: nobody moves
        #expect(h.table.nextDeadline == nil)
        #expect(h.tick(at: 5).isEmpty)
        #expect(h.table.lease(w1) == .waiting(position: 1, reserved: []))
    }

    @Test func positionsCountTheWholeQueue() {
        var h = Harness([res("a", "array"), res("s", "switch")])
        _ = h.acquire([.name("a"), .name("s")])
        let (w1, _) = h.acquire([.name("a")])
        let (w2, e) = h.acquire([.name("s")])
        #expect(queuedPosition(e, w2) == 2)
        #expect(h.table.snapshot().queue.map(\.position) == [1, 2])
        #expect(h.table.snapshot().queue.map(\.id) == [w1, w2])
    }
}

/// The snapshot's `blocked_by` and `disabled` (PROTOCOL.md, "Snapshot additions").
@Suite struct WhatAWaiterWaitsFor {
    @Test func aWaiterIsBlockedByTheLeasesHoldingWhatItStillNeedsNotByReservations() {
        var h = Harness([res("a1", "array"), res("a2", "array"), res("s1", "switch"), res("s2", "switch")])
        let (first, _) = h.acquire([.name("a1")])
        let (second, _) = h.acquire([.name("a2"), .name("s2")])
        // Wants an array (both held) and a switch (s1 is free: it reserves it).
        let (early, _) = h.acquire([ty("array"), ty("switch")])
        // Wants s1 too, which the earlier waiter reserved, and a2, held by `second`.
        let (late, _) = h.acquire([.name("s1"), .name("a2")])
        let queue = h.table.snapshot().queue
        #expect(queue.map(\.id) == [early, late])
        #expect(queue[0].blockedBy == [first, second], "both arrays are held; in arrival order")
        #expect(queue[0].reserved == ["s1"])
        #expect(queue[1].blockedBy == [second], "s1 is reserved for an earlier waiter: not listed")
        // `second` goes: `early` is granted a2 with s1, and now holds both of what `late` needs.
        #expect(grantedIDs(h.release(second)) == [early])
        let after = h.table.snapshot().queue
        #expect(after.map(\.id) == [late])
        #expect(after.first?.blockedBy == [early])
    }

    @Test func aDisableKeepsItsReasonAndTimeAcrossAReloadUntilEnabled() {
        var h = Harness([res("a", "array"), res("b", "array")])
        h.now = .seconds(5)
        #expect(h.table.disable(resource: "a", reason: "firmware", now: h.now).0 == .ok)
        h.now = .seconds(9)
        #expect(h.table.disable(resource: "a", reason: "again", now: h.now).0 == .ok)
        #expect(h.table.resource(named: "a")?.disabled == Disabling(reason: "firmware", since: .seconds(5)), "the first reason stays")
        h.reload([res("a", "array"), res("b", "array", ["new": "label"])])
        #expect(h.table.resource(named: "a")?.disabled?.reason == "firmware")
        h.enable("a")
        #expect(h.table.resource(named: "a")?.disabled == nil)
        #expect(h.table.resource(named: "b")?.disabled == nil)
    }
}
