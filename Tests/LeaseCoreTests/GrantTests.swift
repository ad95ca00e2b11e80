import Testing
@testable import LeaseCore

let lab: [ResourceSpec] = [
    res("array-01", "array", ["proto": "fc", "model": "af40"], attributes: .object([("mgmt", .string("10.0.0.11"))])),
    res("array-02", "array", ["proto": "fc", "model": "af60"]),
    res("array-03", "array", ["proto": "iscsi"]),
    res("switch-01", "switch"),
    res("switch-02", "switch"),
    res("switch-03", "switch", ["speed": "100g"]),
]

@Suite struct Selection {
    struct Case: Sendable, CustomStringConvertible {
        var want: [Group]
        var expect: [String]?
        var description: String { want.map(\.description).joined(separator: " + ") }
    }

    static let cases: [Case] = [
        Case(want: [.name("switch-03")], expect: ["switch-03"]),
        Case(want: [ty("array", ["proto": "iscsi"])], expect: ["array-03"]),
        Case(want: [ty("array", ["proto": "fc"], count: 2)], expect: ["array-01", "array-02"]),
        Case(want: [ty("array", ["proto": "fc", "model": "af60"])], expect: ["array-02"]),
        Case(want: [ty("switch", ["speed": "100g"]), ty("array", count: 3)],
             expect: ["switch-03", "array-01", "array-02", "array-03"]),
        // The want order decides the listing order, count groups give consecutive entries.
        Case(want: [.name("switch-02"), ty("array", ["proto": "fc"], count: 2), .name("array-03")],
             expect: ["switch-02", "array-01", "array-02", "array-03"]),
        // Overlapping selectors: first-fit would give array-01 to the first group and fail.
        Case(want: [ty("array"), ty("array", ["proto": "fc"], count: 2)],
             expect: ["array-03", "array-01", "array-02"]),
        Case(want: [ty("array", count: 2), .name("array-01")], expect: ["array-02", "array-03", "array-01"]),
        Case(want: [ty("switch"), ty("switch"), ty("switch", ["speed": "100g"])],
             expect: ["switch-01", "switch-02", "switch-03"]),
    ]

    @Test("selection by name, type, labels and count, in want order", arguments: cases)
    func select(_ c: Case) {
        var h = Harness(lab)
        let (id, e) = h.acquire(c.want)
        #expect(granted(e, id) == c.expect)
    }

    @Test func grantedResourcesCarryTypeLabelsAttributesAndEpoch() {
        var h = Harness(lab)
        let (id, e) = h.acquire([.name("array-01")])
        guard case .granted(id, let rs) = e.first else { Issue.record("not granted"); return }
        #expect(rs == [GrantedResource(name: "array-01", type: "array", labels: ["proto": "fc", "model": "af40"],
                                       attributes: .object([("mgmt", .string("10.0.0.11"))]), epoch: 1)])
    }

    @Test func grantIsAllOrNothing() {
        var h = Harness(lab)
        let (a, _) = h.acquire([.name("switch-01")])
        let (b, e) = h.acquire([.name("switch-02"), .name("switch-01")])
        #expect(queuedPosition(e, b) == 1)
        // switch-02 is reserved for b, not granted in part.
        #expect(h.state("switch-02") == .reserved)
        #expect(h.table.lease(b) == .waiting(position: 1, reserved: ["switch-02"]))
        let r = h.release(a)
        #expect(granted(r, b) == ["switch-02", "switch-01"])
    }

    @Test func overlappingGroupsAreMatchedWhileCollecting() {
        // b needs {array} + {array fc}; array-01 (fc) frees first and goes to the plain group,
        // then array-03 (iscsi) frees: the matching must move array-01 to the fc group.
        var h = Harness(lab)
        let (a, _) = h.acquire([.name("array-01"), .name("array-03")])
        let (x, _) = h.acquire([.name("array-02")])
        let (b, e) = h.acquire([ty("array"), ty("array", ["proto": "fc"])])
        #expect(queuedPosition(e, b) == 1)
        _ = x
        let r = h.release(a)
        #expect(granted(r, b) == ["array-03", "array-01"])
    }

    @Test func unrelatedRequestsAreGrantedAtOnceWhileOthersWait() {
        var h = Harness(lab)
        let (a, _) = h.acquire([ty("array", count: 3)])
        let (w, e1) = h.acquire([ty("array")])
        #expect(queuedPosition(e1, w) == 1)
        let (s, e2) = h.acquire([.name("switch-01")])
        #expect(granted(e2, s) == ["switch-01"])
        _ = a
    }

    @Test func releaseIsIdempotentAndUnknownIdsAreIgnored() {
        var h = Harness(lab)
        let (a, _) = h.acquire([.name("switch-01")])
        #expect(h.release(a).isEmpty)
        #expect(h.release(a).isEmpty)
        #expect(h.release(LeaseID(999)).isEmpty)
        #expect(h.table.lease(a) == nil)
        #expect(h.state("switch-01") == .free)
    }

    @Test func duplicateLiveIdIsIgnored() {
        var h = Harness(lab)
        let id = LeaseID(7)
        #expect(h.table.acquire(id, Request(want: [.name("switch-01")]), now: .zero).count == 1)
        #expect(h.table.acquire(id, Request(want: [.name("switch-02")]), now: .zero).isEmpty)
        #expect(h.table.checkInvariants().isEmpty)
    }
}

