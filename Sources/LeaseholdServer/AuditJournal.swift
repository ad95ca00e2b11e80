import Dispatch
import Transport
import LeaseProtocol
#if canImport(Glibc)
import Glibc
#endif

/// The audit journal: one JSON object per line for every grant (with the holder's `meta`), every
/// end of a lease, every admin action, and the server's start and stop.
///
/// A line is complete or absent: lines are appended whole, in batches (one `write` and one
/// `fdatasync` per batch, at most every `syncInterval`, so a crash loses at most the lines of the
/// last interval); a write that fails part-way is cut back off the file; a torn last line left by
/// a crash is cut off when the journal opens (readers skip one too). Past `maxBytes` the file is
/// rotated (`audit.jsonl` → `audit.jsonl.1` → … up to `keep` old files). Written on its own
/// queue, so file I/O never runs on the lease service's queue; a stalled disk drops lines
/// (counted, and a `journal_dropped` line says how many) instead of growing memory.
final class AuditJournal: @unchecked Sendable {
    struct Settings: Sendable {
        /// Rotate once the file would grow past this; 0: never.
        var maxBytes: Int64 = 256 << 20
        /// Rotated files kept besides the current one.
        var keep = 4
        /// The longest a recorded line waits to be durable.
        var syncInterval: Duration = .milliseconds(100)
        /// Bytes waiting to be written at most; past it lines are dropped (and counted).
        var pendingLimit = 16 << 20
    }

    let path: String
    let settings: Settings
    private let queue = DispatchQueue(label: "leasehold.audit")
    private let clock: ServerClock

    private struct Pending {
        var bytes: [UInt8] = []
        var dropped = 0
        var flushScheduled = false
        /// Callbacks waiting for everything recorded before them to be durable.
        var waiters: [@Sendable () -> Void] = []
    }
    private let pending = Locked(Pending())

    /// The open file and its size, and which files exist: the writer's (on `queue`), read by
    /// `openForReading` under the same lock so a rotation never happens half-way through it.
    private struct FileState {
        var fd: Int32
        var size: Int64
    }
    private let file: Locked<FileState>
    private var lastSync: DispatchTime = .init(uptimeNanoseconds: 0)   // on `queue`
    /// Called (on the journal's queue) after each rotation.
    private let rotationHandler = Locked<(@Sendable () -> Void)?>(nil)

