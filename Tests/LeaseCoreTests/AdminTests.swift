import Testing
@testable import LeaseCore

@Suite struct Revoke {
    @Test func revokingOneResourceRevokesTheWholeLeaseAndHandsItsResourcesOn() {
        var h = Harness([res("a", "array"), res("s", "switch")])
        let (l, _) = h.acquire([.name("a"), .name("s")])
        let (w1, _) = h.acquire([.name("s")])
        let (w2, _) = h.acquire([.name("a")])
        let (r, e) = h.revoke("s", reason: "maintenance")
        #expect(r == .ok)
        #expect(e.first == .revoked(l, reason: "maintenance", h.facts(l)))
        #expect(grantedIDs(e) == [w2, w1])  // lease order: a first, then s
        #expect(h.table.lease(l) == nil)
    }

    @Test("revoke answers", arguments: [
        ("held", AdminResult.ok), ("free", .notHeld), ("reserved", .notHeld),
        ("disabled", .notHeld), ("missing", .notFound),
    ])
    func answers(_ which: String, _ expected: AdminResult) {
        var h = Harness([res("held", "x"), res("free", "x"), res("reserved", "y"), res("disabled", "x"), res("other", "y")])
        _ = h.acquire([.name("held"), .name("other")])
        _ = h.acquire([.name("reserved"), .name("other")])
        _ = h.disable("disabled")
        #expect(h.state("reserved") == .reserved)
        #expect(h.revoke(which).0 == expected)
    }

    @Test func revokeReachesAResourceRemovedByReloadWhileHeld() {
        var h = Harness([res("a", "x"), res("b", "x")])
        let (l, _) = h.acquire([.name("a")])
        h.reload([res("b", "x")])
        #expect(h.revoke("a") == (.ok, [.revoked(l, reason: "admin", h.facts(l))]))
        #expect(h.table.resource(named: "a") == nil)
        #expect(h.revoke("a").0 == .notFound)
    }
}

@Suite struct DisableEnable {
    @Test func disabledResourceIsNeverGrantedOrReserved() {
        var h = Harness([res("a", "x"), res("b", "x")])
        _ = h.disable("a")
        #expect(h.state("a") == .disabled)
        let (l, e) = h.acquire([ty("x")])
        #expect(granted(e, l) == ["b"])
        let (w, e2) = h.acquire([ty("x")])
        #expect(queuedPosition(e2, w) == 1)
        #expect(h.state("a") == .disabled)
        let (r, e3) = h.enable("a")
        #expect(r == .ok)
        #expect(granted(e3, w) == ["a"])
    }

    @Test func disablingAReservedResourceTakesItBackAndTheWaiterTakesAFreeReplacement() {
        var h = Harness([res("a", "x"), res("b", "x"), res("s", "sw")])
        let (ls, _) = h.acquire([.name("s")])
        let (w, _) = h.acquire([ty("x"), .name("s")])
        #expect(h.table.lease(w) == .waiting(position: 1, reserved: ["a"]))
        _ = h.disable("a")
        #expect(h.state("a") == .disabled)
        #expect(h.table.lease(w) == .waiting(position: 1, reserved: ["b"]))
        _ = h.disable("b")
        #expect(h.table.lease(w) == .waiting(position: 1, reserved: []))
        #expect(h.release(ls).isEmpty)
        #expect(h.table.lease(w) == .waiting(position: 1, reserved: ["s"]))
        #expect(granted(h.enable("b").1, w) == ["b", "s"])
    }

    @Test func disablingAHeldResourceLetsTheLeaseRunOn() {
        var h = Harness([res("a", "x")])
        let (l, _) = h.acquire([.name("a")])
        #expect(h.disable("a").0 == .ok)
        #expect(h.state("a") == .held)
        #expect(h.table.resource(named: "a")?.enabled == false)
        let (w, _) = h.acquire([.name("a")])
        #expect(h.release(l).isEmpty)
        #expect(h.state("a") == .disabled)
        #expect(granted(h.enable("a").1, w) == ["a"])
    }

    @Test func enableWhileHeldKeepsItHeld() {
        var h = Harness([res("a", "x")])
        let (l, _) = h.acquire([.name("a")])
        _ = h.disable("a")
        _ = h.enable("a")
        #expect(h.state("a") == .held)
        h.release(l)
        #expect(h.state("a") == .free)
    }

    @Test func unknownNamesAreNotFoundAndRepeatsAreOk() {
        var h = Harness([res("a", "x")])
        #expect(h.disable("zz").0 == .notFound)
        #expect(h.enable("zz").0 == .notFound)
        #expect(h.disable("a").0 == .ok)
        #expect(h.disable("a").0 == .ok)
        #expect(h.enable("a").0 == .ok)
        #expect(h.enable("a").0 == .ok)
    }

    @Test func earlierWaiterReclaimsFromALaterOneAfterLosingAReservation() {
        // w1 = {x} + {name y}, w2 = {name x2} + {name y}. w1 reserved x1 and y; w2 got x2 because
        // w1 could not use it then. Removing x1 must let w1 reclaim x2, or nobody ever proceeds.
        var h = Harness([res("x1", "x"), res("x2", "x"), res("y", "y"), res("z", "z")])
        let (lz, _) = h.acquire([.name("z")])
        let (w1, _) = h.acquire([ty("x"), .name("y"), .name("z")])
        let (w2, _) = h.acquire([.name("x2"), .name("y")])
        #expect(h.table.lease(w2) == .waiting(position: 2, reserved: ["x2"]))
        h.reload([res("x2", "x"), res("y", "y"), res("z", "z")])
        #expect(h.table.lease(w1) == .waiting(position: 1, reserved: ["x2", "y"]))
        let r = h.release(lz)
        #expect(grantedIDs(r) == [w1])
        #expect(grantedIDs(h.release(w1)) == [w2])
    }
}
