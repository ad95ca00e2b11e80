import Foundation
import LeaseholdClient
import Testing

/// End-to-end: the built `leasehold` binary (`swift build` first) against `leasehold serve` on an
/// ephemeral port, both as subprocesses.
enum CLI {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let binary = root.appendingPathComponent(".build/debug/leasehold").path

    static func checkBinary() throws {
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw TestFailure("\(binary) is missing: run `swift build` (or `swift build --build-tests`) before `swift test`")
        }
    }
}

/// How long any wait for something that should happen may take before the test fails: long, since
/// it only runs out when a test is failing anyway, and a loaded 2-core machine may keep a test's
/// task or a subprocess off the CPU for seconds.
let hangGuard: Double = 60

/// True while `pid` exists and is not a zombie (a killed process waits there until its new
/// parent, init, reaps it).
func isRunning(_ pid: Int32) -> Bool {
    guard kill(pid, 0) == 0 else { return false }
    guard let stat = TestFiles.read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return false }
    let state = stat[stat.index(after: close)...].split(separator: " ").first
    return state != "Z" && state != "X"
}

/// One subprocess with its output in files.
final class Subprocess: @unchecked Sendable {
    let process = Process()
    let stdoutPath: String
    let stderrPath: String

    init(_ arguments: [String], environment: [String: String], directory: String, name: String) throws {
        try CLI.checkBinary()
        stdoutPath = "\(directory)/\(name).out"
        stderrPath = "\(directory)/\(name).err"
        _ = FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: CLI.binary)
        process.arguments = arguments
        process.environment = environment
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle(forWritingAtPath: stdoutPath)
        process.standardError = FileHandle(forWritingAtPath: stderrPath)
        try process.run()
    }

    var stdout: String { TestFiles.read(stdoutPath) ?? "" }
    var stderr: String { TestFiles.read(stderrPath) ?? "" }
    var pid: Int32 { process.processIdentifier }

    /// Waits for the exit; nil (after a SIGKILL) when it takes longer than `seconds`.
    func finish(within seconds: Double = hangGuard) async -> Int32? {
        // Polls with Task.sleep: a blocked cooperative thread starves the other tests' tasks.
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning, Date() < deadline { try? await Task.sleep(nanoseconds: 20_000_000) }
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        return process.terminationStatus
    }

    func signal(_ number: Int32) { kill(pid, number) }

    deinit {
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// `leasehold serve` on 127.0.0.1:0 with the test inventory and an admin token, plus a scratch
/// directory for the commands' files.
final class CLIServer: @unchecked Sendable {
    static let token = "cli-admin-token"
    let directory: String
    let url: String
    private var server: Subprocess
    private let serveArguments: [String]
    private var count = 0

    /// `serveArguments`: more for `leasehold serve` (`@name` stands for the file `name` in the
    /// directory); `files`: written into the directory first.
    init(serveArguments: [String] = [], files: [String: String] = [:]) async throws {
        directory = try TestFiles.makeDirectory()
        for (name, text) in files { try TestFiles.write(text, to: directory + "/" + name) }
        try TestFiles.write(TestFiles.inventory, to: directory + "/inventory.yaml")
        try TestFiles.write(Self.token, to: directory + "/token")
        try TestFiles.write("not-the-token", to: directory + "/wrong-token")
        self.serveArguments = ["--inventory", directory + "/inventory.yaml", "--admin-token-file", directory + "/token", "--loops", "1"]
            + serveArguments.map { [directory] in $0.hasPrefix("@") ? directory + "/" + $0.dropFirst() : $0 }
        (server, url) = try await Self.serve(listen: "127.0.0.1:0", arguments: self.serveArguments, directory: directory)
    }

    private static func serve(listen: String, arguments: [String], directory: String) async throws -> (Subprocess, String) {
        let server = try Subprocess(["serve", "--listen", listen] + arguments,
                                    environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"],
                                    directory: directory, name: "server")
        let deadline = Date().addingTimeInterval(hangGuard)
        func listening() -> String? {
            server.stdout.split(separator: "\n").first { $0.hasPrefix("leasehold listening on ") }
                .map { String($0.dropFirst("leasehold listening on ".count)) }
        }
        var found = listening()
        while found == nil, Date() < deadline {
            try? await Task.sleep(nanoseconds: 20_000_000)
            found = listening()
        }
        guard let found else { throw TestFailure("the server did not start: \(server.stderr)") }
        return (server, "ws://\(found)")
    }

    /// Stops the server (SIGTERM) and starts it again on the same address.
    func restart() async throws {
        server.signal(SIGTERM)
        _ = await server.finish()
        (server, _) = try await Self.serve(listen: String(url.dropFirst("ws://".count)), arguments: serveArguments,
                                           directory: directory)
    }

    /// Starts `leasehold ARGUMENTS` against this server.
    func start(_ arguments: [String], token: String? = nil, environment extra: [String: String] = [:]) throws -> Subprocess {
        count += 1
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("LEASEHOLD_") }
        environment["LEASEHOLD_URL"] = url
        if let token { environment["LEASEHOLD_ADMIN_TOKEN"] = token }
        environment.merge(extra) { _, new in new }
        return try Subprocess(arguments, environment: environment, directory: directory, name: "run\(count)")
    }

    /// Runs `leasehold ARGUMENTS` to the end: (status, stdout, stderr).
    func run(_ arguments: [String], token: String? = nil, environment: [String: String] = [:],
             within seconds: Double = hangGuard) async throws -> (Int32?, String, String) {
        let process = try start(arguments, token: token, environment: environment)
        let status = await process.finish(within: seconds)
        return (status, process.stdout, process.stderr)
    }

    func path(_ name: String) -> String { directory + "/" + name }

    /// Waits until the file exists (a command signals that it runs), at most `seconds`.
    func waitFor(_ name: String, within seconds: Double = hangGuard) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while !FileManager.default.fileExists(atPath: path(name)) {
            if Date() > deadline { return false }
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        return true
    }

    func signalServer(_ number: Int32) { server.signal(number) }

    deinit {
        server.signal(SIGKILL)
        server.process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

@Suite(.serialized) struct CLITests {
    @Test func holdRunsTheCommandWithTheLeaseEnvironmentAndExitsWithItsStatus() async throws {
        let server = try await CLIServer()
        let (status, _, stderr) = try await server.run([
            "hold", "--type", "array", "--label", "proto=fc", "--name", "switch-01", "--holder", "env-test",
            "--", "sh", "-c", "env > \"$1\"; exit 7", "sh", server.path("env"),
        ])
        #expect(status == 7, "stderr: \(stderr)")
        #expect(stderr.contains("granted"))
        let lines = (TestFiles.read(server.path("env")) ?? "").split(separator: "\n").map(String.init)
        var variables: [String: String] = [:]
        for line in lines where line.hasPrefix("LEASEHOLD_") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { variables[parts[0]] = parts[1] }
        }
        #expect(variables["LEASEHOLD_LEASE"]?.hasPrefix("L") == true)
        #expect(variables["LEASEHOLD_NAMES"] == "array-01 switch-01")
        #expect(variables["LEASEHOLD_0_0_NAME"] == "array-01")
        #expect(variables["LEASEHOLD_0_0_TYPE"] == "array")
        #expect(variables["LEASEHOLD_0_0_MGMT"] == "10.0.0.11")
        #expect(variables["LEASEHOLD_0_0_API_URL"] == "https://10.0.0.11/api")
        #expect(variables["LEASEHOLD_0_0_EPOCH"] == "1")
        #expect(variables["LEASEHOLD_1_0_NAME"] == "switch-01")
        #expect(variables["LEASEHOLD_1_0_MGMT"] == "10.0.9.1")
        let resources = try JSONValue.parse(variables["LEASEHOLD_RESOURCES"] ?? "")
        guard case .array(let items) = resources else { Issue.record("LEASEHOLD_RESOURCES is not an array"); return }
        #expect(items.map { $0["name"]?.stringValue } == ["array-01", "switch-01"])
    }

    @Test func twoHoldsOnOneResourceRunOneAfterTheOther() async throws {
        let server = try await CLIServer()
        let log = server.path("log")
        func hold(_ tag: String) throws -> Subprocess {
            try server.start(["hold", "--name", "array-02", "--holder", tag, "--", "sh", "-c",
                              "echo \"$1 start $(date +%s.%N)\" >> \"$2\"; sleep 0.7; echo \"$1 end $(date +%s.%N)\" >> \"$2\"",
                              "sh", tag, log])
        }
        let first = try hold("A")
        let second = try hold("B")
        #expect(await first.finish() == 0, "A: \(first.stderr)")
        #expect(await second.finish() == 0, "B: \(second.stderr)")
        var times: [String: Double] = [:]
        for line in (TestFiles.read(log) ?? "").split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 3, let time = Double(parts[2]) { times["\(parts[0]) \(parts[1])"] = time }
        }
        guard let aStart = times["A start"], let aEnd = times["A end"], let bStart = times["B start"], let bEnd = times["B end"] else {
            Issue.record("missing timestamps: \(times)")
            return
        }
        #expect(aEnd <= bStart || bEnd <= aStart, "the commands overlapped: \(times)")
        // Whichever came second waited in the queue and said so.
        #expect((first.stderr + second.stderr).contains("position 1 in the queue"))
    }

    @Test func waitZeroOnABusyResourceFailsWithItsStatusAndSignalsAreForwarded() async throws {
        let server = try await CLIServer()
        let holder = try server.start(["hold", "--name", "switch-01", "--", "sh", "-c", "touch \"$1\"; exec sleep 30", "sh", server.path("ready")])
        #expect(await server.waitFor("ready"))
        let (status, _, stderr) = try await server.run(["hold", "--name", "switch-01", "--wait", "0", "--", "true"])
        #expect(status == 75)
        #expect(stderr.contains("--wait"))
        #expect(stderr.contains("waited 0s for switch-01"), "\(stderr)")
        holder.signal(SIGTERM)
        #expect(await holder.finish() == 128 + SIGTERM)  // the command's own status: sleep died of SIGTERM
    }

    @Test func holdSendsTheLeaseTokenFromTheEnvironmentAndSaysWhenOneIsMissing() async throws {
        let server = try await CLIServer(serveArguments: ["--lease-token-file", "@lease-tokens"],
                                         files: ["lease-tokens": "team-a team-a-secret-token-01\n"])
        let (status, stdout, stderr) = try await server.run(
            ["hold", "--name", "array-01", "--holder", "nightly", "--", "sh", "-c", "echo \"$LEASEHOLD_LEASE\""],
            environment: ["LEASEHOLD_LEASE_TOKEN": "team-a-secret-token-01"])
        #expect(status == 0, "\(stderr)")
        #expect(stdout.hasPrefix("L"))
        let (refused, _, missing) = try await server.run(["hold", "--name", "array-01", "--", "true"])
        #expect(refused == 69)
        #expect(missing.contains("LEASEHOLD_LEASE_TOKEN"), "\(missing)")
    }

    @Test func aHoldInsideAHoldIsRefusedWhatTheOuterHoldsAndAWaitInALogShowsLife() async throws {
        let server = try await CLIServer()
        // The inner hold asks for what the outer one holds: it would wait for itself.
        let inner = "\(CLI.binary) hold --name array-01 -- true; echo \"inner $?\""
        let (status, stdout, stderr) = try await server.run(["hold", "--name", "array-01", "--", "sh", "-c", inner])
        #expect(status == 0, "\(stderr)")
        #expect(stdout.contains("inner 78"), "\(stdout)")
        #expect(stderr.contains("would wait for itself"), "\(stderr)")

        // Waiting in a CI log (stderr is a pipe here): a heartbeat line while the position stays.
        let holder = try server.start(["hold", "--name", "switch-01", "--holder", "nightly-soak", "--",
                                       "sh", "-c", "touch \"$1\"; exec sleep 60", "sh", server.path("held")])
        #expect(await server.waitFor("held"))
        let waiter = try server.start(["hold", "--name", "switch-01", "--progress-interval", "1", "--", "true"])
        // Each line says where it waits and, once hold has asked the status, who holds it.
        let heldBy = ", held by lease "
        let deadline = Date().addingTimeInterval(hangGuard)
        while waiter.stderr.components(separatedBy: "waiting for switch-01: position 1").count < 3
                || !waiter.stderr.contains(heldBy), Date() < deadline {
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        #expect(waiter.stderr.components(separatedBy: "waiting for switch-01: position 1").count >= 3, "\(waiter.stderr)")
        #expect(waiter.stderr.contains(heldBy), "\(waiter.stderr)")
        #expect(waiter.stderr.contains(" of nightly-soak (switch-01)"), "\(waiter.stderr)")
        waiter.signal(SIGTERM)
        holder.signal(SIGTERM)
        _ = await waiter.finish()
        _ = await holder.finish()
    }

    @Test func statusWatchReconnectsAfterARestartAndSaysSo() async throws {
        let server = try await CLIServer()
        let watcher = try server.start(["status", "--watch"])
        let marker = "array-01"
        func tables() -> Int { watcher.stdout.components(separatedBy: marker).count - 1 }
        var deadline = Date().addingTimeInterval(hangGuard)
        while tables() < 1, Date() < deadline { try await Task.sleep(nanoseconds: 20_000_000) }
        #expect(tables() >= 1, "\(watcher.stdout)")
        let before = tables()
        try await server.restart()
        deadline = Date().addingTimeInterval(hangGuard)
        while tables() <= before, Date() < deadline { try await Task.sleep(nanoseconds: 20_000_000) }
        #expect(tables() > before, "no snapshot after the restart: \(watcher.stderr)")
        #expect(watcher.stderr.contains("reconnecting in"), "\(watcher.stderr)")
        #expect(watcher.process.isRunning)
        watcher.signal(SIGTERM)
        _ = await watcher.finish()
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script"), "needs script(1) to give the watcher a terminal"))
    func statusWatchOnATerminalKeepsItsClocksRunning() async throws {
        let server = try await CLIServer()
        let output = server.path("terminal.out")
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/script")
        process.arguments = ["-qfec", "\(CLI.binary) status --watch --server \(server.url)", "/dev/null"]
        process.environment = ["PATH": "/usr/bin:/bin", "TERM": "dumb"]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle(forWritingAtPath: output)
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() } }
        // Nothing changes on the server: only the clock's tick redraws the screen.
        func redraws() -> Int { (TestFiles.read(output) ?? "").components(separatedBy: "\u{1B}[2J").count - 1 }
        let deadline = Date().addingTimeInterval(hangGuard)
        while redraws() < 3, Date() < deadline { try await Task.sleep(nanoseconds: 50_000_000) }
        #expect(redraws() >= 3, "\(TestFiles.read(output) ?? "")")
    }

    @Test func serveStartupErrorsNameTheProblemWithoutTheUsageLine() async throws {
        let process = try Subprocess(["serve", "--listen", "127.0.0.1:0", "--inventory", "/no/such/inventory.yaml"],
                                     environment: ["PATH": "/usr/bin:/bin"], directory: NSTemporaryDirectory(), name: "bad-serve")
        #expect(await process.finish() == 64)
        #expect(process.stderr.contains("cannot read inventory /no/such/inventory.yaml"), "\(process.stderr)")
        #expect(!process.stderr.contains("Usage:"), "\(process.stderr)")
    }

    @Test func aForcedFreeStopsTheCommandAndHoldReportsTheRevocation() async throws {
        let server = try await CLIServer()
        // The command ignores SIGTERM, so it takes the SIGKILL after the grace period.
        let holder = try server.start(["hold", "--name", "array-01", "--grace", "1", "--", "sh", "-c",
                                       "echo $$ > \"$1\"; trap '' TERM; exec sleep 30", "sh", server.path("pid")])
        #expect(await server.waitFor("pid"))
        let (status, stdout, stderr) = try await server.run(["free", "array-01", "--reason", "lab maintenance"], token: CLIServer.token)
        #expect(status == 0, "\(stderr)")
        #expect(stdout.contains("array-01"))
        #expect(await holder.finish() == 76)
        #expect(holder.stderr.contains("revoked by an admin: lab maintenance"))
        let pid = Int32((TestFiles.read(server.path("pid")) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        #expect(pid > 0 && !isRunning(pid), "the command is still running")
    }

    @Test func aHoldKilledWithSIGKILLTakesItsCommandAndItsChildrenWithIt() async throws {
        let server = try await CLIServer()
        // The command leaves a child of its own running, and the grandchild ignores SIGTERM: both
        // must go (SIGTERM at once, SIGKILL after the grace period) once `hold` is gone.
        let holder = try server.start(["hold", "--name", "array-01", "--grace", "1", "--", "sh", "-c",
                                       "(trap '' TERM; exec sleep 60) & echo $! > \"$1.child\"; echo $$ > \"$1\"; wait",
                                       "sh", server.path("pid")])
        #expect(await server.waitFor("pid"))
        #expect(await server.waitFor("pid.child"))
        func pid(_ name: String) -> Int32 {
            Int32((TestFiles.read(server.path(name)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }
        let command = pid("pid"), child = pid("pid.child")
        #expect(command > 0 && child > 0)
        holder.signal(SIGKILL)
        _ = await holder.finish()
        let deadline = Date().addingTimeInterval(hangGuard)
        while isRunning(command) || isRunning(child), Date() < deadline {
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        #expect(!isRunning(command), "the command outlived hold")
        #expect(!isRunning(child), "the command's child outlived hold")
        // And the lease ended with hold's connection: the next holder gets the array at once.
        let (status, _, stderr) = try await server.run(["hold", "--name", "array-01", "--wait", "5", "--", "true"])
        #expect(status == 0, "\(stderr)")
    }

    @Test func aKilledServerStopsTheCommand() async throws {
        let server = try await CLIServer()
        let holder = try server.start(["hold", "--name", "array-01", "--grace", "1", "--", "sh", "-c", "touch \"$1\"; exec sleep 30", "sh", server.path("ready")])
        #expect(await server.waitFor("ready"))
        server.signalServer(SIGKILL)
        #expect(await holder.finish() == 77)
        #expect(holder.stderr.contains("lost the connection"))
    }

    @Test func aServerThatStopsAnsweringIsTakenForDead() async throws {
        let server = try await CLIServer()
        let holder = try server.start(["hold", "--name", "array-01", "--grace", "1", "--dead-after", "1.5", "--", "sh", "-c",
                                       "touch \"$1\"; exec sleep 30", "sh", server.path("ready")])
        #expect(await server.waitFor("ready"))
        server.signalServer(SIGSTOP)
        // Taken for dead after --dead-after; then hold tries to resume within the lease's grace
        // (--grace + 5 s), and gives up: the server would have freed it by then.
        #expect(await holder.finish() == 77)
        #expect(holder.stderr.contains("resuming lease"), "\(holder.stderr)")
        #expect(holder.stderr.contains("could not resume lease"), "\(holder.stderr)")
    }

    @Test func statusJSONParsesAndTheTableShowsTheHolder() async throws {
        let server = try await CLIServer()
        let holder = try server.start(["hold", "--name", "switch-01", "--holder", "status-test", "--", "sh", "-c",
                                       "touch \"$1\"; exec sleep 30", "sh", server.path("ready")])
        #expect(await server.waitFor("ready"))
        let (status, stdout, stderr) = try await server.run(["status", "--json"])
        #expect(status == 0, "\(stderr)")
        let document = try JSONValue.parse(stdout)
        let snapshot = try StatusSnapshot(document)
        #expect(snapshot.resources.map(\.name) == ["array-01", "array-02", "switch-01"])
        #expect(snapshot.resources.last?.state == "held")
        #expect(snapshot.resources.last?.holder == "status-test")
        let (tableStatus, table, _) = try await server.run(["status"])
        #expect(tableStatus == 0)
        #expect(table.contains("switch-01") && table.contains("status-test") && table.contains("HELD FOR"))
        holder.signal(SIGTERM)
        _ = await holder.finish()
    }

    @Test func adminVerbsWorkWithTheTokenAndFailCleanlyWithout() async throws {
        let server = try await CLIServer()
        let (noToken, _, noTokenError) = try await server.run(["disable", "array-02"])
        #expect(noToken == 79)
        #expect(noTokenError.contains("LEASEHOLD_ADMIN_TOKEN"))
        let (wrong, _, wrongError) = try await server.run(["disable", "array-02", "--token-file", server.path("wrong-token")])
        #expect(wrong == 79)
        #expect(wrongError.contains("401"))
        #expect(try await server.run(["disable", "array-02", "--token-file", server.path("token")]).0 == 0)
        let snapshot = try StatusSnapshot(JSONValue.parse(try await server.run(["status", "--json"]).1))
        #expect(snapshot.resources.first { $0.name == "array-02" }?.state == "disabled")
        #expect(try await server.run(["enable", "array-02"], token: CLIServer.token).0 == 0)
        let (notHeld, _, notHeldError) = try await server.run(["free", "array-02", "--reason", "x"], token: CLIServer.token)
        #expect(notHeld == 1)
        #expect(notHeldError.contains("409"))
        #expect(try await server.run(["disable", "no-such-thing"], token: CLIServer.token).0 == 1)
        let (reloaded, reloadOut, reloadError) = try await server.run(["reload"], token: CLIServer.token)
        #expect(reloaded == 0, "\(reloadError)")
        #expect(reloadOut.contains("reloaded"))
        let (noReset, _, noResetError) = try await server.run(["reset", "array-02"], token: CLIServer.token)
        #expect(noReset == 1)
        #expect(noResetError.contains("no reset command"), "\(noResetError)")
    }

    @Test func resetRunsTheInventorysCommandAndFreeNowDoesNotWait() async throws {
        let files = ["reset.sh": "#!/bin/sh\necho \"$LEASEHOLD_END_REASON\" >> \"$(dirname \"$0\")/reasons\"\n"]
        let server = try await CLIServer(files: files)
        chmod(server.path("reset.sh"), 0o755)
        let inventory = "types:\n  array: {reset: {command: [\"\(server.path("reset.sh"))\"]}}\nresources:\n  - {name: array-01, type: array}\n"
        try TestFiles.write(inventory, to: server.path("inventory.yaml"))
        #expect(try await server.run(["reload"], token: CLIServer.token).0 == 0)
        let (status, stdout, stderr) = try await server.run(["reset", "array-01"], token: CLIServer.token)
        #expect(status == 0, "\(stderr)")
        #expect(stdout.contains("array-01 is being reset"))
        let deadline = Date().addingTimeInterval(hangGuard)
        while (try? String(contentsOfFile: server.path("reasons"), encoding: .utf8)) == nil, Date() < deadline {
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        #expect((try? String(contentsOfFile: server.path("reasons"), encoding: .utf8)) == "admin\n")
        // A holder that asked for time to stop (hold's revoke_wait) is freed at once with --now.
        let holder = try server.start(["hold", "--name", "array-01", "--grace", "60", "--", "sh", "-c",
                                       "trap '' TERM; touch \"$1\"; while :; do sleep 0.05; done", "sh", server.path("ready")])
        #expect(await server.waitFor("ready"))
        let (freed, _, freeError) = try await server.run(["free", "array-01", "--reason", "urgent", "--now"], token: CLIServer.token)
        #expect(freed == 0, "\(freeError)")
        let snapshot = try StatusSnapshot(JSONValue.parse(try await server.run(["status", "--json"]).1))
        #expect(snapshot.leases.isEmpty, "freed at once")
        holder.signal(SIGKILL)
        _ = await holder.finish()
    }

    @Test(arguments: [
        (["serve", "--dead-after", "inf"], "--dead-after"),
        (["serve", "--request-timeout", "1e16"], "--request-timeout"),
        (["serve", "--ping-interval", "1e-300", "--dead-after", "1e300"], "--ping-interval"),
        (["serve", "--ping-interval", "nan"], "--ping-interval"),
        (["serve", "--max-message-size", "9223372036854775807"], "--max-message-size"),
        (["serve", "--max-pings-per-second", "0"], "--max-pings-per-second"),
        (["hold", "--wait", "99999999999", "--name", "array-01", "--", "true"], "--wait"),
        (["hold", "--grace", "1e300", "--name", "array-01", "--", "true"], "--grace"),
        (["hold", "--dead-after", "inf", "--name", "array-01", "--", "true"], "--dead-after"),
        (["status", "--connect-timeout", "1e300"], "--connect-timeout"),
        (["hold", "--wait", "-1", "--name", "array-01", "--", "true"], "--wait"),
        (["hold", "--holder", String(repeating: "h", count: 201), "--name", "array-01", "--", "true"], "--holder"),
        (["hold", "--progress-interval", "0", "--name", "array-01", "--", "true"], "--progress-interval"),
    ])
    func outOfRangeOptionsAreRefusedByName(_ testCase: ([String], String)) async throws {
        let (arguments, flag) = testCase
        let process = try Subprocess(arguments, environment: ["PATH": "/usr/bin:/bin"],
                                     directory: NSTemporaryDirectory(), name: "options")
        let status = await process.finish()
        #expect(status == 64, "\(arguments): exit \(String(describing: status)), \(process.stderr)")
        #expect(process.stderr.contains(flag), "\(process.stderr)")
    }

    @Test func aTokenFileOfTwoLinesIsRefused() async throws {
        let directory = try TestFiles.makeDirectory()
        defer { TestFiles.remove(directory) }
        try TestFiles.write(TestFiles.inventory, to: directory + "/inventory.yaml")
        try TestFiles.write("first-token\nsecond-token\n", to: directory + "/token")
        let process = try Subprocess(["serve", "--listen", "127.0.0.1:0", "--inventory", directory + "/inventory.yaml",
                                      "--admin-token-file", directory + "/token"],
                                     environment: ["PATH": "/usr/bin:/bin"], directory: directory, name: "two-line-token")
        #expect(await process.finish() == 64)
        #expect(process.stderr.contains("one token on one line"), "\(process.stderr)")
    }

    @Test func impossibleRequestsAndUnreachableServersHaveTheirOwnStatuses() async throws {
        let server = try await CLIServer()
        let (unsatisfiable, _, unsatisfiableError) = try await server.run(["hold", "--type", "array", "--count", "5", "--", "true"])
        #expect(unsatisfiable == 78)
        #expect(unsatisfiableError.contains("leasehold status"))
        let closed = try ClosedPort()
        let (refused, _, refusedError) = try await server.run(["hold", "--server", "ws://127.0.0.1:\(closed.port)", "--name", "a", "--", "true"])
        #expect(refused == 69)
        #expect(refusedError.contains("cannot connect"))
        #expect(try await server.run(["hold", "--server", "wss://127.0.0.1:1", "--name", "a", "--", "true"]).0 == 69)
        #expect(try await server.run(["status", "--server", "ws://127.0.0.1:\(closed.port)"]).0 == 69)
        #expect(try await server.run(["hold", "--name", "array-01", "--", "/no/such/command"]).0 == 127)
        #expect(try await server.run(["hold", "--label", "a=b", "--type", "x", "--", "true"]).0 == 64)
    }
}
