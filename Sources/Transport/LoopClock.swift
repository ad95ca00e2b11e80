import Dispatch

/// The time that event loops, and the timers of everything built on them, run by.
///
/// Production uses `LoopClock.system` (the monotonic clock and Dispatch timers). Tests pass a
/// `ManualClock`, which stands still until the test moves it, so a test of timeouts, pings or dead
/// peers says exactly what happens when, whatever the load on the machine.
public protocol LoopClock: AnyObject, Sendable {
    /// Monotonic nanoseconds.
    func now() -> UInt64
    /// A one-shot timer that runs `handler` on `queue` once the clock reaches the deadline given to
    /// `schedule(at:)`. Nothing runs until the first `schedule`.
    func makeTimer(queue: DispatchQueue, handler: @escaping @Sendable () -> Void) -> LoopTimer
}

public protocol LoopTimer: AnyObject, Sendable {
    /// (Re)arms the timer for `deadline` (monotonic nanoseconds of its clock); `.max` disarms it.
    func schedule(at deadline: UInt64)
    func cancel()
}

extension LoopClock where Self == SystemClock {
    public static var system: SystemClock { SystemClock.shared }
}

extension LoopClock {
    /// `now()` plus `duration`, saturating instead of wrapping (a negative duration is now).
    public func deadline(after duration: Duration) -> UInt64 {
        now().addingSaturated(duration)
    }
}

extension UInt64 {
    /// `self + duration` in nanoseconds, clamped to `0...UInt64.max` instead of trapping.
    public func addingSaturated(_ duration: Duration) -> UInt64 {
        let nanoseconds = duration.saturatedNanoseconds
        if nanoseconds <= 0 { return self }
        let (sum, overflow) = addingReportingOverflow(UInt64(nanoseconds))
        return overflow ? .max : sum
    }
}

extension Duration {
    /// Whole nanoseconds, clamped to Int64's range instead of wrapping.
    public var saturatedNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        let (sum, overflowAgain) = scaled.addingReportingOverflow(attoseconds / 1_000_000_000)
        if overflowAgain { return seconds < 0 ? .min : .max }
        return sum
    }
}

/// The monotonic clock, with Dispatch timers.
public final class SystemClock: LoopClock {
    static let shared = SystemClock()

    public func now() -> UInt64 { Posix.monotonicNanoseconds() }

    public func makeTimer(queue: DispatchQueue, handler: @escaping @Sendable () -> Void) -> LoopTimer {
        DispatchLoopTimer(queue: queue, handler: handler)
    }
}

private final class DispatchLoopTimer: LoopTimer, @unchecked Sendable {
    /// Deadlines are rounded up to a tick of this length. They are timeouts of a second or more,
    /// and a loop's heap keeps the entries of connections already closed until they come due:
    /// under churn, a timer armed for each of them would fire (and wake Dispatch's manager thread
    /// to re-arm it) for every closed connection.
    static let tick: UInt64 = 4_000_000

    private let source: DispatchSourceTimer
    /// The tick the source is set for; `.max` = none (never set, or fired since).
    private var scheduledTick: UInt64 = .max

    init(queue: DispatchQueue, handler: @escaping @Sendable () -> Void) {
        source = DispatchSource.makeTimerSource(queue: queue)
        source.schedule(deadline: .distantFuture)
        source.setEventHandler { [weak self] in
            self?.scheduledTick = .max
            handler()
        }
        source.activate()
    }

    func schedule(at deadline: UInt64) {
        guard deadline != .max else {
            scheduledTick = .max
            source.schedule(deadline: .distantFuture)
            return
        }
        let (roundedUp, overflow) = deadline.addingReportingOverflow(Self.tick - 1)
        let tick = overflow ? deadline : roundedUp / Self.tick * Self.tick
        guard tick != scheduledTick else { return }
        scheduledTick = tick
        let now = Posix.monotonicNanoseconds()
        let delay = tick > now ? tick - now : 0
        source.schedule(deadline: .now() + .nanoseconds(Int(clamping: delay)), leeway: .milliseconds(1))
    }

    func cancel() { source.cancel() }
}
