// Matching, hand-off and queue bookkeeping of the lease table. Internal.

extension LeaseTable {
    // MARK: Request resolution

    /// Resolves `request.want` into `scratchResolved` (selectors interned, one ref taken per
    /// group) and checks that the whole current inventory, counting held and disabled
    /// resources, can satisfy it. Returns the reason when it cannot (refs are then released).
    mutating func resolve(_ request: Request) -> String? {
        scratchResolved.removeAll(keepingCapacity: true)
        let want = request.want
        if want.isEmpty { return "want is empty" }
        if want.count > Self.maxGroups { return "want has more than \(Self.maxGroups) groups" }
        var message: String?
        var offset: Int32 = 0
        groups: for g in want {
            let sel: Int32
            let count: Int32
            switch g {
            case .name(let n):
                guard let s = nameToSlot[ExactKey(n)], resources[Int(s)].inInventory else {
                    message = "unknown resource \"\(n)\""
                    break groups
                }
                sel = internName(Int(s))
                if scratchResolved.contains(where: { $0.sel == sel }) {
                    message = "resource \"\(n)\" is named twice"
                    break groups
                }
                count = 1
            case .type(let t, let labels, let c):
                guard c >= 1 else {
                    message = "count must be positive"
                    break groups
                }
                guard let all = typeMembers[ExactKey(t)] else {
                    message = "unknown resource type \"\(t)\""
                    break groups
                }
                guard c <= all.count else {
                    message = "wants \(Self.resources(c)) of type \"\(t)\"; the inventory has \(all.count)"
                    break groups
                }
                sel = internType(t, labels)
                let m = selectors[Int(sel)].members.count
                guard c <= m else {
                    message = "wants \(Self.resources(c)) of type \"\(t)\" with labels \(Self.labelText(labels)); "
                        + "the inventory has \(m)"
                    break groups
                }
                count = Int32(c)
            }
            takeRef(sel)
            scratchResolved.append(GroupRec(sel: sel, count: count, offset: offset, filled: 0,
                                            overlap: 0, rep: Int8(scratchResolved.count)))
            offset += count
        }
        if message == nil {
            computeOverlaps()
            message = hallCheck(request)
        }
        if message != nil {
            for g in scratchResolved { dropRef(g.sel) }
            scratchResolved.removeAll(keepingCapacity: true)
        }
        return message
    }

    static func labelText(_ labels: [String: String]) -> String {
        "{" + labels.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "}"
    }

    mutating func computeOverlaps() {
        let n = scratchResolved.count
        if n < 2 { return }
        for i in 0..<n {
            for j in (i + 1)..<n where selectorsMayOverlap(scratchResolved[i].sel, scratchResolved[j].sel) {
                scratchResolved[i].overlap |= 1 << UInt16(j)
                scratchResolved[j].overlap |= 1 << UInt16(i)
                if scratchResolved[i].sel == scratchResolved[j].sel && scratchResolved[j].rep == Int8(j) {
                    scratchResolved[j].rep = scratchResolved[i].rep
                }
            }
        }
    }

    func selectorsMayOverlap(_ a: Int32, _ b: Int32) -> Bool {
        if a == b { return true }
        switch (selectors[Int(a)].key, selectors[Int(b)].key) {
        case (.name, .name):
            return false
        case (.name, .type):
            guard let r = selectors[Int(a)].members.first else { return false }
            return resHasSel(Int(r), b)
        case (.type, .name):
            guard let r = selectors[Int(b)].members.first else { return false }
            return resHasSel(Int(r), a)
        case let (.type(t1, l1), .type(t2, l2)):
            return t1 == t2 && Self.labelsConsistent(l1, l2)
        }
    }

    /// "1 resource", "3 resources".
    static func resources(_ count: Int) -> String { count == 1 ? "1 resource" : "\(count) resources" }

    /// Two flattened, key-sorted label lists name no key with two different values.
    static func labelsConsistent(_ a: [String], _ b: [String]) -> Bool {
        var i = 0, j = 0
        while i < a.count && j < b.count {
            if a[i].exactlyEquals(b[j]) {
                if !a[i + 1].exactlyEquals(b[j + 1]) { return false }
                i += 2; j += 2
            } else if a[i] < b[j] {
                i += 2
            } else {
                j += 2
            }
        }
        return true
    }

