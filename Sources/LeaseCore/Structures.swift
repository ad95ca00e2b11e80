// Small index structures used by the lease table. Internal.

/// A set of integers in `0..<capacity` with O(log64 n) insert, remove and "smallest member".
/// Level 0 holds one bit per member; a bit at level k+1 says "word j of level k is non-zero".
/// All levels live in one flat array; the top level is a single word.
struct HierBits: Sendable {
    private(set) var words: [UInt64]
    private var starts: [Int]   // start of each level in `words`
    private(set) var count: Int = 0
    let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
        var starts: [Int] = [0]
        var size = max(1, (capacity + 63) >> 6)
        var total = size
        while size > 1 {
            size = (size + 63) >> 6
            starts.append(total)
            total += size
        }
        self.starts = starts
        self.words = Array(repeating: 0, count: total)
    }

    @inline(__always)
    func contains(_ i: Int) -> Bool {
        words[i >> 6] & (1 << UInt64(i & 63)) != 0
    }

    mutating func insert(_ i: Int) {
        var idx = i
        for l in 0..<starts.count {
            let w = starts[l] + (idx >> 6)
            let bit: UInt64 = 1 << UInt64(idx & 63)
            let old = words[w]
            if old & bit != 0 { return }  // already set at this level: upper levels are too
            words[w] = old | bit
            if l == 0 { count += 1 }
            if old != 0 { return }        // word was non-zero: upper levels already say so
            idx >>= 6
        }
    }

    mutating func remove(_ i: Int) {
        var idx = i
        for l in 0..<starts.count {
            let w = starts[l] + (idx >> 6)
            let bit: UInt64 = 1 << UInt64(idx & 63)
            let old = words[w]
            if old & bit == 0 { return }
            let new = old & ~bit
            words[w] = new
            if l == 0 { count -= 1 }
            if new != 0 { return }
            idx >>= 6
        }
    }

    /// The smallest member, if any.
    func first() -> Int? {
        if count == 0 { return nil }
        var idx = 0
        var l = starts.count - 1
        while true {
            let w = words[starts[l] + idx]
            idx = (idx << 6) | w.trailingZeroBitCount
            if l == 0 { return idx }
            l -= 1
        }
    }

    mutating func removeAll() {
        for i in words.indices { words[i] = 0 }
        count = 0
    }
}

/// Fenwick tree of 0/1 counts over queue slots: prefix counts give queue positions in O(log n).
struct Fenwick: Sendable {
    private var tree: [Int32]   // 1-based
    init(capacity: Int) { tree = Array(repeating: 0, count: capacity + 1) }
    var capacity: Int { tree.count - 1 }

    mutating func add(_ i: Int, _ delta: Int32) {
        var k = i + 1
        while k < tree.count {
            tree[k] &+= delta
            k += k & -k
        }
    }

    /// Sum over `0..<i`.
    func prefix(_ i: Int) -> Int {
        var k = min(i, tree.count - 1)
        var s: Int32 = 0
        while k > 0 {
            s &+= tree[k]
            k -= k & -k
        }
        return Int(s)
    }

    /// Builds from 0/1 flags in O(n).
    static func build(_ flags: [Bool], capacity: Int) -> Fenwick {
        var f = Fenwick(capacity: max(capacity, flags.count))
        for (i, b) in flags.enumerated() where b { f.tree[i + 1] += 1 }
        var k = 1
        while k < f.tree.count {
            let p = k + (k & -k)
            if p < f.tree.count { f.tree[p] += f.tree[k] }
            k += 1
        }
        return f
    }
}

/// Binary min-heap with a caller-supplied order. Entries may go stale; callers validate the top.
protocol HeapOrdered: Sendable {
    func before(_ other: Self) -> Bool
}

struct MinHeap<Element: HeapOrdered>: Sendable {
    var items: [Element] = []

    init() {}

    @inline(__always)
    private func less(_ a: Element, _ b: Element) -> Bool { a.before(b) }

    var count: Int { items.count }
    var top: Element? { items.first }

    mutating func push(_ e: Element) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) >> 1
            if !less(items[i], items[p]) { break }
            items.swapAt(i, p)
            i = p
        }
    }

    @discardableResult
    mutating func pop() -> Element? {
        guard let first = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            siftDown(0)
        }
        return first
    }

    private mutating func siftDown(_ start: Int) {
        var i = start
        let n = items.count
        while true {
            let l = 2 * i + 1
            if l >= n { return }
            var m = l
            if l + 1 < n && less(items[l + 1], items[l]) { m = l + 1 }
            if !less(items[m], items[i]) { return }
            items.swapAt(i, m)
            i = m
        }
    }

    /// Keeps only entries passing `keep`, then re-heapifies in O(n).
    mutating func compact(_ keep: (Element) -> Bool) {
        items = items.filter(keep)
        if items.count > 1 {
            var i = items.count / 2 - 1
            while i >= 0 { siftDown(i); i -= 1 }
        }
    }
}

/// Entry of a selector's heap of waiters that can use its resources, ordered by arrival.
struct WaiterRef: HeapOrdered {
    var seq: UInt64
    var slot: Int32
    @inline(__always) func before(_ o: WaiterRef) -> Bool { seq < o.seq }
}

/// Entry of the wait-deadline heap, ordered by (deadline, arrival).
struct DeadlineRef: HeapOrdered {
    var deadline: Int64
    var seq: UInt64
    var slot: Int32
    @inline(__always) func before(_ o: DeadlineRef) -> Bool {
        deadline != o.deadline ? deadline < o.deadline : seq < o.seq
    }
}
