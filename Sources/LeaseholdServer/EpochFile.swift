import LeaseProtocol
#if canImport(Glibc)
import Glibc
#endif

/// Keeps fencing epochs growing across restarts, crashes included, without a write per grant:
/// the file holds, per resource name, a ceiling the running server may grant up to. A restart
/// starts every name at its ceiling, so no epoch handed out before can come again. The file is
/// rewritten (atomically) only when a name reaches its ceiling, which then moves up a block.
///
/// `ceilings` only ever holds what the file on disk holds: an epoch above a name's ceiling may be
/// handed out only after a write that covers it has succeeded.
final class EpochFile {
    static let block: UInt64 = 1000
    let path: String
    let block: UInt64
    private(set) var ceilings: [String: UInt64]

    /// Reads the file (a missing file means a first start) and reserves a first block for every
    /// known name. Returns the epochs to seed the lease table with.
    init(path: String, names: [String], block: UInt64 = EpochFile.block) throws(StartupError) {
        self.path = path
        self.block = max(1, block)
        var stored: [String: UInt64] = [:]
        if access(path, F_OK) == 0 {
            let text: String
            do { text = try readTextFile(path) } catch { throw StartupError(message: "cannot read --epoch-file \(path): \(error.description)") }
            guard let value = try? JSONValue.parse(text), case .object(let members) = value else {
                throw StartupError(message: "--epoch-file \(path) is not a JSON object of epochs; fix or remove it")
            }
            for (name, number) in members {
                guard case .int(let epoch) = number, epoch >= 0 else {
                    throw StartupError(message: "--epoch-file \(path): the epoch of '\(name)' is not a non-negative integer")
                }
                stored[name] = UInt64(epoch)
            }
        }
        seeds = stored
        var reserved = stored
        for name in names { reserved[name] = (stored[name] ?? 0) + self.block }
        for (name, epoch) in stored where reserved[name] == epoch { reserved[name] = epoch + self.block }
        try Self.write(reserved, to: path)
        ceilings = reserved
    }

    /// Epochs the table starts from: the ceilings of the previous run.
    let seeds: [String: UInt64]

    /// Whether `epoch` of `name` is safe to hand out: no later run can issue it again. Call before
    /// a grant is sent. When `epoch` reaches the ceiling, the file moves it up a block first; if
    /// that write fails, the ceiling stays where the file has it and `failure` says why.
    func reserve(name: String, epoch: UInt64) -> (safe: Bool, failure: String?) {
        let ceiling = ceilings[name] ?? 0
        guard epoch >= ceiling else { return (true, nil) }
        var reserved = ceilings
        reserved[name] = epoch + self.block
        do {
            try Self.write(reserved, to: path)
        } catch {
            // The epoch at the ceiling itself is still safe: a restart starts above it.
            return (epoch == ceiling, error.message)
        }
        ceilings = reserved
        return (true, nil)
    }

    private static func write(_ ceilings: [String: UInt64], to path: String) throws(StartupError) {
        let members = ceilings.sorted { $0.key < $1.key }.map { ($0.key, JSONValue.int(Int64(clamping: $0.value))) }
        let text = JSONValue.object(members).serialized() + "\n"
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw StartupError(message: "cannot write --epoch-file \(temporary): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return Glibc.write(fd, base + offset, raw.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                close(fd)
                throw StartupError(message: "cannot write --epoch-file \(temporary): \(String(cString: strerror(errno)))")
            }
            offset += written
        }
        guard fsync(fd) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw StartupError(message: "cannot sync --epoch-file \(temporary): \(reason)")
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            throw StartupError(message: "cannot replace --epoch-file \(path): \(String(cString: strerror(errno)))")
        }
        // The rename is durable only once the directory is.
        let directory = path.lastIndex(of: "/").map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directoryFD >= 0 else {
            throw StartupError(message: "cannot open the directory of --epoch-file \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(directoryFD) }
        guard fsync(directoryFD) == 0 else {
            throw StartupError(message: "cannot sync the directory of --epoch-file \(path): \(String(cString: strerror(errno)))")
        }
    }
}