    /// Hall's condition over each connected set of overlapping groups: for every subset S of
    /// groups, the resources matching some group in S are at least the sum of S's counts.
    /// Equivalent to the existence of a full bipartite assignment over the inventory.
    mutating func hallCheck(_ request: Request) -> String? {
        let n = scratchResolved.count
        var seen: UInt16 = 0
        for start in 0..<n where seen & (1 << UInt16(start)) == 0 {
            // Connected component of the overlap graph.
            var comp: UInt16 = 1 << UInt16(start)
            var grow = true
            while grow {
                grow = false
                var m = comp
                while m != 0 {
                    let g = m.trailingZeroBitCount
                    m &= m - 1
                    let add = scratchResolved[g].overlap & ~comp
                    if add != 0 { comp |= add; grow = true }
                }
            }
            seen |= comp
            if comp.nonzeroBitCount < 2 { continue }
            var list: [Int] = []
            var m = comp
            while m != 0 { list.append(m.trailingZeroBitCount); m &= m - 1 }
            let key = list.map { Int64(scratchResolved[$0].sel) << 32 | Int64(scratchResolved[$0].count) }
            let ok: Bool
            if let cached = satisfiableCache[key] {
                ok = cached
            } else {
                ok = hallHolds(list)
                if satisfiableCache.count > 4096 { satisfiableCache.removeAll() }
                satisfiableCache[key] = ok
            }
            if !ok {
                let names = list.map { request.want[$0].description }.joined(separator: " + ")
                return "no assignment of the inventory satisfies \(names) together"
            }
        }
        return nil
    }

    func hallHolds(_ list: [Int]) -> Bool {
        let k = list.count
        let size = 1 << k
        var f = [Int](repeating: 0, count: size)
        for (i, g) in list.enumerated() {
            for r in selectors[Int(scratchResolved[g].sel)].members {
                var mask = 0
                for (j, g2) in list.enumerated() where resHasSel(Int(r), scratchResolved[g2].sel) {
                    mask |= 1 << j
                }
                if mask.trailingZeroBitCount == i { f[mask] += 1 }
            }
        }
        // f[m] = resources whose group set is a subset of m.
        for b in 0..<k {
            for m in 0..<size where m & (1 << b) != 0 { f[m] += f[m ^ (1 << b)] }
        }
        let full = size - 1
        let total = f[full]
        var need = [Int](repeating: 0, count: size)
        for s in 1..<size {
            let low = s.trailingZeroBitCount
            need[s] = need[s & (s - 1)] + Int(scratchResolved[list[low]].count)
            if total - f[full ^ s] < need[s] { return false }
        }
        return true
    }

    // MARK: Selectors

    @inline(__always)
    func resHasSel(_ r: Int, _ s: Int32) -> Bool {
        resources[r].memberships.withUnsafeBufferPointer { ms in
            for m in ms where m.sel == s { return true }
            return false
        }
    }

    mutating func newSelector(_ key: SelectorKey, _ members: [Int32]) -> Int32 {
        let s: Int32
        if let reuse = freeSelectorSlots.popLast() { s = reuse } else { s = Int32(selectors.count) }
        var sel = Selector(key: key, members: members, free: HierBits(capacity: members.count))
        for (pos, r) in members.enumerated() {
            resources[Int(r)].memberships.append(Membership(sel: s, pos: Int32(pos)))
            if resources[Int(r)].isFree { sel.free.insert(pos) }
        }
        if Int(s) == selectors.count { selectors.append(sel) } else { selectors[Int(s)] = sel }
        return s
    }

    mutating func internName(_ r: Int) -> Int32 {
        if resources[r].nameSel >= 0 { return resources[r].nameSel }
        let s = newSelector(.name(resources[r].name), [Int32(r)])
        resources[r].nameSel = s
        return s
    }

