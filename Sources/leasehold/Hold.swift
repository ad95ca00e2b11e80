import ArgumentParser
import Dispatch
import LeaseholdClient
#if canImport(Glibc)
import Glibc
#endif

struct Hold: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Hold resources while a command runs, the way flock(1) holds a file lock.",
        usage: "leasehold hold [--server URL] (--type TYPE [--label KEY=VALUE]... [--count N] | --name NAME)... [--wait SECONDS] [--holder TEXT] [--meta KEY=VALUE]... [--grace SECONDS] [--dead-after SECONDS] [--connect-timeout SECONDS] [--quiet] -- COMMAND [ARGS...]",
        discussion: """
            Groups are given in order: each --type or --name starts a group; --label and --count apply \
            to the --type before them. The command runs with LEASEHOLD_LEASE, LEASEHOLD_RESOURCES (JSON), \
            LEASEHOLD_NAMES and per resource LEASEHOLD_<GROUP>_<N>_NAME/_TYPE/_EPOCH plus one variable per \
            attribute (README, "CLI"). SIGINT, SIGTERM and SIGHUP are forwarded to the command's process group. \
            A server started with --lease-token-file needs the token in LEASEHOLD_LEASE_TOKEN. \
            If the lease ends early, or hold itself is killed (even with SIGKILL), the command's group gets \
            SIGTERM, then SIGKILL after --grace.

            Exit status: the command's own (128+N if signal N killed it); 64 bad arguments; 69 server \
            unreachable or lost while waiting; 75 not granted within --wait; 76 lease revoked by an admin \
            (command stopped); 77 server connection lost while the command ran (command stopped); 78 the \
            request can never be granted; 126/127 the command cannot be run / was not found; 130/143 \
            interrupted (SIGINT/SIGTERM) while waiting, before the command started.
            """
    )

    @OptionGroup var connection: ConnectionOptions

    @Option(name: .long, help: ArgumentHelp("Start a group of resources of this type (repeatable).", valueName: "type"))
    var type: [String] = []

    @Option(name: .long, help: ArgumentHelp("Only resources with this label, for the --type before it (repeatable).", valueName: "key=value"))
    var label: [String] = []

    @Option(name: .long, help: ArgumentHelp("How many resources of the --type before it (default 1).", valueName: "n"))
    var count: [Int] = []

    @Option(name: .long, help: ArgumentHelp("A group of one resource by name (repeatable).", valueName: "name"))
    var name: [String] = []

    // `.unconditional`: "--wait -1" is a value to refuse by name, not a missing value.
    @Option(name: .long, parsing: .unconditional,
            help: ArgumentHelp("Seconds to wait in the queue; 0: fail at once when busy (default: as long as it takes).", valueName: "seconds"))
    var wait: Double?

    @Option(name: .long, help: ArgumentHelp("Shown on the status page as the holder (default: USER@HOST COMMAND; in CI, the job: gitlab/PROJECT/JOB#ID COMMAND).", valueName: "text"))
    var holder: String?

    @Option(name: .long, help: ArgumentHelp("Provenance for the status page and audit log, e.g. --meta job=URL (repeatable). In CI, job (URL), commit and ci are filled from the CI's variables (CI_JOB_URL, BUILD_URL, GITHUB_SERVER_URL/GITHUB_REPOSITORY/GITHUB_RUN_ID, CI_COMMIT_SHA, GIT_COMMIT…) unless given here.", valueName: "key=value"))
    var meta: [String] = []

    @Option(name: .long, help: ArgumentHelp("Seconds between SIGTERM and SIGKILL when the lease is lost (or hold is killed).", valueName: "seconds"))
    var grace: Double = 10

    @Option(name: .long, help: ArgumentHelp("Seconds without any traffic from the server before it is taken for dead.", valueName: "seconds"))
    var deadAfter: Double = 30

    @Option(name: .long, help: ArgumentHelp("Seconds the server keeps the lease when the connection drops (a network blip), for hold to resume it; at least --grace plus 5, so that if hold itself is killed the command is stopped before anyone else gets the resources.", valueName: "seconds"))
    var graceOnDrop: Double = 0

    @Option(name: .long, help: ArgumentHelp("Hold the resources at most this long; the server revokes the lease then (the inventory may set a shorter limit).", valueName: "seconds"))
    var maxHold: Double?

    @Flag(name: .long, help: "Print only errors (no queue progress, no grant line).")
    var quiet = false

    @Option(name: .long, help: ArgumentHelp("When stderr is not a terminal (a CI log), print a line with the queue position and the time waited this often while waiting, so a silent-job watchdog sees life.", valueName: "seconds"))
    var progressInterval: Double = 60

    @Flag(name: .long, help: "Wait even for a resource that an outer hold of this process tree already holds (it would wait for itself unless the outer one ends).")
    var allowNestedWait = false

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The command to run while holding the resources (after --).", valueName: "command"))
    var command: [String] = []

    func validate() throws {
        guard !command.isEmpty else {
            throw ValidationError("give the command to run after --, e.g. leasehold hold --type array -- make test")
        }
        // The protocol's own bound for wait: 10^9 s is "as long as it takes".
        if let wait { guard wait >= 0, wait <= 1e9 else { throw ValidationError("--wait must be 0-1000000000 seconds (got \(wait))") } }
        guard grace >= 0, grace <= 86_400 else { throw ValidationError("--grace must be 0-86400 seconds (got \(grace))") }
        guard deadAfter >= 1, deadAfter <= 86_400 else { throw ValidationError("--dead-after must be 1-86400 seconds (got \(deadAfter))") }
        guard graceOnDrop >= 0, graceOnDrop <= 86_400 else { throw ValidationError("--grace-on-drop must be 0-86400 seconds (got \(graceOnDrop))") }
        if let maxHold { guard maxHold > 0, maxHold <= 1e9 else { throw ValidationError("--max-hold must be more than 0 and at most 1000000000 seconds (got \(maxHold))") } }
        guard progressInterval >= 1, progressInterval <= 86_400 else {
            throw ValidationError("--progress-interval must be 1-86400 seconds (got \(progressInterval))")
        }
        // The protocol's limits, checked here so that a mistake is exit 64 naming the flag.
        if let holder, holder.unicodeScalars.count > 200 {
            throw ValidationError("--holder may be at most 200 characters (got \(holder.unicodeScalars.count))")
        }
        for entry in meta where !entry.contains("=") || entry.hasPrefix("=") {
            throw ValidationError("--meta takes KEY=VALUE, e.g. --meta job=https://ci.example/job/1 (got '\(entry)')")
        }
        do {
            _ = try Self.groups()
        } catch {
            throw ValidationError(error.description)
        }
    }

    /// The groups in command-line order (ArgumentParser keeps each option's values, not their interleaving).
    static func groups() throws(LeaseholdError) -> [WantGroup] {
        let arguments = CommandLine.arguments
        let start = (arguments.dropFirst().firstIndex(of: "hold") ?? 0) + 1
        return try WantArguments.groups(from: Array(arguments[min(start, arguments.count)...]))
    }

    func run() throws {
        let server = try connection.serverURL()
        let want: [WantGroup]
        do {
            want = try Self.groups()
        } catch {
            fail(error)
        }
        var metaPairs = meta.map { entry -> (String, String) in
            let parts = entry.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (String(parts[0]), parts.count > 1 ? String(parts[1]) : "")
        }
        let ci = CIIdentity(environment: CIIdentity.processEnvironment())
        if let ci { metaPairs = ci.merged(into: metaPairs) }
        // The server keeps the lease past a dropped connection for longer than the command takes to
        // stop (a killed hold's guard stops it), and after a revocation until the command has stopped.
        let margin = HoldController.stopMargin
        let request = AcquireRequest(want: want, holder: holder ?? Self.defaultHolder(command, ci: ci), meta: metaPairs, wait: wait,
                                     grace: max(graceOnDrop, grace + margin), revokeWait: grace + margin, maxHold: maxHold)
        var configuration = ClientConfiguration()
        configuration.connectTimeout = .seconds(fractional: connection.connectTimeout)
        configuration.deadAfter = .seconds(fractional: deadAfter)
        configuration.pingInterval = .seconds(fractional: max(0.5, deadAfter / 3))
        configuration.leaseToken = environment("LEASEHOLD_LEASE_TOKEN").map { $0.filter { !$0.isWhitespace } }.flatMap { $0.isEmpty ? nil : $0 }
        // A hold inside a hold that asks for what the outer one holds would wait for itself.
        let outer = Set((environment("LEASEHOLD_NAMES") ?? "").split(separator: " ").map(String.init))
        let named = want.compactMap { group -> String? in if case .name(let name) = group { return name } else { return nil } }
        if let taken = named.first(where: { outer.contains($0) }) {
            if !allowNestedWait {
                fail(.unsatisfiable("\(taken) is held by the hold this command runs under (LEASEHOLD_NAMES), so this request would wait for itself; use the outer lease's \(taken), or pass --allow-nested-wait to wait anyway"))
            }
            if !quiet { writeStderr("leasehold: \(taken) is held by an outer hold of this command; waiting anyway (--allow-nested-wait)\n") }
        }
        let controller = HoldController(server: server, request: request, command: command, grace: grace,
                                        configuration: configuration, quiet: quiet, progressInterval: progressInterval)
        controller.start()
        dispatchMain()
    }

    /// The job and the program in CI (`gitlab/lab/tests/nightly#1234 pytest`), else
    /// `USER@HOST program`.
    static func defaultHolder(_ command: [String], ci: CIIdentity? = nil) -> String {
        let program = command.first.map { $0.split(separator: "/").last.map(String.init) ?? $0 } ?? ""
        if let ci {
            return String(String.UnicodeScalarView("\(ci.job) \(program)".unicodeScalars.prefix(200)))
        }
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        let hostname = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let user = environment("USER") ?? environment("LOGNAME") ?? "uid\(getuid())"
        return String(String.UnicodeScalarView("\(user)@\(hostname) \(program)".unicodeScalars.prefix(200)))
    }
}

