// Self-check of the whole table with brute-force algorithms independent of the indexes.
// For tests: O(table × waiters × matching); do not call it on a production path.

extension LeaseTable {
    /// Brute-force "does resource `r` serve group `g`" from the resource's current fields.
    func serves(_ r: Int, _ g: Group) -> Bool {
        let x = resources[r]
        guard x.inInventory, !x.gone else { return false }
        switch g {
        case .name(let n): return x.name.exactlyEquals(n)
        case .type(let t, let labels, _):
            return x.type.exactlyEquals(t) && Self.matches(x.labels, Self.flatten(labels))
        }
    }

    /// Size of the largest matching of `rs` into the expanded slots of `want` (Kuhn).
    func bruteMatch(_ want: [Group], _ rs: [Int]) -> Int {
        var slotGroup: [Int] = []
        for (gi, g) in want.enumerated() {
            for _ in 0..<max(0, min(g.count, rs.count)) { slotGroup.append(gi) }
        }
        var slotOwner = [Int](repeating: -1, count: slotGroup.count)
        func tryAssign(_ i: Int, _ seen: inout [Bool]) -> Bool {
            for s in slotGroup.indices where !seen[s] && serves(rs[i], want[slotGroup[s]]) {
                seen[s] = true
                if slotOwner[s] < 0 || tryAssign(slotOwner[s], &seen) {
                    slotOwner[s] = i
                    return true
                }
            }
            return false
        }
        var size = 0
        for i in rs.indices {
            var seen = [Bool](repeating: false, count: slotGroup.count)
            if tryAssign(i, &seen) { size += 1 }
        }
        return size
    }

    /// Every violated invariant, as a sentence; empty when the table is consistent.
    func checkInvariants() -> [String] {
        var p: [String] = []
        checkNames(&p)
        checkResources(&p)
        checkSelectors(&p)
        checkLeases(&p)
        return p
    }

    /// The name index covers every live resource; a resource out of the inventory is still held.
    private func checkNames(_ p: inout [String]) {
        var live = 0
        for r in resources.indices where !resources[r].gone {
            live += 1
            if nameToSlot[ExactKey(resources[r].name)] != Int32(r) { p.append("name index wrong for \(resources[r].name)") }
        }
        if live != nameToSlot.count { p.append("name index has \(nameToSlot.count) entries, \(live) resources") }
        for r in resources where !r.gone && !r.inInventory && !(r.owner >= 0 && r.held) {
            p.append("removed resource \(r.name) is not held")
        }
    }

    /// Each resource agrees with its owner and with the free sets of its selectors.
    private func checkResources(_ p: inout [String]) {
        for r in resources.indices where !resources[r].gone {
            let x = resources[r]
            if x.owner >= 0 {
                let lease = leases[Int(x.owner)]
                if !lease.alive { p.append("\(x.name) owned by a dead lease") }
                if !lease.slots.contains(Int32(r)) { p.append("\(x.name) not in its owner's list") }
                if x.held && lease.waiting { p.append("\(x.name) held by a waiter") }
                if !x.held && !lease.waiting { p.append("\(x.name) reserved by a granted lease") }
                if !x.held && !x.enabled { p.append("\(x.name) reserved while disabled") }
            } else if x.held {
                p.append("\(x.name) held without owner")
            }
            // (A reload may drop the policy of a resource whose reset runs: the reset finishes.)
            if x.resetting && (x.owner >= 0 || !x.inInventory) {
                p.append("\(x.name) resetting while owned or out of the inventory")
            }
            for m in x.memberships {
                let s = selectors[Int(m.sel)]
                if !s.live { p.append("\(x.name) member of dead selector") ; continue }
                if Int(m.pos) >= s.members.count || s.members[Int(m.pos)] != Int32(r) {
                    p.append("\(x.name) membership position wrong")
                    continue
                }
                if s.free.contains(Int(m.pos)) != x.isFree {
                    p.append("\(x.name) free bit \(s.free.contains(Int(m.pos))) but free=\(x.isFree)")
                }
            }
        }
    }

