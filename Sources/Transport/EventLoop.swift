import CPosix
import Dispatch
#if canImport(Glibc)
import Glibc
#endif

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

/// A descriptor watched by an event loop's epoll instance.
protocol EpollWatcher: AnyObject {
    /// Readiness for the descriptor this watcher registered (`EPOLLIN`, `EPOLLOUT`, `EPOLLERR`…).
    func epollEvents(_ events: UInt32)
}

/// A serial Dispatch queue that runs a share of the connections, with a shared read buffer and
/// one timer for all their deadlines. Everything a connection owns is touched only on its loop.
///
/// Readiness comes from one epoll instance per loop, watched by a single Dispatch read source:
/// when any of the loop's descriptors is ready, the loop's queue drains the epoll instance itself
/// (as redis's `ae` does). A busy loop handles many connections' events per wake-up, and no
/// connection has a Dispatch source of its own (those cost a thread hop per event, and memory).
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
    /// What this loop's deadlines are measured by.
    public let clock: LoopClock
    private var timer: LoopTimer?
    private var timerArmedFor: UInt64 = .max
    /// Bytes read from open connections of this loop and handed to their protocol, ever.
    var bytesRead: UInt64 = 0
    /// Connections by id: the loop owns them until their descriptor is closed.
    var connections: [ObjectIdentifier: Connection] = [:]

    private let epoll: Int32
    private var epollSource: DispatchSourceRead?
    /// Registrations by token. A token is never reused, so an event still in a batch for a
    /// descriptor that was closed (and its number reused) finds nothing.
    private var watchers: [UInt64: EpollWatcher] = [:]
    private var nextToken: UInt64 = 1
    /// The loop polls its epoll instance itself (the source is suspended) while it finds events.
    private(set) var pollingItself = false
    /// When the loop's current run of polls that found nothing began (monotonic ns; 0 = none).
    private var dryPollsSince: UInt64 = 0
    /// How long the loop keeps polling after its last event before it hands the wait back to its
    /// source. Under load the next event is rarely further away, and handing over costs a
    /// wake-up of Dispatch's manager thread and of this queue's worker; idle, it costs this much
    /// CPU once per burst.
    private static let dryPollingNanoseconds: UInt64 = 50_000
    private let events: UnsafeMutablePointer<epoll_event>
    private static let eventsPerBatch = 256

    public init(index: Int, label: String = "leasehold.loop", clock: LoopClock = .system) {
        self.index = index
        self.clock = clock
        queue = DispatchQueue(label: "\(label).\(index)")
        readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        events = .allocate(capacity: Self.eventsPerBatch)
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        precondition(epoll >= 0, "epoll_create1 failed: errno \(errno)")
        timer = clock.makeTimer(queue: queue) { [weak self] in self?.fireDueDeadlines() }
        let source = DispatchSource.makeReadSource(fileDescriptor: epoll, queue: queue)
        source.setEventHandler { [unowned self] in readinessReported() }
        epollSource = source
        source.activate()
    }

    deinit {
        timer?.cancel()
        if pollingItself { epollSource?.resume() }
        epollSource?.cancel()
        readBuffer.deallocate()
        events.deallocate()
        // The source may still hold the descriptor: close it once the source is gone.
        let epoll = self.epoll
        queue.async { Glibc.close(epoll) }
    }

    // MARK: readiness

    /// Watches `fd` for `events` (level-triggered); returns the registration's token, or nil with
    /// errno set. Call on the loop's queue.
    func watch(_ fd: Int32, events: UInt32, by watcher: EpollWatcher) -> UInt64? {
        assertOnLoop()
        let token = nextToken
        nextToken += 1
        guard leasehold_epoll_control(epoll, EPOLL_CTL_ADD, fd, events, token) == 0 else { return nil }
        watchers[token] = watcher
        return token
    }

    /// Changes what a registration waits for.
    func rewatch(_ fd: Int32, events: UInt32, token: UInt64) {
        assertOnLoop()
        _ = leasehold_epoll_control(epoll, EPOLL_CTL_MOD, fd, events, token)
    }

    /// Ends a registration; call before the descriptor is closed.
    func unwatch(_ fd: Int32, token: UInt64) {
        assertOnLoop()
        _ = leasehold_epoll_control(epoll, EPOLL_CTL_DEL, fd, 0, token)
        watchers[token] = nil
    }

    /// The source saw readiness. From here the loop polls by itself, turn after turn, for as long
    /// as it finds events and `dryPollingNanoseconds` after the last: every return from a Dispatch
    /// source's handler costs a wake-up of Dispatch's manager thread to re-arm it, which under load
    /// would be most of the server's context switches. Then the source takes over again.
    private func readinessReported() {
        guard !pollingItself else { return }
        pollingItself = true
        epollSource?.suspend()
        pollTurn()
    }

    private func pollTurn() {
        if drainReadiness() {
            dryPollsSince = 0
        } else {
            // Real time, not the loop clock: this bounds CPU spent, and a test's clock stands still.
            let now = Posix.monotonicNanoseconds()
            if dryPollsSince == 0 { dryPollsSince = now }
            if now - dryPollsSince >= Self.dryPollingNanoseconds {
                dryPollsSince = 0
                pollingItself = false
                epollSource?.resume()
                return
            }
        }
        // After the work this turn queued (lease decisions, closes), poll again. The loop stays
        // alive until it has handed its wait back (it may be let go of meanwhile).
        queue.async { [self] in pollTurn() }
    }

    /// Handles ready descriptors, a bounded number of batches a turn so that timers and queued
    /// work get their turn. True when there were any.
    private func drainReadiness() -> Bool {
        var found = false
        for _ in 0..<4 {
            let count = Int(epoll_wait(epoll, events, Int32(Self.eventsPerBatch), 0))
            guard count > 0 else { return found }
            found = true
            for index in 0..<count {
                let event = events[index]
                watchers[event.data.u64]?.epollEvents(event.events)
            }
            guard count == Self.eventsPerBatch else { return found }
        }
        return found
    }

    /// Runs `work` on this loop's queue.
    public func execute(_ work: @escaping @Sendable () -> Void) {
        queue.async(execute: work)
    }

    /// Runs `body` for each of `items` on this loop, `perTurn` at a time, each batch queued behind
    /// the loop's other work: a long list holds up the loop's sockets (and a grant) for one batch.
    public func forEach<Element: Sendable>(_ items: ArraySlice<Element>, perTurn: Int,
                                           _ body: @escaping @Sendable (Element) -> Void) {
        execute { [self] in
            for item in items.prefix(perTurn) { body(item) }
            let rest = items.dropFirst(perTurn)
            if !rest.isEmpty { forEach(rest, perTurn: perTurn, body) }
        }
    }

    /// The loop clock's time, in monotonic nanoseconds.
    public func now() -> UInt64 { clock.now() }

    /// Asserts (in debug builds) that the caller runs on this loop's queue.
    @inline(__always)
    func assertOnLoop() {
        #if DEBUG
        dispatchPrecondition(condition: .onQueue(queue))
        #endif
    }

    /// Files `owner.deadline` with the loop's timer. Call on the loop's queue after changing it.
    public func watchDeadline(_ owner: DeadlineOwner) {
        assertOnLoop()
        let deadline = owner.deadline
        guard deadline != .max, deadline < owner.filedDeadline else { return }
        owner.filedDeadline = deadline
        push(Entry(deadline: deadline, owner: owner))
        if deadline < timerArmedFor { arm(for: deadline) }
    }

    private func arm(for deadline: UInt64) {
        timerArmedFor = deadline
        timer?.schedule(at: deadline)
    }

    private func fireDueDeadlines() {
        timerArmedFor = .max
        let now = clock.now()
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

    public init(count: Int, label: String = "leasehold.loop", clock: LoopClock = .system) {
        precondition(count > 0, "an event loop group needs at least one loop")
        loops = (0..<count).map { EventLoop(index: $0, label: label, clock: clock) }
    }

    public var clock: LoopClock { loops[0].clock }

    /// Bytes that this group's connections have read and processed. Once it has grown, whatever
    /// those bytes caused on their loop has happened (a test's proof that a peer's pong arrived).
    /// Not on one of the group's queues.
    public var bytesRead: UInt64 {
        loops.reduce(0) { sum, loop in sum &+ loop.queue.sync { loop.bytesRead } }
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
