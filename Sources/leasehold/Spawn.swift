import CPosix
import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Starting and reaping `hold`'s command.
enum ChildProcess {
    enum SpawnError: Error {
        case failed(errno: Int32)
    }

    /// Starts `arguments` (found on PATH) with `environment` under a guard process that leads a new
    /// process group (see `leasehold_spawn_guarded`): if `hold` itself is killed, even with SIGKILL,
    /// the guard stops the command's group, SIGKILL after `grace` seconds. The guard is started
    /// and then waited for on a thread of its own, which must outlive it (the guard notices the
    /// end of the thread that started it); `exited` gets the command's status. Returns the guard's
    /// pid, which is the group id.
    static func start(_ arguments: [String], environment: [String], grace: Double,
                      exited: @escaping @Sendable (Int32) -> Void) throws(SpawnError) -> pid_t {
        let started = StartResult()
        let graceMilliseconds = Int32(clamping: Int64(min(grace, 86_400) * 1000))
        let thread = Thread {
            var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
            argv.append(nil)
            var envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) }
            envp.append(nil)
            var spawnErrno: Int32 = 0
            let pid = leasehold_spawn_guarded(arguments[0], argv, envp, graceMilliseconds, &spawnErrno)
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
            started.set(pid: pid, errno: spawnErrno)
            if pid > 0 { exited(wait(for: pid)) }
        }
        thread.start()
        let (pid, number) = started.wait()
        guard pid > 0 else { throw .failed(errno: number) }
        return pid
    }

    private final class StartResult: @unchecked Sendable {
        private let done = DispatchSemaphore(value: 0)
        private var pid: pid_t = -1
        private var number: Int32 = 0

        func set(pid: pid_t, errno: Int32) {
            self.pid = pid
            number = errno
            done.signal()
        }

        func wait() -> (pid_t, Int32) {
            done.wait()
            return (pid, number)
        }
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
