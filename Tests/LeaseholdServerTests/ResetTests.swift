import Foundation
@testable import LeaseholdServer
import LeaseProtocol
import Testing

/// PROTOCOL.md "Resetting hardware after an abnormal end", with real commands that the tests
/// write: what runs when, what the command sees, and what its outcome does.
@Suite("Reset hooks")
struct ResetHookTests {
    /// A directory of scripts and the marker files they write.
    final class Lab: @unchecked Sendable {
        let directory = NSTemporaryDirectory() + "leasehold-reset-\(UUID().uuidString)"

        init() throws {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }

        deinit { try? FileManager.default.removeItem(atPath: directory) }

        func path(_ name: String) -> String { directory + "/" + name }

        /// An executable `#!/bin/sh` script; returns its path.
        @discardableResult
        func script(_ name: String, _ body: String) throws -> String {
            let file = path(name)
            try ("#!/bin/sh\n" + body + "\n").write(toFile: file, atomically: true, encoding: .utf8)
            chmod(file, 0o755)
            return file
        }

        func read(_ name: String) -> String? { try? String(contentsOfFile: path(name), encoding: .utf8) }
        func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: path(name)) }
        func touch(_ name: String) { _ = FileManager.default.createFile(atPath: path(name), contents: Data()) }

        func waitFor(_ name: String) async throws {
            let deadline = Date().addingTimeInterval(liveness)
            while !exists(name) {
                if Date() > deadline { throw TestTimeout(what: "\(name) to appear") }
                try await Task.sleep(nanoseconds: 20_000_000)
            }
        }

        /// An inventory with `array-01` (reset by `command`) and `switch-01` (no reset).
        func inventory(_ command: String, after: String = "abnormal", timeout: String = "60", arrayExtra: String = "") -> String {
            """
            types:
              array:
                reset: {command: ["\(command)", "--quick"], after: \(after), timeout: \(timeout)}
            resources:
              - name: array-01
                type: array
                labels: {proto: fc}
                attributes: {mgmt: 10.0.0.11, api-url: "https://a1", ports: [1, 2]}
            \(arrayExtra)
              - name: switch-01
                type: switch
            """
        }
    }

    func state(_ server: TestServer, _ name: String) async throws -> String? {
        try await server.resource(name)["state"]?.stringValue
    }

    func waitForState(_ server: TestServer, _ name: String, _ state: String) async throws -> JSONValue {
        try await server.waitForStatus("\(name) \(state)") { status in
            status["resources"]?.arrayValue?.first { $0["name"] == .string(name) }?["state"] == .string(state)
        }
    }

    @Test func anAbruptEndResetsTheResourceBeforeTheNextWaiterGetsIt() async throws {
        let lab = try Lab()
        let reset = try lab.script("reset", """
            env | sort > "\(lab.path("env"))"
            echo "$@" > "\(lab.path("args"))"
            while [ ! -e "\(lab.path("go"))" ]; do sleep 0.02; done
            echo cleaned
            """)
        let server = try TestServer(inventory: lab.inventory(reset))
        let (holder, _) = try await server.hold(#"[{"name": "array-01"}, {"name": "switch-01"}]"#, holder: "ci/crashed")
        let (waiter, _) = try await server.queue(#"[{"name": "array-01"}]"#)
        holder.abort()
        _ = try await waitForState(server, "array-01", "resetting")
        #expect(try await state(server, "switch-01") == "free", "no reset for the switch")
        #expect(try await server.resource("array-01")["reset"]?["result"] == .string("running"))
        try await lab.waitFor("env")
        try await waiter.expectOnlyPositionUpdates(0.05)
        lab.touch("go")
        _ = try await waiter.expectEvent("granted")
        let reset01 = try await server.resource("array-01")["reset"]
        #expect(reset01?["result"] == .string("ok"))

        let environment = lab.read("env") ?? ""
        #expect(lab.read("args") == "--quick\n")
        for line in ["LEASEHOLD_NAME=array-01", "LEASEHOLD_TYPE=array", "LEASEHOLD_END_REASON=disconnect",
                     "LEASEHOLD_LAST_HOLDER=ci/crashed", "LEASEHOLD_MGMT=10.0.0.11", "LEASEHOLD_API_URL=https://a1",
                     "LEASEHOLD_PORTS=[1,2]"] {
            #expect(environment.contains(line + "\n"), "\(line) in \(environment)")
        }
        let resource = environment.split(separator: "\n").first { $0.hasPrefix("LEASEHOLD_RESOURCE=") }.map { String($0.dropFirst(19)) }
        let parsed = try JSONValue.parse(resource ?? "")
        #expect(parsed["name"] == .string("array-01") && parsed["labels"]?["proto"] == .string("fc"))
        #expect(!environment.contains("HOME="), "the server's own environment stays out")

        let metrics = try await server.metrics()
        #expect(metrics.value("leasehold_resets_total", ["result": "ok"]) == 1)
        #expect(metrics.value("leasehold_reset_duration_seconds_count") == 1)
        waiter.close()
        await server.stop()
    }

    @Test func aFailedResetDisablesTheResourceWithTheLastLineOfItsOutput() async throws {
        let lab = try Lab()
        let reset = try lab.script("reset", "echo checking; echo 'LUN 7 still mapped' >&2; exit 3")
        let server = try TestServer(inventory: lab.inventory(reset))
        let (holder, _) = try await server.hold(#"[{"name": "array-01"}]"#)
        let (waiter, _) = try await server.queue(#"[{"type": "array"}]"#)
        holder.abort()
        let status = try await waitForState(server, "array-01", "disabled")
        let array = status["resources"]?.arrayValue?.first { $0["name"] == .string("array-01") }
        #expect(array?["disabled"]?["reason"] == .string("reset failed: exit 3: LUN 7 still mapped"))
        #expect(array?["reset"]?["result"] == .string("failed"))
        // The output, for admins.
        let output = try await server.http("GET", "/v1/resources/array-01/reset", headers: [("Authorization", "Bearer secret")])
        #expect(output.status == 200)
        let body = try JSONValue.parse(output.body)
        #expect(body["output"] == .string("checking\nLUN 7 still mapped\n"))
        #expect(body["reason"] == .string("disconnect"))
        #expect(try await server.http("GET", "/v1/resources/array-01/reset").status == 401)
        // The waiter waits until an admin has looked at it.
        try await waiter.expectOnlyPositionUpdates(0.05)
        #expect(try await server.admin("enable", "array-01").status == 200)
        _ = try await waiter.expectEvent("granted")
        #expect(try await server.metrics().value("leasehold_resets_total", ["result": "failed"]) == 1)
        waiter.close()
        await server.stop()
    }

    @Test func aResetPastItsTimeoutIsKilledWithEverythingItStarted() async throws {
        let lab = try Lab()
        let reset = try lab.script("reset", """
            sleep 1000 &
            echo $! > "\(lab.path("grandchild"))"
            echo $$ > "\(lab.path("pid"))"
            echo stuck
            wait
            """)
        let server = try TestServer(inventory: lab.inventory(reset, timeout: "0.5"))
        let (holder, _) = try await server.hold(#"[{"name": "array-01"}]"#)
        holder.abort()
        let status = try await waitForState(server, "array-01", "disabled")
        let reason = status["resources"]?.arrayValue?.first { $0["name"] == .string("array-01") }?["disabled"]?["reason"]?.stringValue
        #expect(reason == "reset failed: timed out after 0.5 s: stuck")
        for name in ["pid", "grandchild"] {
            let pid = Int32(lab.read(name)?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
            #expect(pid > 0)
            #expect(!Self.running(pid), "\(name) \(pid) outlived the reset")
        }
        await server.stop()
    }

    /// Whether `pid` runs (a zombie waiting for init does not).
    static func running(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        return stat[stat.index(after: close)...].split(separator: " ").first != "Z"
    }

    @Test(arguments: [("abnormal", "release", false), ("always", "release", true), ("abnormal", "abort", true),
                      ("abnormal", "binary", true), ("abnormal", "revoke", true)])
    func whichEndsReset(_ after: String, _ end: String, _ resets: Bool) async throws {
        let lab = try Lab()
        // Written whole, then renamed: the test may look the moment the file appears.
        let reset = try lab.script("reset", #"echo "$LEASEHOLD_END_REASON" > "\#(lab.path("reason.tmp"))" && mv "\#(lab.path("reason.tmp"))" "\#(lab.path("reason"))""#)
        let server = try TestServer(inventory: lab.inventory(reset, after: after))
        let (holder, _) = try await server.hold(#"[{"name": "array-01"}]"#)
        switch end {
        case "release":
            holder.send(#"{"op":"release"}"#)
            _ = try await holder.expectClose()
        case "abort": holder.abort()
        case "binary": holder.sendBinary([1, 2, 3])
        default: #expect(try await server.admin("free", "array-01").status == 200)
        }
        if resets {
            try await lab.waitFor("reason")
            let expected = ["release": "release", "abort": "disconnect", "binary": "protocol", "revoke": "revoked"][end]
            #expect(lab.read("reason") == (expected ?? "") + "\n")
        }
        try await server.waitUntilFree("array-01")
        #expect(try await server.resource("array-01")["reset"] == nil || resets, "no reset ran")
        #expect(lab.exists("reason") == resets)
        await server.stop()
    }

    @Test func atMostResetConcurrencyRunAtOnce() async throws {
        let lab = try Lab()
        // The first to start waits for "go"; each notes whether another one had finished before it started.
        let reset = try lab.script("reset", """
            if [ -e "\(lab.path("done"))" ]; then echo after > "\(lab.path("second"))"; else
              mkdir "\(lab.path("first.lock"))" 2>/dev/null && { touch "\(lab.path("first"))"; while [ ! -e "\(lab.path("go"))" ]; do sleep 0.02; done; touch "\(lab.path("done"))"; exit 0; }
              echo before > "\(lab.path("second"))"
            fi
            """)
        let inventory = """
            types:
              array: {reset: {command: ["\(reset)"]}}
            resources:
              - {name: array-01, type: array}
              - {name: array-02, type: array}
            """
        let server = try TestServer(inventory: inventory) { $0.resetConcurrency = 1 }
        let (first, _) = try await server.hold(#"[{"name": "array-01"}]"#)
        let (second, _) = try await server.hold(#"[{"name": "array-02"}]"#)
        first.abort()
        do { try await lab.waitFor("first") } catch {
            Issue.record("status: \(try await server.status().serialized()) metrics: \(try await server.http("GET", "/metrics").body)")
            throw error
        }
        second.abort()
        _ = try await waitForState(server, "array-02", "resetting")
        lab.touch("go")
        try await lab.waitFor("second")
        #expect(lab.read("second") == "after\n", "the second reset started while the first ran")
        try await server.waitUntilFree("array-02")
        await server.stop()
    }

    @Test func aReloadThatRemovesAResettingResourceDropsIt() async throws {
        let lab = try Lab()
        let reset = try lab.script("reset", "touch '\(lab.path("started"))'; while [ ! -e '\(lab.path("go"))' ]; do sleep 0.02; done")
        let server = try TestServer(inventory: lab.inventory(reset))
        let (holder, _) = try await server.hold(#"[{"name": "array-01"}]"#)
        holder.abort()
        try await lab.waitFor("started")
        try server.rewriteInventory("resources:\n  - name: switch-01\n    type: switch\n")
        #expect(try await server.reloadViaHTTP().status == 200)
        let gone = try await server.status()
        #expect(gone["resources"]?.arrayValue?.map { $0["name"] } == [.string("switch-01")])
        lab.touch("go")
        // The reset ends (counted), and its outcome brings nothing back.
        let deadline = Date().addingTimeInterval(liveness)
        while try await server.metrics().value("leasehold_resets_total", ["result": "ok"]) != 1 {
            if Date() > deadline { throw TestTimeout(what: "the reset to end") }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        let status = try await server.status()
        #expect(status["resources"]?.arrayValue?.map { $0["name"] } == [.string("switch-01")])
        await server.stop()
    }

    @Test func aRestartDuringAResetRunsItAgain() async throws {
        let lab = try Lab()
        let directory = lab.path("state")
        let reset = try lab.script("reset", """
            echo run >> '\(lab.path("runs"))'
            touch '\(lab.path("started"))'
            while [ ! -e '\(lab.path("go"))' ]; do sleep 0.02; done
            """)
        let first = try TestServer(inventory: lab.inventory(reset)) { $0.stateDirectory = directory }
        let (holder, _) = try await first.hold(#"[{"name": "array-01"}]"#)
        holder.abort()
        try await lab.waitFor("started")
        await first.stop()
        try FileManager.default.removeItem(atPath: lab.path("started"))
        let second = try TestServer(inventory: lab.inventory(reset)) { $0.stateDirectory = directory }
        #expect(try await state(second, "array-01") == "resetting")
        try await lab.waitFor("started")
        lab.touch("go")
        try await second.waitUntilFree("array-01")
        #expect(lab.read("runs") == "run\nrun\n")
        await second.stop()
    }

    @Test func anAdminRunsAResetOnAFreeOrDisabledResource() async throws {
        let lab = try Lab()
        let reset = try lab.script("reset", #"echo "$LEASEHOLD_END_REASON" >> "\#(lab.path("reasons"))""#)
        let server = try TestServer(inventory: lab.inventory(reset))
        #expect(try await server.admin("reset", "nope").status == 404)
        let noCommand = try await server.admin("reset", "switch-01")
        #expect(noCommand.status == 409)
        #expect(noCommand.body.contains("no reset command"))
        let (holder, _) = try await server.hold(#"[{"name": "array-01"}]"#)
        #expect(try await server.admin("reset", "array-01").status == 409)
        holder.close()
        try await server.waitUntilFree("array-01")
        #expect(try await server.admin("reset", "array-01", token: "wrong").status == 401)
        #expect(try await server.admin("reset", "array-01").status == 200)
        try await lab.waitFor("reasons")
        try await server.waitUntilFree("array-01")
        #expect(lab.read("reasons") == "admin\n")
        // A disabled resource stays disabled after its reset.
        #expect(try await server.admin("disable", "array-01").status == 200)
        #expect(try await server.admin("reset", "array-01").status == 200)
        try await server.waitForStatus("the second reset done") { status in
            status["resources"]?.arrayValue?.first { $0["name"] == .string("array-01") }?["reset"]?["result"] == .string("ok")
                && status["resources"]?.arrayValue?.first { $0["name"] == .string("array-01") }?["state"] == .string("disabled")
        }
        await server.stop()
    }

    @Test func theInventoryNamesEveryResetProblemByLine() throws {
        let lab = try Lab()
        let good = try lab.script("good", "exit 0")
        let notExecutable = lab.path("plain")
        try "x".write(toFile: notExecutable, atomically: true, encoding: .utf8)
        for (text, problem) in [
            ("resources:\n  - {name: a, type: b, reset: {command: []}}", "line 2: the reset command of 'a' is empty: give the program and its arguments"),
            ("resources:\n  - {name: a, type: b, reset: {command: [reset.sh]}}", "line 2: the reset command of 'a' must start with an absolute path (got 'reset.sh'): it runs without a shell or PATH"),
            ("resources:\n  - {name: a, type: b, reset: {command: [\"\(notExecutable)\"]}}", "line 2: the reset command of 'a', \(notExecutable), is not an executable file"),
            ("types:\n  b: {reset: {command: [\"\(good)\"], after: sometimes}}\nresources: []", "line 2: 'after' of the reset of type 'b' must be abnormal or always (got 'sometimes')"),
            ("types:\n  b: {reset: {after: always}}\nresources:\n  - {name: a, type: b}", "line 4: the reset of 'a' has no 'command'"),
            ("resources:\n  - {name: a, type: b, reset: {command: [\"\(good)\"], timeout: -1}}", "line 2: 'timeout' of the reset of 'a' must be a positive number of seconds (at most 10^9)"),
            ("resources:\n  - {name: a, type: b, reset: {command: [\"\(good)\"], shell: true}}", "line 2: unknown key 'shell' in the reset of 'a' (a reset has command, after, timeout)"),
        ] {
            do {
                _ = try InventoryFile.parse(text)
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.description == problem)
            }
        }
        // Key by key: the resource's command over the type's, the type's after and timeout.
        let entries = try InventoryFile.parse("""
            types:
              b: {reset: {command: ["\(good)", "--quick"], after: always, timeout: 20}}
            resources:
              - {name: a, type: b, reset: {command: ["\(good)", "--full"]}}
              - {name: c, type: b}
            """)
        #expect(entries[0].reset?.command == [good, "--full"])
        #expect(entries[0].reset?.after == .always)
        #expect(entries[0].reset?.timeout == .seconds(20))
        #expect(entries[1].reset?.command == [good, "--quick"])
    }
}
