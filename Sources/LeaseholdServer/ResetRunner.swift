import CPosix
import Dispatch
import Foundation
import LeaseCore
import LeaseProtocol
#if canImport(Glibc)
import Glibc
#endif

/// How a reset command ended.
struct ResetOutcome: Sendable, Equatable {
    var succeeded: Bool
    /// For the `reset failed: …` reason: `exit 3: <last line>`, `killed by signal 9`, `timed out after 300 s`.
    var detail: String
    /// The last `ResetRunner.outputLimit` bytes of stdout and stderr together.
    var output: String
    var seconds: Double
}

/// Runs reset commands outside the lease queue (PROTOCOL.md "Resetting hardware"): argv without a
/// shell, in a process group of its own, stdin from /dev/null, stdout and stderr captured (the last
/// 64 KiB), at most `concurrency` at once (the rest wait their turn in order). A command past its
/// timeout gets SIGTERM on its whole group, SIGKILL `killGrace` later; whatever a finished command
/// left running in its group is killed too.
final class ResetRunner: @unchecked Sendable {
    static let outputLimit = 64 * 1024
    let concurrency: Int
    let killGrace: Double
    private let lock = NSLock()
    private var running = 0  // guarded by `lock`
    private var waiting: [(ResetStart, @Sendable (ResetOutcome) -> Void)] = []  // guarded by `lock`
    /// Process groups of the commands running now.
    private var groups: Set<pid_t> = []  // guarded by `lock`
    private var stopped = false  // guarded by `lock`

    init(concurrency: Int, killGrace: Double = 10) {
        self.concurrency = max(1, concurrency)
        self.killGrace = killGrace
    }

    /// Runs `start`'s command now or when a slot frees up; `completion` on the runner's thread.
    func run(_ start: ResetStart, completion: @escaping @Sendable (ResetOutcome) -> Void) {
        lock.lock()
        guard !stopped else { return lock.unlock() }
        guard running < concurrency else {
            waiting.append((start, completion))
            lock.unlock()
            return
        }
        running += 1
        lock.unlock()
        launch(start, completion)
    }

    /// Resets running and waiting (for tests and metrics).
    var load: (running: Int, waiting: Int) {
        lock.lock()
        defer { lock.unlock() }
        return (running, waiting.count)
    }

    /// The server stops: every running command's group gets SIGKILL (a restart with a state
    /// directory runs the reset again; two at once on one device would be worse), nothing waiting
    /// starts, and no outcome is reported any more.
    func stopAll() {
        lock.lock()
        stopped = true
        waiting.removeAll()
        let running = groups
        lock.unlock()
        for group in running { kill(-group, SIGKILL) }
    }