    static func flatten(_ labels: [String: String]) -> [String] {
        if labels.isEmpty { return [] }
        var out: [String] = []
        out.reserveCapacity(labels.count * 2)
        for (k, v) in labels.sorted(by: { $0.key < $1.key }) { out.append(k); out.append(v) }
        return out
    }

    /// Whether `labels` has every key of `flat` with its value, by scalars: a dictionary finds
    /// "e" + U+0301 under "é", which to the protocol is another key.
    static func matches(_ labels: [String: String], _ flat: [String]) -> Bool {
        var i = 0
        while i < flat.count {
            guard let index = labels.index(forKey: flat[i]), labels[index].key.exactlyEquals(flat[i]),
                  labels[index].value.exactlyEquals(flat[i + 1]) else { return false }
            i += 2
        }
        return true
    }

    mutating func internType(_ type: String, _ labels: [String: String]) -> Int32 {
        let key = SelectorKey.type(type, Self.flatten(labels))
        if let s = selectorIndex[key] { return s }
        return createTypeSelector(key)
    }

    mutating func createTypeSelector(_ key: SelectorKey) -> Int32 {
        guard case let .type(type, flat) = key else { return -1 }
        let members = (typeMembers[ExactKey(type)] ?? []).filter { Self.matches(resources[Int($0)].labels, flat) }
        let s = newSelector(key, members)
        selectorIndex[key] = s
        idleTypeSelectors += 1
        return s
    }

    mutating func takeRef(_ s: Int32) {
        if selectors[Int(s)].refs == 0, case .type = selectors[Int(s)].key { idleTypeSelectors -= 1 }
        selectors[Int(s)].refs += 1
    }

    mutating func dropRef(_ s: Int32) {
        selectors[Int(s)].refs -= 1
        if selectors[Int(s)].refs == 0, case .type = selectors[Int(s)].key { idleTypeSelectors += 1 }
    }

    mutating func killSelector(_ s: Int) {
        for r in selectors[s].members {
            resources[Int(r)].memberships.removeAll { $0.sel == Int32(s) }
            if resources[Int(r)].nameSel == Int32(s) { resources[Int(r)].nameSel = -1 }
        }
        if case .type = selectors[s].key { selectorIndex.removeValue(forKey: selectors[s].key) }
        selectors[s] = Selector(key: .name(""), members: [], free: HierBits(capacity: 0), live: false)
        freeSelectorSlots.append(Int32(s))
    }

    /// Evicts cached type selectors no request uses, once there are too many of them.
    mutating func sweepIdleSelectors() {
        guard idleTypeSelectors > Self.idleSelectorCap else { return }
        for s in selectors.indices where selectors[s].live && selectors[s].refs == 0 {
            if case .type = selectors[s].key { killSelector(s) }
        }
        idleTypeSelectors = 0
        satisfiableCache.removeAll()
    }

    @inline(__always)
    mutating func setFree(_ r: Int) {
        let n = resources[r].memberships.count
        for i in 0..<n {
            let m = resources[r].memberships[i]
            selectors[Int(m.sel)].free.insert(Int(m.pos))
        }
    }

    @inline(__always)
    mutating func clearFree(_ r: Int) {
        let n = resources[r].memberships.count
        for i in 0..<n {
            let m = resources[r].memberships[i]
            selectors[Int(m.sel)].free.remove(Int(m.pos))
        }
    }

    // MARK: Lease records