/// Runs one `hold`, on the main queue: connect, wait (showing progress), run the command, and end
/// the lease when it exits; or stop the command when the lease is lost.
final class HoldController: @unchecked Sendable {
    private enum Phase { case connecting, waiting, running, stopping, finishing, leaving }

    private let server: ServerURL
    private let request: AcquireRequest
    private let command: [String]
    private let grace: Double
    private let configuration: ClientConfiguration
    private let quiet: Bool
    private let progressInterval: Double
    private let terminal = isatty(2) == 1

    private var phase = Phase.connecting
    private var session: LeaseSession?
    private var pid: pid_t = 0
    private var childExited = false
    private var finalStatus: Int32 = 0
    private var stopMessage = ""
    private var waitStarted = monotonicSeconds()
    private var position: Int?
    /// Our id in the queue, and who held what we wait for when the status was last looked at.
    private var waiterID: String?
    private var blockers: String?
    private var lookingUpBlockers = false
    private var progressShown = false
    private var ticker: DispatchSourceTimer?
    private var signalSources: [DispatchSourceSignal] = []
    private var terminalHandedOver = false
    /// While a dropped lease is being resumed: what to resume, until when, and the next delay.
    private var resuming: (lease: String, token: String, deadline: Double, delay: Double)?
    private var resumeAttempts = 0