    /// Members, free counts, reference counts and usable-waiter counts, recomputed by brute force.
    private func checkSelectors(_ p: inout [String]) {
        var refs = [Int](repeating: 0, count: selectors.count)
        var usableWaiterCounts = [Int](repeating: 0, count: selectors.count)
        for lease in leases where lease.alive && lease.holdsSelectorRefs {
            for g in lease.groups { refs[Int(g.sel)] += 1 }
        }
        for lease in leases where lease.alive && lease.waiting {
            for (i, g) in lease.groups.enumerated() where lease.usableGroups & (1 << UInt16(i)) != 0 {
                usableWaiterCounts[Int(g.sel)] += 1
            }
        }
        var idle = 0
        for (si, s) in selectors.enumerated() where s.live {
            let brute: [Int32]
            switch s.key {
            case .name(let n):
                if let r = nameToSlot[ExactKey(n)], resources[Int(r)].inInventory { brute = [r] } else { brute = [] }
            case .type(let t, let flat):
                brute = resources.indices.filter {
                    resources[$0].inInventory && !resources[$0].gone && resources[$0].type == t && Self.matches(resources[$0].labels, flat)
                }.map { Int32($0) }
            }
            if brute != s.members { p.append("selector \(s.key) members \(s.members) expected \(brute)") }
            for (pos, r) in s.members.enumerated()
            where !resources[Int(r)].memberships.contains(where: { $0.sel == Int32(si) && $0.pos == Int32(pos) }) {
                p.append("selector \(s.key) member \(resources[Int(r)].name) lacks membership")
            }
            let freeBrute = s.members.filter { resources[Int($0)].isFree }.count
            if s.free.count != freeBrute { p.append("selector \(s.key) free count \(s.free.count) expected \(freeBrute)") }
            if s.refs != refs[si] { p.append("selector \(s.key) refs \(s.refs) expected \(refs[si])") }
            if s.usableWaiterCount != usableWaiterCounts[si] {
                p.append("selector \(s.key) usableWaiterCount \(s.usableWaiterCount) expected \(usableWaiterCounts[si])")
            }
            if s.refs == 0, case .type = s.key { idle += 1 }
        }
        if idle != idleTypeSelectors { p.append("idle selectors \(idleTypeSelectors) expected \(idle)") }
    }

    /// The queue, the lease index and the counters; then each lease on its own.
    private func checkLeases(_ p: inout [String]) {
        var granted = 0, waiting = 0, withDeadline = 0, orphans = 0
        var lastSeq: UInt64 = 0
        var pos = 0
        for (qi, s) in queue.enumerated() where s >= 0 {
            let lease = leases[Int(s)]
            pos += 1
            if !(lease.alive && lease.waiting) { p.append("queue entry \(qi) is not a waiter") }
            if lease.queueIndex != Int32(qi) { p.append("queue index of \(lease.id) wrong") }
            if lease.seq <= lastSeq { p.append("queue not in arrival order at \(lease.id)") }
            lastSeq = lease.seq
            if position(Int(s)) != pos { p.append("position of \(lease.id) is \(position(Int(s))), expected \(pos)") }
        }
        let freeList = resources.indices.filter { resources[$0].isFree && !resources[$0].gone }
        for (w, lease) in leases.enumerated() where lease.alive {
            if leaseIndex[lease.id] != Int32(w) { p.append("lease index wrong for \(lease.id)") }
            let mine = lease.slots.filter { $0 >= 0 }.map { Int($0) }
            if Set(mine).count != mine.count { p.append("\(lease.id) lists a resource twice") }
            if lease.orphanUntil != .max { orphans += 1 }
            if lease.revokingUntil != .max && (lease.waiting || lease.orphanUntil != .max) {
                p.append("\(lease.id) is revoking while waiting or orphaned")
            }
            for r in mine where resources[r].owner != Int32(w) { p.append("\(lease.id) lists \(resources[r].name) owned by another") }
            if lease.waiting {
                waiting += 1
                if lease.deadline != .max { withDeadline += 1 }
                checkWaiter(w, lease, reserved: mine, freeList: freeList, &p)
            } else {
                granted += 1
                checkGranted(lease, holding: mine, &p)
            }
        }
        if orphans != orphanCount { p.append("orphan count \(orphanCount) expected \(orphans)") }
        if granted != grantedLeaseCount { p.append("granted count \(grantedLeaseCount) expected \(granted)") }
        if waiting != waiterCount { p.append("waiter count \(waiterCount) expected \(waiting)") }
        if pos != waiting { p.append("queue holds \(pos) waiters, expected \(waiting)") }
        if withDeadline != deadlineLive { p.append("deadlineLive \(deadlineLive) expected \(withDeadline)") }
        if leaseIndex.count != granted + waiting { p.append("lease index has \(leaseIndex.count) entries") }
    }

