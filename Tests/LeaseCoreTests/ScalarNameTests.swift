import LeaseProtocol
import Testing
@testable import LeaseCore

/// The protocol counts and compares names by Unicode scalars: "é" (U+00E9) and "e" + U+0301 look
/// alike and Swift's `==` holds them equal, but they are two names, two types, two label values.
@Suite struct ScalarNameTests {
    static let composed = "arr\u{E9}"
    static let decomposed = "arre\u{301}"

    @Test func twoSpellingsAreTwoResources() {
        #expect(Self.composed == Self.decomposed)  // what Swift says; the core must not
        var h = Harness([res(Self.composed, "array"), res(Self.decomposed, "array")])
        #expect(h.table.resource(named: Self.composed)?.name.utf8.elementsEqual(Self.composed.utf8) == true)
        let (l, e) = h.acquire([.name(Self.decomposed)])
        let names = granted(e, l) ?? []
        #expect(names.count == 1 && names[0].utf8.elementsEqual(Self.decomposed.utf8))
        #expect(h.state(Self.composed) == .free)
        // The other spelling is still there to take.
        let (l2, e2) = h.acquire([.name(Self.composed)], wait: 0)
        #expect(granted(e2, l2)?.first?.utf8.elementsEqual(Self.composed.utf8) == true)
    }

    @Test func typesAndLabelValuesCompareByScalars() {
        var h = Harness([res("a", Self.composed), res("b", "array", ["site": Self.composed])])
        let (_, unknown) = h.acquire([ty(Self.decomposed)], wait: 0)
        #expect(isUnsatisfiable(failure(unknown, LeaseID(1))))
        let (_, noMatch) = h.acquire([ty("array", ["site": Self.decomposed])], wait: 0)
        #expect(isUnsatisfiable(failure(noMatch, LeaseID(2))))
        let (l3, match) = h.acquire([ty("array", ["site": Self.composed])], wait: 0)
        #expect(granted(match, l3) == ["b"])
    }

    @Test func anInventoryWithBothSpellingsIsValid() {
        #expect(Inventory([res(Self.composed, "x"), res(Self.decomposed, "x")]).problems().isEmpty)
        #expect(!Inventory([res(Self.composed, "x"), res(Self.composed, "x")]).problems().isEmpty)
    }

    @Test("two spellings never repeat an epoch across a restart, though the epoch file keys them as one")
    func epochsOfBothSpellingsKeepGrowing() throws {
        var h = Harness([res(Self.composed, "x"), res(Self.decomposed, "x")])
        for _ in 0..<3 {
            let (l, _) = h.acquire([.name(Self.composed)])
            h.release(l)
        }
        let (l, _) = h.acquire([.name(Self.decomposed)])
        h.release(l)
        // A restart seeds from `epochs` (String-keyed, as the epoch file is).
        var restarted = Harness([res(Self.composed, "x"), res(Self.decomposed, "x")], epochs: h.table.epochs)
        let (a, ea) = restarted.acquire([.name(Self.composed)])
        let (b, eb) = restarted.acquire([.name(Self.decomposed)])
        func epoch(_ effects: [Effect], _ id: LeaseID) -> UInt64? {
            for e in effects { if case .granted(id, let rs) = e { return rs.first?.epoch } }
            return nil
        }
        #expect((epoch(ea, a) ?? 0) > 3)
        #expect((epoch(eb, b) ?? 0) > 1)
    }
}