    init(path: String, clock: ServerClock, settings: Settings = Settings()) throws(StartupError) {
        self.path = path
        self.clock = clock
        self.settings = settings
        let fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw StartupError(message: "cannot open audit journal \(path): \(String(cString: strerror(errno)))")
        }
        let size: Int64
        do {
            size = try Self.repairTornTail(fd)
        } catch {
            close(fd)
            throw StartupError(message: "cannot repair audit journal \(path): \(error.message)")
        }
        file = Locked(FileState(fd: fd, size: size))
    }

    deinit {
        file.withLock { state in
            _ = fdatasync(state.fd)
            close(state.fd)
        }
    }

    /// Cuts a last line without its newline (a write a crash interrupted) off the file; returns
    /// the size that is left.
    static func repairTornTail(_ fd: Int32) throws(StartupError) -> Int64 {
        let size = lseek(fd, 0, SEEK_END)
        guard size >= 0 else { throw StartupError(message: String(cString: strerror(errno))) }
        guard size > 0 else { return 0 }
        var end = Int64(size)
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while end > 0 {
            let start = max(0, end - Int64(chunk.count))
            let count = Int(end - start)
            let got = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(start)) }
            guard got == count else { throw StartupError(message: "short read while checking the last line") }
            if let newline = chunk[0..<count].lastIndex(of: UInt8(ascii: "\n")) {
                let keep = start + Int64(newline) + 1
                if keep == Int64(size) { return keep }
                end = keep
                break
            }
            end = start
        }
        guard ftruncate(fd, off_t(end)) == 0, fdatasync(fd) == 0 else {
            throw StartupError(message: String(cString: strerror(errno)))
        }
        return end
    }

    /// Appends `{"time": …, fields…}`. Callable from any queue; durable within `syncInterval`.
    func record(_ fields: [(String, JSONValue)]) {
        var line: [UInt8] = []
        JSONValue.object([("time", .string(clock.iso8601Precise(clock.now())))] + fields).write(to: &line)
        line.append(UInt8(ascii: "\n"))
        let schedule: Bool = pending.withLock { state in
            guard state.bytes.count + line.count <= settings.pendingLimit else {
                state.dropped += 1
                return false
            }
            state.bytes += line
            guard !state.flushScheduled else { return false }
            state.flushScheduled = true
            return true
        }
        if schedule { scheduleFlush() }
    }

    /// Calls `handler` after each rotation (the usage summaries of the file just closed are
    /// finished then).
    func onRotation(_ handler: @escaping @Sendable () -> Void) {
        rotationHandler.withLock { $0 = handler }
    }

    /// Calls `completion` (on the journal's queue) once every line recorded before is durable.
    func whenDurable(_ completion: @escaping @Sendable () -> Void) {
        let schedule: Bool = pending.withLock { state in
            state.waiters.append(completion)
            guard !state.flushScheduled else { return false }
            state.flushScheduled = true
            return true
        }
        if schedule { queue.async { [self] in flush() } }
    }

    /// Writes at once when the last sync is `syncInterval` old, else when it will be: a burst of
    /// lines becomes one write and one sync.
    private func scheduleFlush() {
        queue.async { [self] in
            let due = lastSync + .nanoseconds(Int(settings.syncInterval.saturatedNanoseconds))
            if DispatchTime.now() >= due { flush() } else { queue.asyncAfter(deadline: due) { [self] in flush() } }
        }
    }

    /// On `queue`.
    private func flush() {
        var (bytes, dropped, waiters) = pending.withLock { state in
            defer {
                state.bytes = []
                state.dropped = 0
                state.waiters = []
                state.flushScheduled = false
            }
            return (state.bytes, state.dropped, state.waiters)
        }
        if dropped > 0 {
            JSONValue.object([("time", .string(clock.iso8601Precise(clock.now()))), ("event", .string("journal_dropped")),
                              ("lines", .int(Int64(dropped)))]).write(to: &bytes)
            bytes.append(UInt8(ascii: "\n"))
        }
        if !bytes.isEmpty { append(bytes) }
        lastSync = .now()
        for waiter in waiters { waiter() }
    }

    /// Writes whole lines, rotating between lines so a file stays within `maxBytes` (a single
    /// longer line gets a file of its own); a failed write is cut back off, so the next batch
    /// never continues a torn line. On `queue`.
    private func append(_ bytes: [UInt8]) {
        file.withLock { state in
            var start = 0
            while start < bytes.count {
                var end = bytes.count
                if settings.maxBytes > 0 {
                    let room = settings.maxBytes - state.size
                    if Int64(end - start) > room {
                        // The most whole lines that fit.
                        let limit = start + Int(max(0, room))
                        end = bytes[start..<limit].lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? start
                        if end == start {
                            // A new file, unless that fails: then the lines go on in this one.
                            if state.size > 0, rotate(&state) { continue }
                            end = (bytes[start...].firstIndex(of: UInt8(ascii: "\n")) ?? (bytes.count - 1)) + 1
                        }
                    }
                }
                write(bytes[start..<end], &state)
                start = end
            }
            _ = fdatasync(state.fd)
        }
    }

    private func write(_ bytes: ArraySlice<UInt8>, _ state: inout FileState) {
        var offset = 0
        var failed = false
        bytes.withUnsafeBytes { buffer in
            while offset < buffer.count, let base = buffer.baseAddress {
                let written = Glibc.write(state.fd, base + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    failed = true
                    break
                }
                offset += written
            }
        }
        if failed {
            _ = ftruncate(state.fd, off_t(state.size))
        } else {
            state.size += Int64(bytes.count)
        }
    }

    /// `path` → `path.1` → … → `path.keep` (the oldest is deleted), and a new `path`. The new
    /// file is made first, so a failure (a full or read-only directory) renames nothing and the
    /// next batch tries again; false then, and the current file is kept.
    private func rotate(_ state: inout FileState) -> Bool {
        _ = fdatasync(state.fd)
        let fresh = path + ".new"
        let fd = open(fresh, O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o640)
        guard fd >= 0 else { return false }
        if settings.keep <= 0 {
            _ = unlink(path)
        } else {
            _ = unlink("\(path).\(settings.keep)")
            for index in stride(from: settings.keep - 1, through: 1, by: -1) {
                _ = rename("\(path).\(index)", "\(path).\(index + 1)")
            }
            _ = rename(path, "\(path).1")
        }
        guard rename(fresh, path) == 0 else {
            // The old file is renamed already: go on writing it (as `path.1`) rather than nowhere.
            close(fd)
            _ = unlink(fresh)
            return false
        }
        close(state.fd)
        state = FileState(fd: fd, size: 0)
        Self.syncDirectory(of: path)
        rotationHandler.withLock { $0 }?()
        return true
    }

    static func syncDirectory(of path: String) {
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        let fd = open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = fsync(fd)
        close(fd)
    }

    /// The journal's files, newest first, opened together (no rotation in between), each with the
    /// length of its complete lines: what a history query reads. The caller closes them.
    func openForReading() -> [JournalFile] {
        file.withLock { _ in JournalFile.openAll(path: path, keep: settings.keep) }
    }
}

/// One of the journal's files, open for reading.
struct JournalFile {
    let fd: Int32
    /// Which file this is across renames (the cursor names it).
    let inode: UInt64
    let size: Int64

    /// `path`, `path.1`, … `path.keep` that exist, newest first.
    static func openAll(path: String, keep: Int) -> [JournalFile] {
        var files: [JournalFile] = []
        for index in 0...max(0, keep) {
            let name = index == 0 ? path : "\(path).\(index)"
            let fd = open(name, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            var info = stat()
            guard fstat(fd, &info) == 0 else { close(fd); continue }
            files.append(JournalFile(fd: fd, inode: UInt64(info.st_ino), size: Int64(info.st_size)))
        }
        return files
    }
}
