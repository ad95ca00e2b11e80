import Dispatch
import Transport

/// A clock that moves only when `advance(by:)` is called. Timers that come due run on their
/// queues before `advance` returns, in deadline order, each seeing `now()` at its own deadline.
///
/// Call `advance` from outside every queue its timers run on (a test's task or thread).
public final class ManualClock: LoopClock, @unchecked Sendable {
    private struct State {
        var now: UInt64
        var timers: [ObjectIdentifier: Weak] = [:]
    }
    private struct Weak { weak var timer: ManualTimer? }
    private let state: Locked<State>

    /// Starts at an arbitrary, large time, as a monotonic clock does, so nothing treats 0 as "never".
    public init(startingAt start: UInt64 = 1_000_000_000_000) {
        state = Locked(State(now: start))
    }

    public func now() -> UInt64 { state.withLock { $0.now } }

    public func makeTimer(queue: DispatchQueue, handler: @escaping @Sendable () -> Void) -> LoopTimer {
        let timer = ManualTimer(clock: self, queue: queue, handler: handler)
        state.withLock { $0.timers[ObjectIdentifier(timer)] = Weak(timer: timer) }
        return timer
    }

    /// Moves the clock forward by `duration`, running every timer that comes due on the way.
    public func advance(by duration: Duration) {
        let target = now().addingSaturated(duration)
        while true {
            // The earliest timer due by `target`, if any: the clock stops at its deadline first.
            let due: (ManualTimer, UInt64)? = state.withLock { state in
                state.timers = state.timers.filter { $0.value.timer != nil }
                let armed = state.timers.values.compactMap { entry in entry.timer.map { ($0, $0.deadline) } }
                guard let first = armed.filter({ $0.1 <= target }).min(by: { $0.1 < $1.1 }) else {
                    state.now = max(state.now, target)
                    return nil
                }
                state.now = max(state.now, first.1)
                return first
            }
            guard let (timer, deadline) = due else { return }
            timer.fire(ifStillDueAt: deadline)
        }
    }
}

private final class ManualTimer: LoopTimer, @unchecked Sendable {
    private unowned let clock: ManualClock
    private let queue: DispatchQueue
    private let handler: @Sendable () -> Void
    private let armed = Locked<UInt64>(.max)

    init(clock: ManualClock, queue: DispatchQueue, handler: @escaping @Sendable () -> Void) {
        self.clock = clock
        self.queue = queue
        self.handler = handler
    }

    var deadline: UInt64 { armed.withLock { $0 } }

    func schedule(at deadline: UInt64) {
        armed.withLock { $0 = deadline }
        // Already due: run soon, as a Dispatch timer with a past deadline does.
        if deadline <= clock.now() {
            queue.async { [self] in fire(ifStillDueAt: deadline, onQueue: true) }
        }
    }

    func cancel() { armed.withLock { $0 = .max } }

    /// Runs the handler on the timer's queue and waits for it, unless the timer moved meanwhile.
    func fire(ifStillDueAt deadline: UInt64, onQueue: Bool = false) {
        let run = { [self] in
            let stillDue = armed.withLock { armed -> Bool in
                guard armed == deadline, armed <= clock.now() else { return false }
                armed = .max
                return true
            }
            if stillDue { handler() }
        }
        if onQueue { run() } else { queue.sync(execute: run) }
    }
}

extension ManualClock {
    /// Runs `body` while the clock moves a second ahead every 10 ms of real time, so that timeouts
    /// a test does not care about (close handshakes, drains during shutdown) run out as they would
    /// in real time.
    public func passingTime(during body: () async -> Void) async {
        let ticker = Task.detached { [self] in
            while !Task.isCancelled {
                advance(by: .seconds(1))
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
        await body()
        ticker.cancel()
    }
}
