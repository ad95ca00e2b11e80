// Self-check of the whole table with brute-force algorithms independent of the indexes.
// For tests: O(table × waiters × matching); do not call it on a production path.

extension LeaseTable {
    /// Brute-force "does resource `r` serve group `g`" from the resource's current fields.
    func serves(_ r: Int, _ g: Group) -> Bool {
        let x = res[r]
        guard x.inInventory, !x.gone else { return false }
        switch g {
        case .name(let n): return x.name == n
        case .type(let t, let labels, _):
            return x.type == t && labels.allSatisfy { x.labels[$0.key] == $0.value }
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
    public func checkInvariants() -> [String] {
        var p: [String] = []
        // Names.
        var live = 0
        for r in res.indices where !res[r].gone {
            live += 1
            if nameToSlot[res[r].name] != Int32(r) { p.append("name index wrong for \(res[r].name)") }
        }
        if live != nameToSlot.count { p.append("name index has \(nameToSlot.count) entries, \(live) resources") }
        for (i, r) in res.enumerated() where !r.gone && !r.inInventory {
            if !(r.owner >= 0 && r.held) { p.append("removed resource \(r.name) is not held") }
            _ = i
        }
        // Resources vs owners and free sets.
        for r in res.indices where !res[r].gone {
            let x = res[r]
            if x.owner >= 0 {
                let L = leases[Int(x.owner)]
                if !L.alive { p.append("\(x.name) owned by a dead lease") }
                if !L.slots.contains(Int32(r)) { p.append("\(x.name) not in its owner's list") }
                if x.held && L.waiting { p.append("\(x.name) held by a waiter") }
                if !x.held && !L.waiting { p.append("\(x.name) reserved by a granted lease") }
                if !x.held && !x.enabled { p.append("\(x.name) reserved while disabled") }
            } else if x.held {
                p.append("\(x.name) held without owner")
            }
            for m in x.memberships {
                let s = sels[Int(m.sel)]
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
        // Selectors.
        var refs = [Int](repeating: 0, count: sels.count)
        var hungryCount = [Int](repeating: 0, count: sels.count)
        for L in leases where L.alive && L.holdsSelectorRefs {
            for g in L.groups { refs[Int(g.sel)] += 1 }
        }
        for L in leases where L.alive && L.waiting {
            for (i, g) in L.groups.enumerated() where L.hungry & (1 << UInt16(i)) != 0 {
                hungryCount[Int(g.sel)] += 1
            }
        }
        var idle = 0
        for (si, s) in sels.enumerated() where s.live {
            let brute: [Int32]
            switch s.key {
            case .name(let n):
                if let r = nameToSlot[n], res[Int(r)].inInventory { brute = [r] } else { brute = [] }
            case .type(let t, let flat):
                brute = res.indices.filter {
                    res[$0].inInventory && !res[$0].gone && res[$0].type == t && Self.matches(res[$0].labels, flat)
                }.map { Int32($0) }
            }
            if brute != s.members { p.append("selector \(s.key) members \(s.members) expected \(brute)") }
            for (pos, r) in s.members.enumerated()
            where !res[Int(r)].memberships.contains(where: { $0.sel == Int32(si) && $0.pos == Int32(pos) }) {
                p.append("selector \(s.key) member \(res[Int(r)].name) lacks membership")
            }
            let freeBrute = s.members.filter { res[Int($0)].isFree }.count
            if s.free.count != freeBrute { p.append("selector \(s.key) free count \(s.free.count) expected \(freeBrute)") }
            if s.refs != refs[si] { p.append("selector \(s.key) refs \(s.refs) expected \(refs[si])") }
            if s.hungryLive != hungryCount[si] {
                p.append("selector \(s.key) hungryLive \(s.hungryLive) expected \(hungryCount[si])")
            }
            if s.refs == 0, case .type = s.key { idle += 1 }
        }
        if idle != idleTypeSelectors { p.append("idle selectors \(idleTypeSelectors) expected \(idle)") }
        // Leases.
        var granted = 0, waiting = 0, withDeadline = 0
        var lastSeq: UInt64 = 0
        var pos = 0
        for (qi, s) in queue.enumerated() where s >= 0 {
            let L = leases[Int(s)]
            pos += 1
            if !(L.alive && L.waiting) { p.append("queue entry \(qi) is not a waiter") }
            if L.queueIndex != Int32(qi) { p.append("queue index of \(L.id) wrong") }
            if L.seq <= lastSeq { p.append("queue not in arrival order at \(L.id)") }
            lastSeq = L.seq
            if position(Int(s)) != pos { p.append("position of \(L.id) is \(position(Int(s))), expected \(pos)") }
        }
        let freeList = res.indices.filter { res[$0].isFree && !res[$0].gone }
        for (w, L) in leases.enumerated() where L.alive {
            if leaseIndex[L.id] != Int32(w) { p.append("lease index wrong for \(L.id)") }
            let mine = L.slots.filter { $0 >= 0 }.map { Int($0) }
            if Set(mine).count != mine.count { p.append("\(L.id) lists a resource twice") }
            for r in mine where res[r].owner != Int32(w) { p.append("\(L.id) lists \(res[r].name) owned by another") }
            if !L.waiting {
                granted += 1
                if mine.count != L.request.want.reduce(0, { $0 + $1.count }) {
                    p.append("\(L.id) granted \(mine.count) resources")
                }
                if L.grantedGeneration == inventoryGeneration {
                    var k = 0
                    for g in L.request.want {
                        for _ in 0..<g.count {
                            if k < L.slots.count, !serves(Int(L.slots[k]), g) {
                                p.append("\(L.id) got \(res[Int(L.slots[k])].name) for \(g)")
                            }
                            k += 1
                        }
                    }
                }
                continue
            }
            waiting += 1
            if L.deadline != .max {
                withDeadline += 1
                if !deadlines.items.contains(where: { $0.seq == L.seq && $0.deadline == L.deadline && $0.slot == Int32(w) }) {
                    p.append("\(L.id) deadline not scheduled")
                }
            }
            if L.queueIndex < 0 || Int(L.queueIndex) >= queue.count || queue[Int(L.queueIndex)] != Int32(w) {
                p.append("\(L.id) not in queue")
            }
            // Matching: each group's slots serve it; filled counts agree; not complete.
            for (gi, g) in L.groups.enumerated() {
                for k in Int(g.offset)..<Int(g.offset + g.count) {
                    let used = k < Int(g.offset + g.filled)
                    if used != (L.slots[k] >= 0) { p.append("\(L.id) group \(gi) fill count wrong") }
                    if used, !serves(Int(L.slots[k]), L.request.want[gi]) {
                        p.append("\(L.id) reserved \(res[Int(L.slots[k])].name) for \(L.request.want[gi])")
                    }
                }
            }
            if isComplete(w) { p.append("\(L.id) complete but waiting") }
            let base = bruteMatch(L.request.want, mine)
            if base != mine.count { p.append("\(L.id) reserved set not independent") }
            // No resource that is free or reserved by a later waiter is usable by it.
            let reachable = freeList + res.indices.filter {
                let o = res[$0].owner
                return o >= 0 && !res[$0].held && leases[Int(o)].seq > L.seq
            }
            for r in reachable where L.request.want.contains(where: { serves(r, $0) }) {
                if bruteMatch(L.request.want, mine + [r]) > base {
                    p.append("\(res[r].isFree ? "free" : "later-reserved") \(res[r].name) usable by waiter \(L.id)")
                }
            }
            // Hungry flags: a resource outside the reserved set is usable iff it belongs to a
            // selector the waiter is hungry for (what hand-off relies on).
            for (gi, g) in L.groups.enumerated() where Int(g.rep) == gi && L.hungry & (1 << UInt16(gi)) != 0 {
                if L.listed & (1 << UInt16(gi)) == 0 { p.append("\(L.id) hungry but not listed") }
                if !sels[Int(g.sel)].hungry.items.contains(where: { $0.seq == L.seq && $0.slot == Int32(w) }) {
                    p.append("\(L.id) hungry but not in heap")
                }
            }
            for r in res.indices where res[r].inInventory && !res[r].gone && !mine.contains(r) {
                guard L.request.want.contains(where: { serves(r, $0) }) else { continue }
                let usable = bruteMatch(L.request.want, mine + [r]) > base
                let flagged = L.groups.enumerated().contains { gi, g in
                    L.hungry & (1 << UInt16(gi)) != 0 && serves(r, L.request.want[gi])
                }
                if usable != flagged { p.append("\(L.id): \(res[r].name) usable \(usable), hungry flag \(flagged)") }
            }
        }
        if granted != grantedLeaseCount { p.append("granted count \(grantedLeaseCount) expected \(granted)") }
        if waiting != waiterCount { p.append("waiter count \(waiterCount) expected \(waiting)") }
        if pos != waiting { p.append("queue holds \(pos) waiters, expected \(waiting)") }
        if withDeadline != deadlineLive { p.append("deadlineLive \(deadlineLive) expected \(withDeadline)") }
        if leaseIndex.count != granted + waiting { p.append("lease index has \(leaseIndex.count) entries") }
        return p
    }
}
