import Testing
@testable import LeaseCore

/// Orphans, resume, revocation that waits, hold limits and restore (PROTOCOL.md "Surviving
/// restarts and network blips", "Revocation waits for the holder to stop", "Lease time limits").
@Suite struct LifecycleTests {
    @Test func anOrphanKeepsItsResourcesUntilItsGraceRunsOut() {
        var h = Harness([res("a1", "array")])
        let (holder, _) = h.acquire([ty("array")])
        let (waiter, _) = h.acquire([ty("array")])
        let orphaned = h.orphan(holder, for: 5)
        #expect(orphaned)
        #expect(h.table.phase(of: holder) == .orphaned)
        #expect(h.table.orphanCount == 1)
        #expect(h.table.nextDeadline == .seconds(5))
        let early = h.tick(at: 4.9)
        #expect(early.isEmpty)
        let e = h.tick(at: 5)
        #expect(e.first == .expired(holder, h.facts(holder)))
        #expect(granted(e, waiter) == ["a1"])
        #expect(h.table.orphanCount == 0)
    }

    @Test func aResumedLeaseIsGrantedAgainWithTheSameEpochs() {
        var h = Harness([res("a1", "array"), res("a2", "array")])
        let (id, e) = h.acquire([ty("array", count: 2)])
        guard case .granted(_, let first)? = e.first else { Issue.record("not granted: \(e)"); return }
        h.orphan(id, for: 10)
        h.now = .seconds(3)
        let resumed = h.resume(id)
        #expect(resumed == .granted(first))
        #expect(h.table.phase(of: id) == .granted)
        // The old deadline no longer ends it.
        let later = h.tick(at: 11)
        #expect(later.isEmpty)
        #expect(h.table.holder(ofResource: "a1") == id)
        let unknown = h.resume(LeaseID(999))
        #expect(unknown == nil)
    }

    @Test func anOrphanedWaiterKeepsItsPlaceAndExpiresWithoutAGrant() {
        var h = Harness([res("a1", "array")])
        let (holder, _) = h.acquire([ty("array")])
        let (first, _) = h.acquire([ty("array")])
        let (second, _) = h.acquire([ty("array")])
        h.orphan(first, for: 2)
        let resumed = h.resume(first)
        #expect(resumed == .waiting(position: 1))
        h.orphan(first, for: 2)
        let e = h.tick(at: 2)
        #expect(e.first == .expired(first, h.facts(first)))
        #expect(grantedIDs(e).isEmpty)
        let freed = h.release(holder)
        #expect(granted(freed, second) == ["a1"])
    }

    @Test func anOrphanedWaiterIsGrantedAndResumesToItsGrant() {
        var h = Harness([res("a1", "array")])
        let (holder, _) = h.acquire([ty("array")])
        let (waiter, _) = h.acquire([ty("array")])
        h.orphan(waiter, for: 30)
        let e = h.release(holder)
        #expect(granted(e, waiter) == ["a1"])
        #expect(h.table.phase(of: waiter) == .orphaned)
        guard case .granted(let list)? = h.resume(waiter) else { Issue.record("not granted"); return }
        #expect(list.map(\.name) == ["a1"] && list[0].epoch == 2)
    }

    @Test func revocationWaitsForTheHolderToCloseOrItsRevokeWait() {
        var h = Harness([res("a1", "array")])
        let (holder, _) = h.acquire([ty("array")], revokeWait: 10)
        let (waiter, _) = h.acquire([ty("array")])
        let (result, e) = h.revoke("a1", reason: "maintenance")
        #expect(result == .ok)
        #expect(e == [.revoking(holder, reason: "maintenance", until: .seconds(10))])
        #expect(h.table.phase(of: holder) == .revoking)
        #expect(h.state("a1") == .held)
        // A second free without `now` changes nothing; a revoking lease cannot be orphaned.
        let again = h.revoke("a1", reason: "again")
        #expect(again.0 == .ok && again.1.isEmpty)
        let orphaned = h.orphan(holder, for: 60)
        #expect(!orphaned)
        // The holder closes: freed at once, to the waiter.
        let freed = h.release(holder)
        #expect(granted(freed, waiter) == ["a1"])
    }

    @Test func revocationEndsWhenRevokeWaitRunsOut() {
        var h = Harness([res("a1", "array")])
        let (holder, _) = h.acquire([ty("array")], revokeWait: 10)
        let (waiter, _) = h.acquire([ty("array")])
        h.revoke("a1", reason: "maintenance")
        let early = h.tick(at: 9.5)
        #expect(early.isEmpty)
        let e = h.tick(at: 10)
        #expect(e.first == .revoked(holder, reason: "maintenance", h.facts(holder)))
        #expect(granted(e, waiter) == ["a1"])
    }

    @Test func revokingNowFreesAtOnceWhateverTheLeaseAsked() {
        var h = Harness([res("a1", "array"), res("a2", "array")])
        let (holder, _) = h.acquire([ty("array")], revokeWait: 10)
        let (other, _) = h.acquire([ty("array")], revokeWait: 10)
        let (waiter, _) = h.acquire([ty("array", count: 2)])
        let (result, e) = h.revokeNow("a1", reason: "now")
        #expect(result == .ok)
        #expect(e.first == .revoked(holder, reason: "now", h.facts(holder)))
        // Now on a lease that is already revoking: it ends with its first reason.
        h.revoke("a2", reason: "first")
        let e2 = h.revokeNow("a2", reason: "second").1
        #expect(e2.first == .revoked(other, reason: "first", h.facts(other)))
        #expect(granted(e2, waiter) == ["a1", "a2"])
    }

