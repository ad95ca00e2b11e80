import Testing
@testable import LeaseCore

@Suite struct Reload {
    @Test func addedResourcesGoToWaiters() {
        var h = Harness([res("a", "x")])
        _ = h.acquire([.name("a")])
        let (w, _) = h.acquire([ty("x")])
        guard case .applied(let e) = h.reload([res("a", "x"), res("b", "x")]) else {
            Issue.record("rejected"); return
        }
        #expect(granted(e, w) == ["b"])
    }

    @Test func removedHeldResourceStaysWithItsHolderAndDisappearsOnRelease() {
        var h = Harness([res("a", "x"), res("b", "x")])
        let (l, _) = h.acquire([.name("a")])
        h.reload([res("b", "x")])
        #expect(h.state("a") == .held)
        #expect(h.table.resource(named: "a")?.inInventory == false)
        #expect(h.table.snapshot().resources.map(\.name) == ["b", "a"])
        // Not inventory any more: a request for it is unsatisfiable.
        let (u, e) = h.acquire([.name("a")])
        #expect(isUnsatisfiable(failure(e, u)))
        let (u2, e2) = h.acquire([ty("x", count: 2)])
        #expect(isUnsatisfiable(failure(e2, u2)))
        h.release(l)
        #expect(h.table.resource(named: "a") == nil)
        #expect(h.table.snapshot().resources.map(\.name) == ["b"])
    }

    @Test func removedReservedResourceIsTakenBackAndWaiterFailsIfUnsatisfiable() {
        var h = Harness([res("a", "x"), res("b", "x"), res("s", "sw")])
        _ = h.acquire([.name("s")])
        let (w1, _) = h.acquire([.name("a"), .name("s")])
        let (w2, _) = h.acquire([ty("x", count: 2), .name("s")])
        #expect(h.state("a") == .reserved)
        guard case .applied(let e) = h.reload([res("b", "x"), res("s", "sw")]) else {
            Issue.record("rejected"); return
        }
        #expect(isUnsatisfiable(failure(e, w1)))
        #expect(isUnsatisfiable(failure(e, w2)))
        #expect(h.table.waiterCount == 0)
        #expect(h.state("b") == .free)
    }

    @Test func changedLabelsApplyToMatchingForWaiters() {
        var h = Harness([res("a", "x", ["p": "fc"]), res("b", "x", ["p": "iscsi"])])
        _ = h.acquire([.name("a")])
        let (w, _) = h.acquire([ty("x", ["p": "fc"])])
        guard case .applied(let e) = h.reload([res("a", "x", ["p": "fc"]), res("b", "x", ["p": "fc"])]) else {
            Issue.record("rejected"); return
        }
        #expect(granted(e, w) == ["b"])
    }

    @Test func changedLabelsTakeBackAReservationThatNoLongerFits() {
        var h = Harness([res("a", "x", ["p": "fc"]), res("b", "x", ["p": "fc"]), res("s", "sw")])
        _ = h.acquire([.name("s")])
        let (w, _) = h.acquire([ty("x", ["p": "fc"]), .name("s")])
        #expect(h.table.lease(w) == .waiting(position: 1, reserved: ["a"]))
        h.reload([res("a", "x", ["p": "iscsi"]), res("b", "x", ["p": "fc"]), res("s", "sw")])
        #expect(h.table.lease(w) == .waiting(position: 1, reserved: ["b"]))
        #expect(h.state("a") == .free)
    }

    @Test func changedAttributesApplyToNewGrants() {
        var h = Harness([res("a", "x", attributes: .object([("ip", .string("1"))]))])
        let (l, _) = h.acquire([.name("a")])
        h.reload([res("a", "x", attributes: .object([("ip", .string("2"))]))])
        h.release(l)
        let (_, e) = h.acquire([.name("a")])
        guard case .granted(_, let rs) = e.first else { Issue.record("not granted"); return }
        #expect(rs.first?.attributes == .object([("ip", .string("2"))]))
    }

    @Test("invalid inventory changes nothing", arguments: [
        ([res("a", "x"), res("a", "y")], "resource name \"a\" appears twice (#1 and #2)"),
        ([res("", "x")], "resource #1 has an empty name"),
        ([res("a", "")], "resource #1 (a) has an empty type"),
    ])
    func invalid(_ specs: [ResourceSpec], _ message: String) {
        var h = Harness([res("old", "x")])
        let (l, _) = h.acquire([.name("old")])
        guard case .invalid(let p) = h.reload(specs) else { Issue.record("accepted"); return }
        #expect(p.map(\.description) == [message])
        #expect(h.table.holder(ofResource: "old") == l)
        #expect(h.table.snapshot().resources.map(\.name) == ["old"])
    }

