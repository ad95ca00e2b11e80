import CPosix
#if canImport(Glibc)
import Glibc
#endif

/// Background work on a thread of its own at a lower priority than the event loops and the
/// lease queue (nice values are per thread on Linux, so a Dispatch worker, which goes back to
/// the pool, cannot be lowered and raised again).
enum BackgroundThread {
    private final class Work {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// Runs `body` on a new detached thread at least `nice` (the thread ends with `body`); false
    /// when there is no thread to be had.
    static func run(nice: Int32, _ body: @escaping () -> Void) -> Bool {
        let work = Unmanaged.passRetained(Work {
            let current = leasehold_thread_nice()
            if current > -1000, current < nice { _ = leasehold_set_thread_nice(nice) }
            body()
        }).toOpaque()
        var thread = pthread_t()
        let started = pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            Unmanaged<Work>.fromOpaque(raw).takeRetainedValue().body()
            return nil
        }, work)
        guard started == 0 else {
            Unmanaged<Work>.fromOpaque(work).release()
            return false
        }
        pthread_detach(thread)
        return true
    }
}