    mutating func newLease(_ id: LeaseID, _ request: Request, _ t: Tick) -> Int {
        var total: Int32 = 0
        var anyOverlap = false
        for g in scratchResolved {
            total += g.count
            if g.overlap != 0 { anyOverlap = true }
        }
        let seq = nextSeq
        nextSeq += 1
        let w: Int
        if let reuse = freeLeaseSlots.popLast() {
            w = Int(reuse)
            leases[w].id = id
            leases[w].seq = seq
            leases[w].alive = true
            leases[w].waiting = false
            leases[w].request = request
            leases[w].arrivedAt = t
            leases[w].grantedAt = t
            leases[w].grantedGeneration = 0
            leases[w].groups.removeAll(keepingCapacity: true)
            leases[w].groups.append(contentsOf: scratchResolved)
            leases[w].slots.removeAll(keepingCapacity: true)
            leases[w].slots.append(contentsOf: repeatElement(-1, count: Int(total)))
            leases[w].anyOverlap = anyOverlap
            leases[w].usableGroups = 0
            leases[w].inWaiterHeaps = 0
            leases[w].deadline = .max
            leases[w].queueIndex = -1
            leases[w].lastSentPos = 0
            leases[w].lastSentAt = .min
            leases[w].holdsSelectorRefs = true
            leases[w].orphanUntil = .max
            leases[w].revokingUntil = .max
            leases[w].revokeReason = ""
            leases[w].expiresAt = .max
            leases[w].holdLimit = .max
        } else {
            w = leases.count
            leases.append(LeaseRec(
                id: id, seq: seq, request: request, arrivedAt: t, grantedAt: t, grantedGeneration: 0,
                groups: scratchResolved, slots: Array(repeating: -1, count: Int(total)), deadline: .max,
                lastSentAt: .min, queueIndex: -1, lastSentPos: 0, usableGroups: 0, inWaiterHeaps: 0,
                alive: true, waiting: false, anyOverlap: anyOverlap, holdsSelectorRefs: true))
        }
        leaseIndex[id] = Int32(w)
        return w
    }

    mutating func releaseSelectorRefs(_ w: Int) {
        guard leases[w].holdsSelectorRefs else { return }
        leases[w].holdsSelectorRefs = false
        for i in leases[w].groups.indices { dropRef(leases[w].groups[i].sel) }
    }

    /// Forgets a lease record (the caller has already moved its resources).
    mutating func dropLease(_ w: Int) {
        releaseSelectorRefs(w)
        if leases[w].orphanUntil != .max { orphanCount -= 1 }
        leaseIndex.removeValue(forKey: leases[w].id)
        leases[w].alive = false
        leases[w].waiting = false
        leases[w].request = Request(want: [])
        freeLeaseSlots.append(Int32(w))
    }

    @inline(__always)
    func isComplete(_ w: Int) -> Bool {
        leases[w].groups.withUnsafeBufferPointer { gs in
            for g in gs where g.filled < g.count { return false }
            return true
        }
    }

    // MARK: Matching

    /// Groups from which an alternating path reaches a group that still lacks resources: a free
    /// resource matching any of them can be added to the waiter's matching.
    func deficitReach(_ w: Int) -> UInt16 {
        var d: UInt16 = 0
        let n = leases[w].groups.count
        leases[w].groups.withUnsafeBufferPointer { gs in
            for g in 0..<n where gs[g].filled < gs[g].count { d |= 1 << UInt16(g) }
        }
        if d == 0 || !leases[w].anyOverlap { return d }
        var changed = true
        while changed {
            changed = false
            for g in 0..<n where d & (1 << UInt16(g)) == 0 {
                let gr = leases[w].groups[g]
                let targets = gr.overlap & d
                if targets == 0 { continue }
                var found = false
                for k in Int(gr.offset)..<Int(gr.offset + gr.filled) {
                    let r = Int(leases[w].slots[k])
                    var tm = targets
                    while tm != 0 {
                        let h = tm.trailingZeroBitCount
                        tm &= tm - 1
                        if resHasSel(r, leases[w].groups[h].sel) { found = true; break }
                    }
                    if found { break }
                }
                if found { d |= 1 << UInt16(g); changed = true }
            }
        }
        return d
    }

