import Testing
@testable import LeaseCore

@Test func smoke() {
    var t = LeaseTable()
    _ = t.reload(Inventory([ResourceSpec(name: "a", type: "x")]), now: .zero)
    #expect(t.checkInvariants().isEmpty)
}