    private func launch(_ start: ResetStart, _ completion: @escaping @Sendable (ResetOutcome) -> Void) {
        let thread = Thread { [self] in
            let outcome = execute(start)
            lock.lock()
            let report = !stopped
            lock.unlock()
            if report { completion(outcome) }
            lock.lock()
            guard !waiting.isEmpty else {
                running -= 1
                lock.unlock()
                return
            }
            let (next, nextCompletion) = waiting.removeFirst()
            lock.unlock()
            launch(next, nextCompletion)
        }
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// The command's environment: a plain PATH and the resource, never the server's own
    /// environment (which may hold the admin token).
    static func environment(_ start: ResetStart) -> [String] {
        var variables: [(String, String)] = [
            ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            ("LEASEHOLD_RESOURCE", JSONValue.object([
                ("name", .string(start.name)), ("type", .string(start.type)), ("labels", .labels(start.labels)),
                ("attributes", start.attributes),
            ]).serialized()),
            ("LEASEHOLD_NAME", start.name),
            ("LEASEHOLD_TYPE", start.type),
            ("LEASEHOLD_END_REASON", start.reason),
            ("LEASEHOLD_LAST_HOLDER", start.lastHolder ?? ""),
        ]
        var taken = Set(variables.map(\.0))
        if case .object(let attributes) = start.attributes {
            for (key, value) in attributes {
                let name = "LEASEHOLD_" + AttributeVariables.name(key)
                guard taken.insert(name).inserted else { continue }  // the fixed ones win; all is in LEASEHOLD_RESOURCE
                variables.append((name, AttributeVariables.value(value)))
            }
        }
        // A NUL cannot be passed in the environment.
        return variables.map { "\($0.0)=\($0.1)" }.filter { !$0.utf8.contains(0) }
    }

    private func execute(_ start: ResetStart) -> ResetOutcome {
        let began = Self.now()
        func failed(_ detail: String) -> ResetOutcome {
            ResetOutcome(succeeded: false, detail: detail, output: "", seconds: Self.now() - began)
        }
        var pipeFDs: [Int32] = [-1, -1]
        guard leasehold_pipe_cloexec(&pipeFDs) == 0 else { return failed("cannot start: pipe: \(String(cString: strerror(errno)))") }
        let (readFD, writeFD) = (pipeFDs[0], pipeFDs[1])
        defer { close(readFD) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, writeFD, 1)
        posix_spawn_file_actions_adddup2(&actions, writeFD, 2)
        // Nothing else of the server's (sockets, an inherited lock, a systemd socket) reaches it.
        leasehold_spawn_close_from(&actions, 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attributes, 0)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        // The server ignores SIGPIPE and takes SIGTERM and SIGHUP itself: the command gets defaults.
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)

        var argv: [UnsafeMutablePointer<CChar>?] = start.policy.command.map { strdup($0) }
        argv.append(nil)
        var envp: [UnsafeMutablePointer<CChar>?] = Self.environment(start).map { strdup($0) }
        envp.append(nil)
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, start.policy.command[0], &actions, &attributes, argv, envp)
        close(writeFD)
        guard spawned == 0 else { return failed("cannot start \(start.policy.command[0]): \(String(cString: strerror(spawned)))") }
        lock.lock()
        groups.insert(pid)
        if stopped { kill(-pid, SIGKILL) }
        lock.unlock()
        defer {
            lock.lock()
            groups.remove(pid)
            lock.unlock()
        }
        _ = fcntl(readFD, F_SETFL, fcntl(readFD, F_GETFL) | O_NONBLOCK)

        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        /// Reads what is there; false at end of file.
        func drain() -> Bool {
            while true {
                let count = buffer.withUnsafeMutableBytes { read(readFD, $0.baseAddress, $0.count) }
                if count > 0 {
                    output.append(contentsOf: buffer[0..<count])
                    if output.count > 2 * Self.outputLimit { output.removeFirst(output.count - Self.outputLimit) }
                    continue
                }
                if count == 0 { return false }
                if errno == EINTR { continue }
                return errno == EAGAIN || errno == EWOULDBLOCK ? true : false
            }
        }

        let timeout = Double(start.policy.timeout.components.seconds) + Double(start.policy.timeout.components.attoseconds) / 1e18
        var status: Int32 = 0
        var exited = false
        var timedOut = false
        var killAt = Double.infinity
        var open = true
        while !exited {
            var descriptor = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
            if open { _ = poll(&descriptor, 1, 100) } else { usleep(50_000) }
            if open { open = drain() }
            let done = waitpid(pid, &status, WNOHANG)
            if done == pid { exited = true; break }
            let now = Self.now()
            if !timedOut, now - began >= timeout {
                timedOut = true
                kill(-pid, SIGTERM)
                killAt = now + killGrace
            }
            if now >= killAt {
                kill(-pid, SIGKILL)
                killAt = .infinity
            }
        }
        // Nothing of the reset outlives it: whatever it left in its group goes too.
        kill(-pid, SIGKILL)
        let drainUntil = Self.now() + 2
        while open, Self.now() < drainUntil {
            var descriptor = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
            _ = poll(&descriptor, 1, 100)
            open = drain()
        }
        if output.count > Self.outputLimit { output.removeFirst(output.count - Self.outputLimit) }
        let text = String(decoding: output, as: UTF8.self)
        let lastLine = text.split(whereSeparator: \.isNewline).last { !$0.allSatisfy(\.isWhitespace) }.map { String($0.prefix(300)) }
        let seconds = Self.now() - began
        let signal = status & 0x7f
        let code = (status >> 8) & 0xff
        if !timedOut, signal == 0, code == 0 {
            return ResetOutcome(succeeded: true, detail: "exit 0", output: text, seconds: seconds)
        }
        var detail: String
        if timedOut {
            detail = "timed out after \(LeaseService.secondsText(timeout)) s"
        } else if signal != 0 {
            detail = "killed by signal \(signal)"
        } else {
            detail = "exit \(code)"
        }
        if let lastLine { detail += ": " + lastLine }
        return ResetOutcome(succeeded: false, detail: detail, output: text, seconds: seconds)
    }

    private static func now() -> Double {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
    }
}