    @Test func invalidInitialInventoryThrows() {
        #expect(throws: InventoryError.self) {
            _ = try LeaseTable(inventory: Inventory([res("a", "x"), res("a", "x")]))
        }
    }

    @Test func disabledStaysDisabledAcrossReload() {
        var h = Harness([res("a", "x")])
        _ = h.disable("a")
        h.reload([res("a", "x"), res("b", "x")])
        #expect(h.state("a") == .disabled)
        #expect(h.state("b") == .free)
    }
}

@Suite struct Epochs {
    @Test func epochsGrowAndNeverRepeatAcrossRemoveAndReadd() {
        var h = Harness([res("a", "x")])
        #expect(h.table.epoch(of: "a") == 0)
        for expected in 1...3 as ClosedRange<UInt64> {
            let (l, e) = h.acquire([.name("a")])
            guard case .granted(_, let rs) = e.first else { Issue.record("not granted"); return }
            #expect(rs[0].epoch == expected)
            h.release(l)
        }
        h.reload([res("b", "x")])
        #expect(h.table.epochs == ["a": 3])
        h.reload([res("a", "x"), res("b", "x")])
        let (_, e) = h.acquire([.name("a")])
        guard case .granted(_, let rs) = e.first else { Issue.record("not granted"); return }
        #expect(rs[0].epoch == 4)
    }

    @Test func epochsCanBeSeededAndSurviveRemovalWhileHeld() {
        var h = Harness([res("a", "x"), res("b", "x")], epochs: ["a": 41, "gone": 7])
        let (l, e) = h.acquire([.name("a")])
        guard case .granted(_, let rs) = e.first else { Issue.record("not granted"); return }
        #expect(rs[0].epoch == 42)
        h.reload([res("b", "x")])
        h.release(l)
        h.reload([res("a", "x"), res("b", "x")])
        let (_, e2) = h.acquire([.name("a")])
        guard case .granted(_, let rs2) = e2.first else { Issue.record("not granted"); return }
        #expect(rs2[0].epoch == 43)
        #expect(h.table.epochs == ["a": 43, "gone": 7])
    }
}

@Suite struct Views {
    @Test func snapshotShowsStatesOwnersAndOrder() {
        var h = Harness([res("a", "x"), res("b", "x"), res("c", "x"), res("d", "x")])
        h.now = .seconds(5)
        let (l, _) = h.acquire([.name("a")], holder: "ci/1", meta: ["job": "j1"])
        let (w, _) = h.acquire([.name("b"), .name("a")], holder: "ci/2", meta: ["job": "j2"])
        _ = h.disable("d")
        let s = h.table.snapshot()
        #expect(s.resources.map(\.name) == ["a", "b", "c", "d"])
        #expect(s.resources.map(\.state) == [.held, .reserved, .free, .disabled])
        #expect(s.resources.map(\.lease) == [l, w, nil, nil])
        #expect(s.resources.map(\.holder) == ["ci/1", "ci/2", nil, nil])
        #expect(s.resources[0].since == .seconds(5))
        #expect(s.resources[0].epoch == 1)
        #expect(s.leases.map(\.id) == [l])
        #expect(s.leases[0].resources == ["a"])
        #expect(s.leases[0].meta == ["job": "j1"])
        #expect(s.queue.map(\.id) == [w])
        #expect(s.queue[0].meta == ["job": "j2"])
        #expect(s.queue[0].want == [.name("b"), .name("a")])
        #expect(s.queue[0].reserved == ["b"])
        #expect(h.table.holder(ofResource: "a") == l)
        #expect(h.table.holder(ofResource: "b") == nil)
        #expect(h.table.lease(l) == .granted(resources: ["a"]))
        #expect(h.table.grantedLeaseCount == 1)
        #expect(h.table.waiterCount == 1)
        #expect(h.table.resourceCounts() == [
            ResourceCount(type: "x", state: .free, count: 1), ResourceCount(type: "x", state: .held, count: 1),
            ResourceCount(type: "x", state: .reserved, count: 1), ResourceCount(type: "x", state: .disabled, count: 1),
        ])
    }
}