@Suite struct Unsatisfiable {
    struct Case: Sendable, CustomStringConvertible {
        var want: [Group]
        var why: String
        var description: String { why }
    }

    static let cases: [Case] = [
        Case(want: [.name("array-99")], why: "unknown name"),
        Case(want: [ty("tape")], why: "unknown type"),
        Case(want: [.name("switch-01"), .name("switch-01")], why: "same name twice"),
        Case(want: [ty("array", count: 4)], why: "more than the inventory has"),
        Case(want: [ty("array", ["proto": "nvme"])], why: "no resource has the labels"),
        Case(want: [ty("array", ["proto": "fc"], count: 3)], why: "more with labels than exist"),
        Case(want: [ty("array", ["proto": "fc"], count: 2), .name("array-01")], why: "groups jointly impossible"),
        Case(want: [ty("array", count: 2), ty("array", ["proto": "iscsi"]), .name("array-02")],
             why: "overlapping groups need four arrays"),
        Case(want: [ty("switch", count: 0)], why: "count zero"),
        Case(want: [], why: "empty want"),
        Case(want: [ty("array", count: Int.max)], why: "absurd count, no allocation"),
        Case(want: Array(repeating: ty("switch"), count: 17), why: "more than 16 groups"),
    ]

    @Test("unsatisfiable at once, never queued", arguments: cases)
    func unsatisfiable(_ c: Case) {
        var h = Harness(lab)
        let (id, e) = h.acquire(c.want)
        #expect(e.count == 1)
        #expect(isUnsatisfiable(failure(e, id)))
        #expect(h.table.lease(id) == nil)
        #expect(h.table.waiterCount == 0)
    }

    @Test func disabledAndHeldResourcesCountAsInventory() {
        var h = Harness(lab)
        _ = h.disable("array-03")
        let (a, _) = h.acquire([ty("array", ["proto": "fc"], count: 2)])
        let (w, e) = h.acquire([ty("array", count: 3)])
        #expect(queuedPosition(e, w) == 1)
        let (z, e0) = h.acquire([.name("array-03")], wait: 0)
        #expect(failure(e0, z) == .waitTimeout(heldBy: []), "array-03 is disabled, not held")
        _ = a
    }

    @Test func messagesSayWhy() {
        var h = Harness(lab)
        let (a, e) = h.acquire([.name("nope")])
        #expect(failure(e, a) == .unsatisfiable("unknown resource \"nope\""))
        let (b, e2) = h.acquire([ty("tape")])
        #expect(failure(e2, b) == .unsatisfiable("unknown resource type \"tape\""))
    }
}
