#if canImport(Glibc)
import Glibc
#endif

/// A value behind a pthread mutex. Like `Synchronization.Mutex`, but ThreadSanitizer sees its
/// locking (Mutex on Linux waits with raw futex calls that TSan does not intercept, so every
/// access through it is reported as a race under scripts/sanitize thread).
public final class Locked<Value>: @unchecked Sendable {
    private var value: Value
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    public init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