    @Test func anOrphanIsRevokedAtOnce() {
        var h = Harness([res("a1", "array")])
        let (holder, _) = h.acquire([ty("array")], revokeWait: 10)
        h.orphan(holder, for: 60)
        let e = h.revoke("a1").1
        #expect(e == [.revoked(holder, reason: "admin", h.facts(holder))])
        #expect(h.state("a1") == .free)
    }

    @Test func maxHoldTakesTheSmallestLimitAndRevokesOnTime() {
        var specs = [res("a1", "array"), res("s1", "switch")]
        specs[0].maxHold = .seconds(100)
        specs[1].maxHold = .seconds(50)
        var h = Harness(specs)
        let (id, _) = h.acquire([ty("array"), ty("switch")], maxHold: 80)
        #expect(h.table.holdLimit(of: id)?.limit == .seconds(50))
        #expect(h.table.holdLimit(of: id)?.expires == .seconds(50))
        let (asked, _) = h.acquire([.name("a1")], maxHold: 1.5)
        let early = h.tick(at: 49.9)
        #expect(early.isEmpty)
        let e = h.tick(at: 50)
        #expect(e.first == .revoked(id, reason: "max_hold: held for 50 seconds", h.facts(id)))
        // The waiter that got a1 asked for 1.5 s itself.
        #expect(granted(e, asked) == ["a1"])
        #expect(h.table.holdLimit(of: asked)?.limit == .nanoseconds(1_500_000_000))
        let e2 = h.tick(at: 51.5)
        #expect(e2.first == .revoked(asked, reason: "max_hold: held for 1.5 seconds", h.facts(asked)))
    }

    @Test func maxHoldOfALeaseWithRevokeWaitGoesThroughRevoking() {
        var h = Harness([res("a1", "array")])
        let (id, _) = h.acquire([ty("array")], revokeWait: 5, maxHold: 10)
        let e = h.tick(at: 10)
        #expect(e == [.revoking(id, reason: "max_hold: held for 10 seconds", until: .seconds(15))])
        let ended = h.tick(at: 15)
        #expect(ended.first == .revoked(id, reason: "max_hold: held for 10 seconds", h.facts(id)))
    }

    @Test func restoreKeepsGrantsEpochsAndQueueOrderAndRefusesADoubleHolder() throws {
        var h = Harness([res("a1", "array"), res("a2", "array")])
        let (holder, _) = h.acquire([.name("a1")])
        let (w1, _) = h.acquire([.name("a1")])
        let (w2, _) = h.acquire([ty("array", count: 2)])
        let kept = h.table.keptForTest(orphanUntil: .seconds(60))
        var fresh = try LeaseTable(inventory: Inventory([res("a1", "array"), res("a2", "array")]), epochs: h.table.epochs)
        var twice = kept
        twice.insert(RestoredLease(id: LeaseID(77), request: Request(want: [.name("a1")]), arrivedAt: .zero,
                                   grant: .init(resources: kept[0].grant?.resources ?? [], grantedAt: .zero),
                                   orphanUntil: .seconds(60)), at: 1)
        var e: [Effect] = []
        #expect(fresh.restore(twice, now: .zero, into: &e) == [LeaseID(77)])
        #expect(grantedIDs(e).isEmpty)
        #expect(fresh.snapshot().queue.map(\.id) == [w1, w2])
        #expect(fresh.resource(named: "a1")?.lease == holder)
        #expect(fresh.resource(named: "a1")?.epoch == 1)
        #expect(fresh.checkInvariants().isEmpty)
        // Nobody resumes: all three expire together, and nothing is granted to an orphan that
        // is expiring at the same moment.
        e = fresh.tick(now: .seconds(60))
        #expect(e.filter { if case .expired = $0 { true } else { false } }.map(\.lease) == [w2, w1, holder])
        #expect(grantedIDs(e).isEmpty)
        #expect(fresh.resource(named: "a1")?.state == .free)
    }

    @Test func aRestoredLeaseKeepsAResourceTheInventoryNoLongerHas() throws {
        var h = Harness([res("a1", "array"), res("a2", "array")])
        let (holder, _) = h.acquire([.name("a2")])
        let kept = h.table.keptForTest(orphanUntil: .seconds(60))
        var fresh = try LeaseTable(inventory: Inventory([res("a1", "array")]), epochs: h.table.epochs)
        var e: [Effect] = []
        #expect(fresh.restore(kept, now: .zero, into: &e).isEmpty)
        #expect(fresh.resource(named: "a2")?.inInventory == false)
        #expect(fresh.resource(named: "a2")?.lease == holder)
        #expect(fresh.resume(holder, now: .seconds(1), into: &e) == .granted(kept[0].grant?.resources ?? []))
        e = fresh.release(holder, now: .seconds(2))
        #expect(fresh.resource(named: "a2") == nil)
        #expect(fresh.epoch(of: "a2") == 1)
        #expect(fresh.checkInvariants().isEmpty)
    }
}