    /// Adds resource `r` (already owned by `w`) to `w`'s matching along an augmenting path.
    mutating func augment(_ w: Int, _ r: Int) -> Bool {
        let n = leases[w].groups.count
        // Fast path: a single group.
        if n == 1 {
            let g = leases[w].groups[0]
            guard g.filled < g.count, resHasSel(r, g.sel) else { return false }
            leases[w].slots[Int(g.offset + g.filled)] = Int32(r)
            leases[w].groups[0].filled += 1
            return true
        }
        // Breadth-first over the lease's groups (at most 16), in scratch arrays the table keeps.
        var visited: UInt16 = 0
        var head = 0, tail = 0
        for g in 0..<n where resHasSel(r, leases[w].groups[g].sel) {
            visited |= 1 << UInt16(g)
            augmentScratch.parentGroup[g] = -1
            augmentScratch.queue[tail] = Int8(g); tail += 1
        }
        while head < tail {
            let g = Int(augmentScratch.queue[head]); head += 1
            let gr = leases[w].groups[g]
            if gr.filled < gr.count {
                // Shift each slot on the path back to its parent group; the new resource goes in first.
                var pos = Int(gr.offset + gr.filled)
                leases[w].groups[g].filled += 1
                var current = g
                while true {
                    let parent = Int(augmentScratch.parentGroup[current])
                    if parent < 0 { leases[w].slots[pos] = Int32(r); return true }
                    let from = Int(augmentScratch.parentSlot[current])
                    leases[w].slots[pos] = leases[w].slots[from]
                    pos = from
                    current = parent
                }
            }
            if gr.overlap & ~visited == 0 { continue }
            for k in Int(gr.offset)..<Int(gr.offset + gr.filled) {
                let rk = Int(leases[w].slots[k])
                var candidates = gr.overlap & ~visited
                while candidates != 0 {
                    let h = candidates.trailingZeroBitCount
                    candidates &= candidates - 1
                    if resHasSel(rk, leases[w].groups[h].sel) {
                        visited |= 1 << UInt16(h)
                        augmentScratch.parentGroup[h] = Int8(g)
                        augmentScratch.parentSlot[h] = Int32(k)
                        augmentScratch.queue[tail] = Int8(h); tail += 1
                    }
                }
            }
        }
        return false
    }

    /// Removes `r` from `w`'s matching (the rest stays a valid matching).
    mutating func takeAway(_ w: Int, _ r: Int) {
        for g in leases[w].groups.indices {
            let gr = leases[w].groups[g]
            for k in Int(gr.offset)..<Int(gr.offset + gr.filled) where leases[w].slots[k] == Int32(r) {
                let last = Int(gr.offset + gr.filled) - 1
                leases[w].slots[k] = leases[w].slots[last]
                leases[w].slots[last] = -1
                leases[w].groups[g].filled -= 1
                resources[r].owner = -1
                resources[r].held = false
                return
            }
        }
    }

    /// Reserves free resources for `w` while it can use them. Returns true when complete.
    /// Only correct when no earlier waiter can use a free resource (the table's invariant).
    mutating func fill(_ w: Int, _ t: Tick) -> Bool {
        while true {
            let d = deficitReach(w)
            if d == 0 { return true }
            var picked = -1
            var m = d
            while m != 0 {
                let g = m.trailingZeroBitCount
                m &= m - 1
                let s = Int(leases[w].groups[g].sel)
                if let p = selectors[s].free.first() { picked = Int(selectors[s].members[p]); break }
            }
            if picked < 0 { return false }
            clearFree(picked)
            resources[picked].owner = Int32(w)
            resources[picked].held = false
            resources[picked].since = t
            if !augment(w, picked) {
                // Cannot happen (the resource matches a group that reaches a deficit).
                resources[picked].owner = -1
                setFree(picked)
                return false
            }
        }
    }

