import Dispatch

/// Something with one deadline that its event loop watches (a connection's next timeout).
///
/// Subclasses set `deadline` and call `loop.watchDeadline(self)`; the loop calls
/// `deadlineReached(now:)` on the loop's queue once `now >= deadline`. Moving a deadline later costs
/// nothing: the loop notices when the old entry comes due and files the object again.
open class DeadlineOwner: @unchecked Sendable {
    /// Monotonic nanoseconds; `.max` = nothing to wait for.
    public final var deadline: UInt64 = .max
    /// The deadline of this object's live entry in the loop's heap (`.max` = none).
    final var filedDeadline: UInt64 = .max

    public init() {}

    open func deadlineReached(now: UInt64) {}
}

/// A serial Dispatch queue that runs a share of the connections, with a shared read buffer and
/// one timer for all their deadlines. Everything a connection owns is touched only on its loop.
public final class EventLoop: @unchecked Sendable {
    public let queue: DispatchQueue
    public let index: Int

    /// Reused by every connection of this loop: an idle connection holds no read buffer.
    let readBuffer: UnsafeMutableRawBufferPointer

    private struct Entry {
        var deadline: UInt64
        weak var owner: DeadlineOwner?
    }

    private var heap: [Entry] = []
    private let timer: DispatchSourceTimer
    private var timerArmedFor: UInt64 = .max
    /// Connections by id: the loop owns them until their descriptor is closed.
    var connections: [ObjectIdentifier: Connection] = [:]

    public init(index: Int, label: String = "leasehold.loop") {
        self.index = index
        queue = DispatchQueue(label: "\(label).\(index)")
        readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        timer = DispatchSource.makeTimerSource(queue: queue)
        timer.setEventHandler { [weak self] in self?.fireDueDeadlines() }
        timer.schedule(deadline: .distantFuture, leeway: .milliseconds(5))
        timer.activate()
    }

    deinit {
        timer.cancel()
        readBuffer.deallocate()
    }

    /// Runs `work` on this loop's queue.
    public func execute(_ work: @escaping @Sendable () -> Void) {
        queue.async(execute: work)
    }

    public static func now() -> UInt64 { Posix.monotonicNanoseconds() }

    /// Files `owner.deadline` with the loop's timer. Call on the loop's queue after changing it.
    public func watchDeadline(_ owner: DeadlineOwner) {
        let deadline = owner.deadline
        guard deadline != .max, deadline < owner.filedDeadline else { return }
        owner.filedDeadline = deadline
        push(Entry(deadline: deadline, owner: owner))
        if deadline < timerArmedFor { arm(for: deadline) }
    }

    private func arm(for deadline: UInt64) {
        timerArmedFor = deadline
        let now = EventLoop.now()
        let delay = deadline > now ? deadline - now : 0
        timer.schedule(deadline: .now() + .nanoseconds(Int(clamping: delay)), leeway: .milliseconds(5))
    }

    private func fireDueDeadlines() {
        timerArmedFor = .max
        let now = EventLoop.now()
        while let top = heap.first, top.deadline <= now {
            popTop()
            // Entries superseded by an earlier filing, or whose owner is gone, are skipped.
            guard let owner = top.owner, owner.filedDeadline == top.deadline else { continue }
            owner.filedDeadline = .max
            if owner.deadline <= now {
                owner.deadlineReached(now: now)
            }
            // The owner may have moved its deadline; file it again.
            if owner.deadline != .max, owner.filedDeadline == .max {
                owner.filedDeadline = owner.deadline
                push(Entry(deadline: owner.deadline, owner: owner))
            }
        }
        if let top = heap.first { arm(for: top.deadline) }
    }

    // MARK: binary min-heap on deadline

    private func push(_ entry: Entry) {
        heap.append(entry)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if heap[parent].deadline <= heap[child].deadline { break }
            heap.swapAt(parent, child)
            child = parent
        }
    }

    private func popTop() {
        let last = heap.removeLast()
        guard !heap.isEmpty else { return }
        heap[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < heap.count, heap[left].deadline < heap[smallest].deadline { smallest = left }
            if right < heap.count, heap[right].deadline < heap[smallest].deadline { smallest = right }
            if smallest == parent { break }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}

/// A few event loops, with connections spread across them round-robin.
public final class EventLoopGroup: @unchecked Sendable {
    public let loops: [EventLoop]
    private let lock = DispatchQueue(label: "leasehold.loop-group")
    private nonisolated(unsafe) var nextIndex = 0

    public init(count: Int, label: String = "leasehold.loop") {
        precondition(count > 0, "an event loop group needs at least one loop")
        loops = (0..<count).map { EventLoop(index: $0, label: label) }
        Posix.ignoreSIGPIPE()
    }

    public func next() -> EventLoop {
        let index: Int = lock.sync {
            let index = nextIndex
            nextIndex = (nextIndex + 1) % loops.count
            return index
        }
        return loops[index]
    }
}
