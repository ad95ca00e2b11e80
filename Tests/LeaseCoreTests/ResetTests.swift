import Testing
@testable import LeaseCore

/// PROTOCOL.md "Resetting hardware after an abnormal end", in the core: which ends reset which
/// resources, what `resetting` means for waiters, and what the outcome does.
@Suite struct ResetTests {
    static let policy = ResetPolicy(command: ["/opt/lab/reset"], after: .abnormal, timeout: .seconds(60))

    func lab(after: ResetPolicy.After = .abnormal) -> Harness {
        var array = res("a1", "array", attributes: .object([("mgmt", .string("10.0.0.1"))]))
        array.reset = ResetPolicy(command: ["/opt/lab/reset"], after: after, timeout: .seconds(60))
        return Harness([array, res("s1", "switch")])
    }

    @Test(arguments: [EndReason.disconnect, .deadPeer, .protocol])
    func anAbnormalEndResetsBeforeTheNextWaiter(_ reason: EndReason) {
        var h = lab()
        let (holder, _) = h.acquire([ty("array"), ty("switch")])
        let (waiter, _) = h.acquire([ty("array")])
        let e = h.release(holder, reason: reason)
        #expect(grantedIDs(e).isEmpty)
        #expect(h.state("a1") == .resetting)
        #expect(h.state("s1") == .free, "no reset policy: freed at once")
        let starts = h.table.takeResetStarts()
        #expect(starts.map(\.name) == ["a1"])
        #expect(starts.first?.reason == reason.rawValue)
        #expect(starts.first?.lastHolder == "h\(holder.raw)")
        #expect(starts.first?.attributes == .object([("mgmt", .string("10.0.0.1"))]))
        #expect(h.table.takeResetStarts().isEmpty, "taken once")
        let done = h.finishReset("a1", succeeded: true)
        #expect(granted(done, waiter) == ["a1"])
    }

    @Test func aCleanReleaseResetsOnlyUnderAlways() {
        var h = lab()
        let (first, _) = h.acquire([ty("array")])
        h.release(first, reason: .release)
        #expect(h.state("a1") == .free)
        var always = lab(after: .always)
        let (second, _) = always.acquire([ty("array")])
        always.release(second, reason: .release)
        #expect(always.state("a1") == .resetting)
        #expect(always.table.takeResetStarts().first?.reason == "release")
    }

    @Test func revocationAndAnExpiredOrphanAreAbnormal() {
        var h = lab()
        let (revoked, _) = h.acquire([ty("array")])
        h.revoke("a1")
        #expect(h.state("a1") == .resetting)
        #expect(h.table.takeResetStarts().first?.reason == "revoked")
        h.finishReset("a1", succeeded: true)
        let (orphan, _) = h.acquire([ty("array")])
        _ = revoked
        h.orphan(orphan, for: 5)
        h.tick(at: 5)
        #expect(h.state("a1") == .resetting)
        #expect(h.table.takeResetStarts().first?.reason == "expired")
    }

    @Test func aShutdownStartsNoReset() {
        var h = lab()
        let (holder, _) = h.acquire([ty("array")])
        h.release(holder, reason: .shutdown)
        #expect(h.state("a1") == .free)
        #expect(h.table.takeResetStarts().isEmpty)
    }

    @Test func aFailedResetDisablesWithTheReason() {
        var h = lab()
        let (holder, _) = h.acquire([ty("array")])
        let (waiter, _) = h.acquire([ty("array")])
        h.release(holder, reason: .disconnect)
        let e = h.finishReset("a1", succeeded: false, detail: "exit 3: LUN 7 still mapped")
        #expect(grantedIDs(e).isEmpty)
        #expect(h.state("a1") == .disabled)
        #expect(h.table.resource(named: "a1")?.disabled?.reason == "reset failed: exit 3: LUN 7 still mapped")
        // The waiter waits (a disabled resource counts as inventory) until an admin enables it.
        #expect(granted(h.enable("a1").1, waiter) == ["a1"])
    }

    @Test func aResourceDisabledWhileItResetsStaysDisabled() {
        var h = lab()
        let (holder, _) = h.acquire([ty("array")])
        let (waiter, _) = h.acquire([ty("array")])
        h.release(holder, reason: .disconnect)
        h.disable("a1")
        #expect(h.state("a1") == .resetting)
        // Enabling while it resets does not hand it out yet.
        #expect(grantedIDs(h.enable("a1").1).isEmpty)
        h.disable("a1")
        #expect(grantedIDs(h.finishReset("a1", succeeded: true)).isEmpty)
        #expect(h.state("a1") == .disabled)
        #expect(granted(h.enable("a1").1, waiter) == ["a1"])
    }

    @Test func anAdminResetRunsOnFreeOrDisabledResourcesOnly() {
        var h = lab()
        var e: [Effect] = []
        #expect(h.table.beginReset("nope", reason: "admin", now: h.now, into: &e) == .notFound)
        #expect(h.table.beginReset("s1", reason: "admin", now: h.now, into: &e) == .conflict("'s1' has no reset command in the inventory"))
        let (holder, _) = h.acquire([ty("array")])
        guard case .conflict = h.table.beginReset("a1", reason: "admin", now: h.now, into: &e) else {
            Issue.record("a held resource was reset")
            return
        }
        h.release(holder)
        #expect(h.table.beginReset("a1", reason: "admin", now: h.now, into: &e) == .started)
        #expect(h.table.takeResetStarts().first.map { ($0.reason, $0.lastHolder) } ?? ("", "x") == ("admin", nil))
        guard case .conflict = h.table.beginReset("a1", reason: "admin", now: h.now, into: &e) else {
            Issue.record("a resetting resource was reset twice")
            return
        }
        // A free resource being reset is not granted meanwhile.
        let (waiter, queued) = h.acquire([ty("array")])
        #expect(queuedPosition(queued, waiter) == 1)
        #expect(granted(h.finishReset("a1", succeeded: true), waiter) == ["a1"])
        #expect(h.table.checkInvariants().isEmpty)
    }

    @Test func aReloadThatRemovesAResettingResourceDropsIt() {
        var h = lab()
        let (holder, _) = h.acquire([ty("array")])
        h.release(holder, reason: .deadPeer)
        h.reload([res("s1", "switch")])
        #expect(h.state("a1") == nil)
        #expect(h.finishReset("a1", succeeded: true).isEmpty)
        // Put back: it is a fresh resource.
        var array = res("a1", "array")
        array.reset = Self.policy
        h.reload([array, res("s1", "switch")])
        #expect(h.state("a1") == .free)
    }

    @Test func aReloadKeepsAResetRunning() {
        var h = lab()
        let (holder, _) = h.acquire([ty("array")])
        h.release(holder, reason: .deadPeer)
        var array = res("a1", "array", ["new": "label"])
        array.reset = Self.policy
        h.reload([array, res("s1", "switch")])
        #expect(h.state("a1") == .resetting)
        h.finishReset("a1", succeeded: true)
        #expect(h.state("a1") == .free)
    }
}
