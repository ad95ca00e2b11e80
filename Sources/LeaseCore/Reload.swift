extension LeaseTable {
    /// Puts a new inventory in force, or changes nothing if it is invalid.
    ///
    /// - Added resources become available (they go to the waiters that can use them).
    /// - A removed resource that is held stays with its lease (shown after the inventory in
    ///   snapshots, `inInventory == false`) and disappears on release; a removed free, reserved
    ///   or disabled one disappears at once (taken back from its waiter).
    /// - Changed type, labels or attributes apply to new grants and to matching for waiters.
    /// - Disabled names stay disabled; epochs are kept by name (also across removal).
    /// - Waiters that the new inventory cannot satisfy get `.failed(…, .unsatisfiable)` (in
    ///   arrival order); then every waiter, in arrival order, takes the free resources it can now
    ///   use (and reclaims usable ones reserved by later waiters), and the ones that became
    ///   complete get `.granted`.
    ///
    /// Returns the problems of an invalid inventory (nothing changed), or [] when applied.
    public mutating func reload(_ inventory: Inventory, now: Tick, into out: inout [Effect]) -> [InventoryProblem] {
        let problems = inventory.problems()
        guard problems.isEmpty else { return problems }
        let t = begin(now, &out)
        defer { finish() }
        inventoryGeneration += 1

        let remap = replaceResources(inventory, t)
        remapLeaseSlots(remap)
        rebuildSelectors()
        let waiters = reresolveWaiters(t, &out)
        // Free sets from scratch.
        for s in selectors.indices where selectors[s].live { selectors[s].free.removeAll() }
        for r in 0..<inventory.resources.count where resources[r].isFree { setFree(r) }
        // Allocation again, in arrival order.
        rebalance(waiters.filter { leases[$0].alive && leases[$0].waiting }, t, &out)
        return []
    }

    /// New resource records in inventory order, carrying state by name; a removed resource that
    /// is held stays, after them, until released. Returns old slot → new slot (-1: gone).
    private mutating func replaceResources(_ inventory: Inventory, _ t: Tick) -> [Int32] {
        var newRes: [ResourceRec] = []
        newRes.reserveCapacity(inventory.resources.count)
        var newNames: [ExactKey: Int32] = [:]
        newNames.reserveCapacity(inventory.resources.count)
        var remap = [Int32](repeating: -1, count: resources.count)
        for (i, spec) in inventory.resources.enumerated() {
            var rec = ResourceRec(name: spec.name, type: spec.type, labels: spec.labels,
                          attributes: spec.attributes, epoch: 0, since: t)
            rec.maxHold = spec.maxHold.map { max(0, $0.saturatingNanoseconds) } ?? .max
            rec.reset = spec.reset
            if let oldSlot = nameToSlot[ExactKey(spec.name)], !resources[Int(oldSlot)].gone {
                let o = resources[Int(oldSlot)]
                rec.epoch = o.epoch
                rec.disabled = o.disabled
                rec.owner = o.owner
                rec.held = o.held
                rec.since = o.since
                // A reset that runs goes on; its outcome applies when it ends.
                rec.resetting = o.resetting
                remap[Int(oldSlot)] = Int32(i)
            } else {
                rec.epoch = epochStore[spec.name] ?? 0
            }
            newNames[ExactKey(spec.name)] = Int32(i)
            newRes.append(rec)
        }
        for oldSlot in resources.indices where remap[oldSlot] < 0 && !resources[oldSlot].gone {
            var o = resources[oldSlot]
            if o.owner >= 0 && o.held {
                o.inInventory = false
                o.memberships = []
                o.nameSel = -1
                remap[oldSlot] = Int32(newRes.count)
                newNames[ExactKey(o.name)] = Int32(newRes.count)
                newRes.append(o)
            } else if o.epoch > 0 {
                epochStore[o.name] = max(epochStore[o.name] ?? 0, o.epoch)
            }
        }
        resources = newRes
        nameToSlot = newNames
        typeMembers = [:]
        for i in 0..<inventory.resources.count {
            typeMembers[ExactKey(resources[i].type), default: []].append(Int32(i))
        }
        return remap
    }

    /// Lease slots follow their resources (reserved ones of removed resources become -1).
    private mutating func remapLeaseSlots(_ remap: [Int32]) {
        for w in leases.indices where leases[w].alive {
            for k in leases[w].slots.indices where leases[w].slots[k] >= 0 {
                leases[w].slots[k] = remap[Int(leases[w].slots[k])]
            }
            leases[w].usableGroups = 0
            leases[w].inWaiterHeaps = 0
        }
    }

    /// Selectors that waiters use are recomputed in place; idle ones are dropped.
    private mutating func rebuildSelectors() {
        selectorIndex.removeAll(keepingCapacity: true)
        satisfiableCache.removeAll()
        idleTypeSelectors = 0
        for s in selectors.indices where selectors[s].live {
            if selectors[s].refs == 0 {
                selectors[s] = Selector(key: .name(""), members: [], free: HierBits(capacity: 0), live: false)
                freeSelectorSlots.append(Int32(s))
                continue
            }
            let members: [Int32]
            switch selectors[s].key {
            case .name(let n):
                if let r = nameToSlot[ExactKey(n)], resources[Int(r)].inInventory {
                    members = [r]
                    resources[Int(r)].nameSel = Int32(s)
                } else {
                    members = []
                }
            case .type(let type, let flat):
                members = (typeMembers[ExactKey(type)] ?? []).filter { Self.matches(resources[Int($0)].labels, flat) }
                selectorIndex[selectors[s].key] = Int32(s)
            }
            selectors[s].members = members
            selectors[s].free = HierBits(capacity: members.count)
            selectors[s].waiters = MinHeap()
            selectors[s].usableWaiterCount = 0
            for (pos, r) in members.enumerated() {
                resources[Int(r)].memberships.append(Membership(sel: Int32(s), pos: Int32(pos)))
            }
        }
    }

    /// Waiters in arrival order are resolved against the new inventory and their matchings
    /// rebuilt; the ones it cannot satisfy fail. Returns the waiters as they were queued.
    private mutating func reresolveWaiters(_ t: Tick, _ out: inout [Effect]) -> [Int] {
        let waiters = queue.filter { $0 >= 0 }.map { Int($0) }
        var failures: [(Int, String)] = []
        for w in waiters {
            let message = resolve(leases[w].request)
            releaseSelectorRefs(w)
            var reserved: [Int32] = []
            for k in leases[w].slots where k >= 0 { reserved.append(k) }
            if let m = message {
                for k in reserved { unown(Int(k), t) }
                leases[w].slots = []
                failures.append((w, m))
                continue
            }
            var total: Int32 = 0
            var anyOverlap = false
            for g in scratchResolved {
                total += g.count
                if g.overlap != 0 { anyOverlap = true }
            }
            leases[w].groups = scratchResolved
            leases[w].slots = Array(repeating: -1, count: Int(total))
            leases[w].anyOverlap = anyOverlap
            leases[w].holdsSelectorRefs = true
            for k in reserved where !augment(w, Int(k)) { unown(Int(k), t) }
        }
        for (w, m) in failures {
            out.append(.failed(leases[w].id, .unsatisfiable(m), facts(w)))
            dequeue(w, t)
            if leases[w].deadline != .max { deadlineLive -= 1 }
            dropLease(w)
        }
        return waiters
    }

    /// A reserved resource taken back by reload.
    private mutating func unown(_ r: Int, _ t: Tick) {
        resources[r].owner = -1
        resources[r].held = false
        resources[r].since = t
    }

    /// `reload(_:now:into:)` returning its effects or its problems.
    public mutating func reload(_ inventory: Inventory, now: Tick) -> ReloadResult {
        var out: [Effect] = []
        let problems = reload(inventory, now: now, into: &out)
        return problems.isEmpty ? .applied(out) : .invalid(problems)
    }
}
