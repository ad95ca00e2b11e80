import Dispatch
import LeaseProtocol
#if canImport(Glibc)
import Glibc
#endif

/// The audit journal: one JSON object per line for every grant (with the holder's `meta`), every
/// end of a lease, and every admin action. Written on its own queue, so file I/O never runs on the
/// lease service's queue; a stalled disk drops lines (counted) instead of growing memory.
final class AuditJournal: @unchecked Sendable {
    private let queue = DispatchQueue(label: "leasehold.audit")
    private let fd: Int32
    private let clock: ServerClock
    private let pendingLimit = 10_000
    private var pending = 0   // guarded by `lock`
    private var dropped = 0   // guarded by `lock`
    private let lock = DispatchQueue(label: "leasehold.audit.count")

    init(path: String, clock: ServerClock) throws(StartupError) {
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw StartupError(message: "cannot open --audit-file \(path): \(String(cString: strerror(errno)))")
        }
        self.clock = clock
    }

    deinit { close(fd) }

    /// Appends `{"time": …, fields…}`. Callable from any queue.
    func record(_ fields: [(String, JSONValue)]) {
        let admitted: Bool = lock.sync {
            guard pending < pendingLimit else { dropped += 1; return false }
            pending += 1
            return true
        }
        guard admitted else { return }
        let line = JSONValue.object([("time", .string(clock.iso8601(clock.now())))] + fields).serialized() + "\n"
        queue.async { [self] in
            var text = line
            text.withUTF8 { buffer in
                var offset = 0
                while offset < buffer.count {
                    guard let base = buffer.baseAddress else { break }
                    let written = write(fd, base + offset, buffer.count - offset)
                    if written < 0 { if errno == EINTR { continue }; break }
                    offset += written
                }
            }
            let lost: Int = lock.sync {
                pending -= 1
                defer { dropped = 0 }
                return dropped
            }
            if lost > 0 {
                var notice = JSONValue.object([("time", .string(clock.iso8601(clock.now()))), ("event", .string("journal_dropped")), ("lines", .int(Int64(lost)))]).serialized() + "\n"
                notice.withUTF8 { buffer in _ = write(fd, buffer.baseAddress, buffer.count) }
            }
        }
    }
}