    /// Seconds added to `--grace` in the lease's `grace` and `revoke_wait`: time for the guard
    /// to notice, and for the close to reach the server.
    static let stopMargin = 5.0
    /// How long hold keeps trying to resume after the server said it restarts (1012): the
    /// server restores the lease when it starts again and keeps it for its resume grace.
    static let restartWindow = 600.0

    init(server: ServerURL, request: AcquireRequest, command: [String], grace: Double,
         configuration: ClientConfiguration, quiet: Bool, progressInterval: Double) {
        self.server = server
        self.request = request
        self.command = command
        self.grace = grace
        self.configuration = configuration
        self.quiet = quiet
        self.progressInterval = progressInterval
    }

    func start() {
        // A closed stderr must not kill hold (and orphan the command); the command gets SIGPIPE back.
        signal(SIGPIPE, SIG_IGN)
        for number in [SIGINT, SIGTERM, SIGHUP] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .main)
            source.setEventHandler { [self] in received(signal: number) }
            source.activate()
            signalSources.append(source)
        }
        LeaseSession.connect(to: server, configuration: configuration, onEvent: { [self] event in
            DispatchQueue.main.async { self.handle(event) }
        }, completion: { [self] result in
            DispatchQueue.main.async { self.connected(result) }
        })
    }

    // MARK: waiting

    private func connected(_ result: Result<LeaseSession, LeaseholdError>) {
        switch result {
        case .failure(let error):
            fail(error)
        case .success(let session):
            self.session = session
            guard phase == .connecting else {
                session.close()
                return
            }
            phase = .waiting
            waitStarted = monotonicSeconds()
            session.acquire(request)
        }
    }

    private func handle(_ event: LeaseEvent) {
        switch (phase, event) {
        case (_, .interrupted(let lease, let token, let restarting, let detail)):
            interrupted(lease: lease, token: token, restarting: restarting, detail: detail)
        case (.waiting, .failed(let error)) where resuming != nil && Self.isTransient(error),
             (.running, .failed(let error)) where resuming != nil && Self.isTransient(error),
             (.finishing, .failed(let error)) where resuming != nil && Self.isTransient(error):
            retryResume()
        case (.finishing, .granted) where resuming != nil:
            // The command ended while the lease was being resumed: now it can be released.
            resuming = nil
            session?.release()
        case (.running, .granted(let lease)) where resuming != nil:
            resuming = nil
            writeStderr("leasehold: lease \(lease.id) resumed\n")
        case (.waiting, .queued(let id, let position, _)) where resuming != nil:
            resuming = nil
            writeStderr("leasehold: place \(id) in the queue resumed (position \(position))\n")
            waiterID = id
            self.position = position
        case (.waiting, .queued(let id, let position, _)):
            waiterID = id
            if position != self.position {
                self.position = position
                lookUpBlockers()
                showProgress()
            }
        case (.waiting, .granted(let lease)):
            clearProgress()
            run(lease)
        case (.waiting, .failed(.waitTimeout(let answer))):
            clearProgress()
            let waited = StatusSnapshot.age(monotonicSeconds() - waitStarted)
            let where_ = position.map { " (last at position \($0) in the queue)" } ?? ""
            // Who held it: the server says so as the wait ends; else what hold last looked up.
            let heldBy = answer.range(of: "; held by ").map { String(answer[$0.lowerBound...]) }
                ?? blockers.map { "; held by \($0)" } ?? ""
            fail(.waitTimeout("waited \(waited) for \(wants())\(where_)\(heldBy), the --wait \(request.wait.map { StatusSnapshot.age($0) } ?? "") allowed"))
        case (.waiting, .failed(let error)), (.connecting, .failed(let error)):
            clearProgress()
            fail(error)
        case (.waiting, .revoked(_, let reason)):
            clearProgress()
            fail(.revoked(reason: reason))
        case (.running, .revoked(let lease, let reason)):
            let message = "the lease \(lease) was revoked\(reason.hasPrefix("max_hold") ? "" : " by an admin")\(reason.isEmpty ? "" : ": \(reason)")"
            // The server keeps the resources out of reach until we close (revoke_wait): once the
            // command has stopped.
            stop(status: ExitStatus.revoked, message, summary: message)
        case (.running, .failed(let error)):
            stop(status: ExitStatus.connectionLost, error.description, summary: "the connection to \(server) was lost")
        case (.running, .released):
            stop(status: ExitStatus.connectionLost, "the server ended the lease", summary: "the server ended the lease")
        case (.finishing, let event) where event.isFinal:
            exit(finalStatus)
        case (.leaving, let event) where event.isFinal:
            exit(finalStatus)
        default:
            break
        }
    }

    // MARK: resuming

    /// The connection ended but the server keeps the lease: reconnect and resume it, while the
    /// command runs on. After a restart (1012) for up to `restartWindow`; after a dropped
    /// connection within the lease's grace (past it the server has freed the resources).
    private func interrupted(lease: String, token: String, restarting: Bool, detail: String) {
        session = nil
        let window = restarting ? Self.restartWindow : (request.grace ?? 0) - 1
        guard window > 0 else {
            return handle(.failed(.connectionLost(server, detail, granted: phase == .running || phase == .stopping)))
        }
        if resuming == nil || restarting {
            resuming = (lease, token, monotonicSeconds() + window, 0.1)
            resumeAttempts = 0
            writeStderr("leasehold: \(detail); resuming \(phase == .waiting ? "the place in the queue" : "lease") \(lease) (for up to \(StatusSnapshot.age(window)))\n")
        }
        retryResume()
    }

    private func retryResume() {
        guard let attempt = resuming else { return }
        session = nil
        guard monotonicSeconds() < attempt.deadline else {
            resuming = nil
            let lost = LeaseholdError.connectionLost(server, "could not resume lease \(attempt.lease) in time", granted: phase != .waiting)
            if phase == .finishing || phase == .leaving { exit(finalStatus) }
            return handle(.failed(lost))
        }
        resuming?.delay = min(attempt.delay * 2, 2)
        resumeAttempts += 1
        let delay = resumeAttempts == 1 ? 0.05 : attempt.delay * Double.random(in: 0.8...1.2)
        DispatchQueue.main.asyncAfter(deadline: .now() + delay) { [self] in
            guard resuming != nil else { return }
            LeaseSession.connect(to: server, configuration: configuration, onEvent: { [self] event in
                DispatchQueue.main.async { self.handle(event) }
            }, completion: { [self] result in
                DispatchQueue.main.async { [self] in
                    switch result {
                    case .failure:
                        retryResume()
                    case .success(let session):
                        guard let attempt = resuming else { return session.close() }
                        self.session = session
                        session.resume(lease: attempt.lease, token: attempt.token,
                                       grace: request.grace ?? 0, revokeWait: request.revokeWait ?? 0)
                    }
                }
            })
        }
    }

    /// Errors after which another attempt to resume may succeed (the server is still starting).
    static func isTransient(_ error: LeaseholdError) -> Bool {
        switch error {
        case .connectionRefused, .connectionLost: return true
        case .handshakeRejected(_, let status, _): return status == 503 || status == 0
        default: return false
        }
    }

    private func wants() -> String {
        request.want.map { StatusSnapshot.describe($0.json) }.joined(separator: ", ")
    }

    /// Asks the server's status who holds what we wait for (the snapshot's `blocked_by`), off the
    /// main queue; the next progress line says it.
    private func lookUpBlockers() {
        guard let id = waiterID, !lookingUpBlockers, phase == .waiting else { return }
        lookingUpBlockers = true
        let http = LeaseholdHTTP(server: server, timeout: .seconds(5))
        DispatchQueue.global().async { [self] in
            let found = (try? http.status())?.blockers(ofWaiter: id)
            DispatchQueue.main.async { [self] in
                lookingUpBlockers = false
                if let found { blockers = found }
            }
        }
    }

    private func showProgress() {
        guard !quiet else { return }
        let waited = StatusSnapshot.age(monotonicSeconds() - waitStarted)
        let where_ = (position.map { "position \($0) in the queue" } ?? "waiting") + (blockers.map { ", held by \($0)" } ?? "")
        if terminal {
            writeStderr("\r\u{1B}[Kleasehold: waiting for \(wants()): \(where_) (\(waited))")
            progressShown = true
            if ticker == nil {
                let timer = DispatchSource.makeTimerSource(queue: .main)
                timer.schedule(deadline: .now() + 1, repeating: 1)
                timer.setEventHandler { [self] in if phase == .waiting { showProgress() } }
                timer.activate()
                ticker = timer
            }
        } else {
            // A CI log: each change, and a heartbeat every --progress-interval.
            writeStderr("leasehold: waiting for \(wants()): \(where_) (\(waited))\n")
            if ticker == nil {
                let timer = DispatchSource.makeTimerSource(queue: .main)
                let interval = DispatchTimeInterval.milliseconds(Int(progressInterval * 1000))
                timer.schedule(deadline: .now() + interval, repeating: interval)
                timer.setEventHandler { [self] in
                    guard phase == .waiting else { return }
                    showProgress()
                    lookUpBlockers()
                }
                timer.activate()
                ticker = timer
            }
        }
    }

    private func clearProgress() {
        ticker?.cancel()
        ticker = nil
        if progressShown { writeStderr("\r\u{1B}[K") }
        progressShown = false
    }

    // MARK: running

    private func run(_ lease: Lease) {
        let variables = LeaseEnvironment.variables(for: lease, want: request.want)
        if !quiet {
            let waited = StatusSnapshot.age(monotonicSeconds() - waitStarted)
            writeStderr("leasehold: lease \(lease.id) granted after \(waited): \(lease.resources.map(\.name).joined(separator: ", "))\n")
        }
        do {
            pid = try ChildProcess.start(command, environment: ChildProcess.environment(adding: variables), grace: grace) { status in
                DispatchQueue.main.async { self.commandExited(status: status) }
            }
        } catch {
            let code: Int32
            switch error { case .failed(let number): code = number }
            writeStderr("leasehold: cannot run \(command[0]): \(String(cString: strerror(code))). Check the command and PATH.\n")
            finish(status: code == ENOENT ? ExitStatus.notFound : ExitStatus.cannotExecute)
            return
        }
        phase = .running
        handTerminalToCommand()
    }

    /// On an interactive terminal the command's group becomes the foreground group, so it can read
    /// the terminal and gets ^C itself.
    private func handTerminalToCommand() {
        guard isatty(0) == 1, tcgetpgrp(0) == getpgrp() else { return }
        signal(SIGTTOU, SIG_IGN)
        if tcsetpgrp(0, pid) == 0 {
            terminalHandedOver = true
            kill(-pid, SIGCONT)  // in case it touched the terminal before it was its own
        }
    }

    private func takeTerminalBack() {
        guard terminalHandedOver else { return }
        terminalHandedOver = false
        tcsetpgrp(0, getpgrp())
    }

    private func commandExited(status: Int32) {
        childExited = true
        takeTerminalBack()
        switch phase {
        case .running:
            finalStatus = status
            phase = .finishing
            // The lease ends now: whatever the command left running in its group must not go on
            // using the hardware.
            if groupAlive() { kill(-pid, SIGTERM) }
            reapGroup(deadline: monotonicSeconds() + grace) { [self] in finish(status: status) }
        case .stopping:
            reapGroup(deadline: stopDeadline) { [self] in
                writeStderr("leasehold: the command was stopped: \(stopMessage) (exit \(finalStatus))\n")
                exit(finalStatus)
            }
        default:
            break
        }
    }

    private var stopDeadline = 0.0

    /// The lease is gone while the command runs: SIGTERM its group now, SIGKILL after the grace period.
    private func stop(status: Int32, _ message: String, summary: String) {
        guard phase == .running else { return }
        phase = .stopping
        finalStatus = status
        stopMessage = summary
        stopDeadline = monotonicSeconds() + grace
        writeStderr("leasehold: \(message)\nleasehold: stopping the command: SIGTERM now, SIGKILL after \(StatusSnapshot.age(grace))\n")
        kill(-pid, SIGTERM)
        let pid = self.pid
        DispatchQueue.main.asyncAfter(deadline: .now() + grace) { [self] in
            if !childExited || groupAlive() { kill(-pid, SIGKILL) }
        }
    }

    private func groupAlive() -> Bool { kill(-pid, 0) == 0 }

    /// Waits (polling) until nothing of the command's group is left, SIGKILLing it at `deadline`.
    private func reapGroup(deadline: Double, then done: @escaping @Sendable () -> Void) {
        guard groupAlive() else { return done() }
        if monotonicSeconds() >= deadline {
            kill(-pid, SIGKILL)
            return done()
        }
        DispatchQueue.main.asyncAfter(deadline: .now() + 0.05) { [self] in reapGroup(deadline: deadline, then: done) }
    }

    /// Releases the lease, then exits with `status` (at most `releaseTimeout` later).
    private func finish(status: Int32) {
        finalStatus = status
        phase = .finishing
        if let attempt = resuming {
            // Released once resumed (or left to the server's grace if that fails).
            DispatchQueue.main.asyncAfter(deadline: .now() + max(0, attempt.deadline - monotonicSeconds()) + 1) { exit(status) }
            return
        }
        guard let session else { exit(status) }
        session.release()
        DispatchQueue.main.asyncAfter(deadline: .now() + configuration.releaseTimeout.secondsValue + 1) { exit(status) }
    }

    // MARK: signals

    private func received(signal number: Int32) {
        switch phase {
        case .connecting, .waiting:
            clearProgress()
            writeStderr("leasehold: interrupted while waiting; leaving the queue\n")
            phase = .leaving
            finalStatus = 128 + number
            guard let session else { exit(finalStatus) }
            session.release()
            let status = finalStatus
            DispatchQueue.main.asyncAfter(deadline: .now() + 2) { exit(status) }
        case .running, .stopping:
            kill(-pid, number)
        case .finishing, .leaving:
            break
        }
    }
}

func monotonicSeconds() -> Double {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
}