    /// After waiters lost reserved resources (disable, reload): each of them, earliest first,
    /// takes the free resources it can now use and then reclaims usable resources reserved by
    /// later waiters (a later waiter never keeps what an earlier one can use); those later
    /// waiters are processed in turn. Keeps the invariant "no resource that is free or reserved
    /// by a later waiter is usable by an earlier waiter", which makes the queue live.
    /// O(members of the affected selectors): only on admin operations.
    mutating func rebalance(_ start: [Int], _ t: Tick, _ out: inout [Effect]) {
        var work = start
        while !work.isEmpty {
            var bi = 0
            for i in work.indices where leases[work[i]].seq < leases[work[bi]].seq { bi = i }
            let w = work.remove(at: bi)
            guard leases[w].alive && leases[w].waiting else { continue }
            while true {
                if fill(w, t) {
                    grant(w, t, &out)
                    break
                }
                // Reclaim from the latest-arrived waiter holding a usable resource.
                let d = deficitReach(w)
                let mySeq = leases[w].seq
                var bestR = -1
                var bestSeq: UInt64 = 0
                var m = d
                while m != 0 {
                    let g = m.trailingZeroBitCount
                    m &= m - 1
                    for r32 in selectors[Int(leases[w].groups[g].sel)].members {
                        let o = Int(resources[Int(r32)].owner)
                        guard o >= 0, o != w, !resources[Int(r32)].held else { continue }
                        let s = leases[o].seq
                        if s > mySeq && s > bestSeq { bestSeq = s; bestR = Int(r32) }
                    }
                }
                if bestR < 0 {
                    updateUsableGroups(w)
                    break
                }
                let victim = Int(resources[bestR].owner)
                takeAway(victim, bestR)
                resources[bestR].owner = Int32(w)
                resources[bestR].since = t
                if !augment(w, bestR) {
                    // Cannot happen; give it back.
                    resources[bestR].owner = Int32(victim)
                    _ = augment(victim, bestR)
                    updateUsableGroups(w)
                    break
                }
                if !work.contains(victim) { work.append(victim) }
            }
        }
    }

    // MARK: Hungry index (which waiters can use a resource of a selector)

    @inline(__always)
    func repBit(_ w: Int, _ s: Int32) -> UInt16 {
        leases[w].groups.withUnsafeBufferPointer { gs in
            for (i, g) in gs.enumerated() where g.sel == s { return 1 << UInt16(i) }
            return 0
        }
    }

    mutating func updateUsableGroups(_ w: Int) {
        let d = deficitReach(w)
        var h: UInt16 = 0
        var m = d
        while m != 0 {
            let g = m.trailingZeroBitCount
            m &= m - 1
            h |= 1 << UInt16(leases[w].groups[g].rep)
        }
        let old = leases[w].usableGroups
        if h == old { return }
        var removed = old & ~h
        while removed != 0 {
            let g = removed.trailingZeroBitCount
            removed &= removed - 1
            selectors[Int(leases[w].groups[g].sel)].usableWaiterCount -= 1
        }
        var added = h & ~old
        while added != 0 {
            let g = added.trailingZeroBitCount
            added &= added - 1
            let bit: UInt16 = 1 << UInt16(g)
            let s = Int(leases[w].groups[g].sel)
            selectors[s].usableWaiterCount += 1
            if leases[w].inWaiterHeaps & bit == 0 {
                leases[w].inWaiterHeaps |= bit
                selectors[s].waiters.push(WaiterRef(seq: leases[w].seq, slot: Int32(w)))
            }
        }
        leases[w].usableGroups = h
    }

    mutating func clearUsableGroups(_ w: Int) {
        var m = leases[w].usableGroups
        while m != 0 {
            let g = m.trailingZeroBitCount
            m &= m - 1
            selectors[Int(leases[w].groups[g].sel)].usableWaiterCount -= 1
        }
        leases[w].usableGroups = 0
        leases[w].inWaiterHeaps = 0
    }

    /// Heap entry still names a live waiter that can use resources of `s`.
    func isUsableWaiter(_ e: WaiterRef, _ s: Int32) -> Bool {
        let w = Int(e.slot)
        return leases[w].alive && leases[w].waiting && leases[w].seq == e.seq
            && leases[w].usableGroups & repBit(w, s) != 0
    }

    /// The earliest waiter that can use a resource of selector `s`.
    mutating func earliestUsableWaiter(_ s: Int) -> WaiterRef? {
        let sel = Int32(s)
        if selectors[s].waiters.count > 2 * selectors[s].usableWaiterCount + 16 {
            var heap = selectors[s].waiters
            selectors[s].waiters = MinHeap()
            heap.compact { e in
                if isUsableWaiter(e, sel) { return true }
                clearHeapEntry(e, sel)
                return false
            }
            selectors[s].waiters = heap
        }
        while let top = selectors[s].waiters.top {
            if isUsableWaiter(top, sel) { return top }
            selectors[s].waiters.pop()
            clearHeapEntry(top, sel)
        }
        return nil
    }

