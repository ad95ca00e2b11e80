import LeaseProtocol
#if canImport(Glibc)
import Glibc
#endif

/// Keeps fencing epochs growing across restarts, crashes included, without a write per grant:
/// the file holds, per resource name, a ceiling the running server may grant up to. A restart
/// starts every name at its ceiling, so no epoch handed out before can come again. The file is
/// rewritten (atomically) only when a name reaches its ceiling, which then moves up a block.
final class EpochFile {
    static let block: UInt64 = 1000
    let path: String
    private(set) var ceilings: [String: UInt64]

    /// Reads the file (a missing file means a first start) and reserves a first block for every
    /// known name. Returns the epochs to seed the lease table with.
    init(path: String, names: [String]) throws(StartupError) {
        self.path = path
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
        ceilings = stored
        for name in names { ceilings[name] = (stored[name] ?? 0) + Self.block }
        for (name, epoch) in stored where ceilings[name] == epoch { ceilings[name] = epoch + Self.block }
        try write()
    }

    /// Epochs the table starts from: the ceilings of the previous run.
    let seeds: [String: UInt64]

    /// Call after a grant. Moves the ceiling (and writes the file) when `epoch` reaches it.
    func granted(name: String, epoch: UInt64) throws(StartupError) {
        let ceiling = ceilings[name] ?? 0
        guard epoch >= ceiling else { return }
        ceilings[name] = epoch + Self.block
        try write()
    }

    private func write() throws(StartupError) {
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
        fsync(fd)
        close(fd)
        guard rename(temporary, path) == 0 else {
            throw StartupError(message: "cannot replace --epoch-file \(path): \(String(cString: strerror(errno)))")
        }
    }
}
