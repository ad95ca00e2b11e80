#if canImport(Glibc)
import Glibc
#endif

/// Starting and reaping `hold`'s command.
enum ChildProcess {
    enum SpawnError: Error {
        case failed(errno: Int32)
    }

    /// Signals whose disposition the child gets back to default (hold ignores some of them so that
    /// Dispatch can deliver them to it).
    static let defaultedSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGTTIN, SIGTTOU, SIGTSTP,
                                            SIGCHLD, SIGUSR1, SIGUSR2, SIGALRM, SIGCONT]

    /// Starts `arguments` (found on PATH) with `environment`, as the leader of a new process group,
    /// with an empty signal mask and default signal dispositions. Returns its pid (= its group id).
    static func spawn(_ arguments: [String], environment: [String]) throws(SpawnError) -> pid_t {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        posix_spawnattr_setpgroup(&attributes, 0)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for number in defaultedSignals { sigaddset(&defaults, number) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var mask = sigset_t()
        sigemptyset(&mask)
        posix_spawnattr_setsigmask(&attributes, &mask)

        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        argv.append(nil)
        var envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) }
        envp.append(nil)
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawnp(&pid, arguments[0], nil, &attributes, argv, envp)
        guard result == 0 else { throw .failed(errno: result) }
        return pid
    }

    /// Blocks until `pid` ends; returns its exit status, or 128+N when signal N killed it.
    static func wait(for pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while true {
            let result = waitpid(pid, &status, 0)
            if result == pid { break }
            if result < 0, errno == EINTR { continue }
            return 1  // cannot happen for our own child; a status that is not 0 in any case
        }
        let signal = status & 0x7f
        if signal == 0 { return (status >> 8) & 0xff }
        return 128 + signal
    }

    /// The current environment as `KEY=VALUE` strings.
    static func currentEnvironment() -> [String] {
        var result: [String] = []
        guard var cursor = Optional(environ) else { return result }
        while let entry = cursor.pointee {
            result.append(String(cString: entry))
            cursor = cursor.advanced(by: 1)
        }
        return result
    }

    /// The environment for the command: ours without variables of an outer lease, plus `lease`.
    static func environment(adding variables: [(String, String)]) -> [String] {
        func isLeaseVariable(_ key: Substring) -> Bool {
            guard key.hasPrefix("LEASEHOLD_") else { return false }
            let rest = key.dropFirst("LEASEHOLD_".count)
            return ["LEASE", "RESOURCES", "NAMES"].contains(rest) || rest.first?.isNumber == true
        }
        var result = currentEnvironment().filter { entry in
            let key = entry.split(separator: "=", maxSplits: 1).first ?? ""
            return !isLeaseVariable(key)
        }
        result += variables.map { "\($0.0)=\($0.1)" }
        return result
    }
}