    private mutating func clearHeapEntry(_ e: WaiterRef, _ s: Int32) {
        let w = Int(e.slot)
        if leases[w].alive && leases[w].waiting && leases[w].seq == e.seq {
            leases[w].inWaiterHeaps &= ~repBit(w, s)
        }
    }

    // MARK: Grants, releases, hand-offs

    mutating func grant(_ w: Int, _ t: Tick, _ out: inout [Effect]) {
        if leases[w].waiting {
            dequeue(w, t)
            clearUsableGroups(w)
            if leases[w].deadline != .max { deadlineLive -= 1 }
            leases[w].waiting = false
        }
        releaseSelectorRefs(w)
        // Within a group, list resources in inventory order.
        for gi in leases[w].groups.indices {
            let g = leases[w].groups[gi]
            if g.count > 1 { leases[w].slots[Int(g.offset)..<Int(g.offset + g.count)].sort() }
        }
        var list: [GrantedResource] = []
        list.reserveCapacity(leases[w].slots.count)
        for k in leases[w].slots.indices {
            let r = Int(leases[w].slots[k])
            resources[r].held = true
            resources[r].epoch += 1
            resources[r].since = t
            list.append(GrantedResource(name: resources[r].name, type: resources[r].type, labels: resources[r].labels,
                                        attributes: resources[r].attributes, epoch: resources[r].epoch))
        }
        leases[w].grantedAt = t
        leases[w].grantedGeneration = inventoryGeneration
        grantedLeaseCount += 1
        startHoldLimit(w, t)
        out.append(.granted(leases[w].id, list))
    }

    mutating func removeWaiter(_ w: Int, _ t: Tick, failure: FailureReason?, _ out: inout [Effect]) {
        if let f = failure { out.append(.failed(leases[w].id, f, facts(w))) }
        dequeue(w, t)
        clearUsableGroups(w)
        if leases[w].deadline != .max { deadlineLive -= 1 }
        var rel = scratchReleased
        scratchReleased = []
        rel.removeAll(keepingCapacity: true)
        for k in leases[w].slots where k >= 0 { rel.append(k) }
        dropLease(w)
        for k in rel {
            let r = Int(k)
            resources[r].owner = -1
            resources[r].held = false
            resources[r].since = t
            handoff(r, t, &out)
        }
        scratchReleased = rel
    }

    mutating func releaseGranted(_ w: Int, _ t: Tick, reason: EndReason, _ out: inout [Effect]) {
        grantedLeaseCount -= 1
        var rel = scratchReleased
        scratchReleased = []
        rel.removeAll(keepingCapacity: true)
        rel.append(contentsOf: leases[w].slots)
        let holder = leases[w].request.holder
        dropLease(w)
        for k in rel {
            let r = Int(k)
            resources[r].owner = -1
            resources[r].held = false
            resources[r].since = t
            if !resources[r].inInventory {
                retire(r)
            } else if needsReset(r, after: reason) {
                startReset(r, reason: reason.rawValue, lastHolder: holder)
            } else if resources[r].enabled {
                handoff(r, t, &out)
            }
        }
        scratchReleased = rel
    }

    /// A resource removed by reload was released: it disappears.
    mutating func retire(_ r: Int) {
        resources[r].gone = true
        nameToSlot.removeValue(forKey: ExactKey(resources[r].name))
        if resources[r].epoch > 0 { epochStore[resources[r].name] = max(epochStore[resources[r].name] ?? 0, resources[r].epoch) }
    }