    /// A granted lease holds one resource per wanted slot, each serving its group (unless a reload
    /// changed the inventory since the grant).
    private func checkGranted(_ lease: LeaseRec, holding mine: [Int], _ p: inout [String]) {
        if mine.count != lease.request.want.reduce(0, { $0 + $1.count }) {
            p.append("\(lease.id) granted \(mine.count) resources")
        }
        if lease.grantedGeneration == inventoryGeneration {
            var k = 0
            for g in lease.request.want {
                for _ in 0..<g.count {
                    if k < lease.slots.count, !serves(Int(lease.slots[k]), g) {
                        p.append("\(lease.id) got \(resources[Int(lease.slots[k])].name) for \(g)")
                    }
                    k += 1
                }
            }
        }
    }

    /// A waiter is queued and scheduled; its reservations serve its groups and cannot grow; the
    /// resources flagged usable for it are exactly the ones that would grow them.
    private func checkWaiter(_ w: Int, _ lease: LeaseRec, reserved mine: [Int], freeList: [Int], _ p: inout [String]) {
        if lease.deadline != .max {
            if !deadlines.items.contains(where: { $0.seq == lease.seq && $0.deadline == lease.deadline && $0.slot == Int32(w) }) {
                p.append("\(lease.id) deadline not scheduled")
            }
        }
        if lease.queueIndex < 0 || Int(lease.queueIndex) >= queue.count || queue[Int(lease.queueIndex)] != Int32(w) {
            p.append("\(lease.id) not in queue")
        }
        // Matching: each group's slots serve it; filled counts agree; not complete.
        for (gi, g) in lease.groups.enumerated() {
            for k in Int(g.offset)..<Int(g.offset + g.count) {
                let used = k < Int(g.offset + g.filled)
                if used != (lease.slots[k] >= 0) { p.append("\(lease.id) group \(gi) fill count wrong") }
                if used, !serves(Int(lease.slots[k]), lease.request.want[gi]) {
                    p.append("\(lease.id) reserved \(resources[Int(lease.slots[k])].name) for \(lease.request.want[gi])")
                }
            }
        }
        if isComplete(w) { p.append("\(lease.id) complete but waiting") }
        let base = bruteMatch(lease.request.want, mine)
        if base != mine.count { p.append("\(lease.id) reserved set not independent") }
        // No resource that is free or reserved by a later waiter is usable by it.
        let reachable = freeList + resources.indices.filter {
            let o = resources[$0].owner
            return o >= 0 && !resources[$0].held && leases[Int(o)].seq > lease.seq
        }
        for r in reachable where lease.request.want.contains(where: { serves(r, $0) }) {
            if bruteMatch(lease.request.want, mine + [r]) > base {
                p.append("\(resources[r].isFree ? "free" : "later-reserved") \(resources[r].name) usable by waiter \(lease.id)")
            }
        }
        // Usable flags: a resource outside the reserved set is usable iff it belongs to a
        // selector whose resources the waiter can use (what hand-off relies on).
        for (gi, g) in lease.groups.enumerated() where Int(g.rep) == gi && lease.usableGroups & (1 << UInt16(gi)) != 0 {
            if lease.inWaiterHeaps & (1 << UInt16(gi)) == 0 { p.append("\(lease.id) can use a selector but is not in its heap") }
            if !selectors[Int(g.sel)].waiters.items.contains(where: { $0.seq == lease.seq && $0.slot == Int32(w) }) {
                p.append("\(lease.id) can use a selector but its heap entry is missing")
            }
        }
        for r in resources.indices where resources[r].inInventory && !resources[r].gone && !mine.contains(r) {
            guard lease.request.want.contains(where: { serves(r, $0) }) else { continue }
            let usable = bruteMatch(lease.request.want, mine + [r]) > base
            let flagged = lease.groups.enumerated().contains { gi, g in
                lease.usableGroups & (1 << UInt16(gi)) != 0 && serves(r, lease.request.want[gi])
            }
            if usable != flagged { p.append("\(lease.id): \(resources[r].name) usable \(usable), flagged usable \(flagged)") }
        }
    }
}