    /// `r` just became free (unowned, enabled, in the inventory): the earliest waiter that can
    /// use it reserves it (and is granted if that completes it); otherwise it is free.
    mutating func handoff(_ r: Int, _ t: Tick, _ out: inout [Effect]) {
        var bestSeq = UInt64.max
        var best: Int32 = -1
        let n = resources[r].memberships.count
        for i in 0..<n {
            let s = Int(resources[r].memberships[i].sel)
            if selectors[s].usableWaiterCount == 0 && selectors[s].waiters.count == 0 { continue }
            if let top = earliestUsableWaiter(s), top.seq < bestSeq {
                bestSeq = top.seq
                best = top.slot
            }
        }
        guard best >= 0 else {
            setFree(r)
            return
        }
        let w = Int(best)
        resources[r].owner = best
        resources[r].held = false
        resources[r].since = t
        guard augment(w, r) else {
            // Cannot happen: a waiter listed for the selector can use every resource of the selector.
            resources[r].owner = -1
            setFree(r)
            return
        }
        if isComplete(w) { grant(w, t, &out) } else { updateUsableGroups(w) }
    }

    // MARK: Queue and positions

    mutating func enqueue(_ w: Int) {
        if queue.count >= fenwick.capacity { compactQueue() }
        let qi = queue.count
        queue.append(Int32(w))
        fenwick.add(qi, 1)
        waiterCount += 1
        leases[w].queueIndex = Int32(qi)
    }

    mutating func dequeue(_ w: Int, _ t: Tick) {
        let qi = Int(leases[w].queueIndex)
        guard qi >= 0 else { return }
        queue[qi] = -1
        fenwick.add(qi, -1)
        waiterCount -= 1
        leases[w].queueIndex = -1
        // Waiters behind it moved up.
        if waiterCount > fenwick.prefix(qi) {
            posDirtyFrom = posDirtyFrom < 0 ? qi : min(posDirtyFrom, qi)
            let (next, o) = lastWalk.addingReportingOverflow(Self.positionWalkInterval)
            let due = max(t.nanoseconds, o ? t.nanoseconds : next)
            if due < nextPositionWalk { nextPositionWalk = due }
        }
        if queue.count >= 256 && waiterCount * 4 < queue.count { compactQueue() }
    }

    /// Drops tombstones from the queue array, keeping arrival order.
    mutating func compactQueue() {
        var nq: [Int32] = []
        nq.reserveCapacity(waiterCount)
        var newDirty = -1
        for (i, s) in queue.enumerated() {
            if i == posDirtyFrom { newDirty = nq.count }
            if s >= 0 {
                leases[Int(s)].queueIndex = Int32(nq.count)
                nq.append(s)
            }
        }
        posDirtyFrom = (newDirty >= 0 && newDirty < nq.count) ? newDirty : -1
        queue = nq
        fenwick = Fenwick.build(Array(repeating: true, count: nq.count), capacity: max(64, nq.count * 2))
    }

    /// Position (1-based, whole queue) of waiter `w`.
    func position(_ w: Int) -> Int {
        fenwick.prefix(Int(leases[w].queueIndex) + 1)
    }

    /// Sends due position updates: each waiter whose position changed and whose last update is
    /// at least `positionUpdateInterval` old. Walks the queue from the first changed entry.
    mutating func walkPositions(_ t: Int64, _ out: inout [Effect]) {
        lastWalk = t
        guard posDirtyFrom >= 0 else {
            nextPositionWalk = .max
            return
        }
        var pos = Int32(fenwick.prefix(posDirtyFrom))
        var firstPending = -1
        var minDue = Int64.max
        var i = posDirtyFrom
        while i < queue.count {
            let s = queue[i]
            if s >= 0 {
                pos += 1
                let w = Int(s)
                if leases[w].lastSentPos != pos {
                    let (due, o) = leases[w].lastSentAt.addingReportingOverflow(Self.positionUpdateInterval)
                    let dueAt = o ? Int64.min : due
                    if dueAt <= t {
                        out.append(.positionChanged(leases[w].id, position: Int(pos)))
                        leases[w].lastSentPos = pos
                        leases[w].lastSentAt = t
                    } else {
                        if firstPending < 0 { firstPending = i }
                        minDue = min(minDue, dueAt)
                    }
                }
            }
            i += 1
        }
        posDirtyFrom = firstPending
        nextPositionWalk = firstPending < 0 ? .max : max(minDue, t + Self.positionWalkInterval)
    }
}
