import Dispatch
import Foundation
import LeaseProtocol
import LeaseholdServer
import Logging
import TransportTesting
import Testing
import Transport

/// Every wait for something that should happen has this deadline: it runs out only when a test is
/// failing anyway (a broken behaviour then fails instead of hanging), so it is long enough that a
/// loaded 2-core machine, which can keep a test's task or the server's queue off the CPU for
/// seconds, never reaches it. Waits that expect nothing to happen say their own, short, duration.
let liveness: Double = 60

struct TestTimeout: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out waiting for \(what)" }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Runs `body`; meanwhile a manual clock moves on by itself (see `ManualClock.passingTime`).
func whileTimePasses(_ clock: LoopClock, _ body: () async -> Void) async {
    if let manual = clock as? ManualClock { await manual.passingTime(during: body) } else { await body() }
}

/// A leasehold server on 127.0.0.1 and a free port, with its own inventory file.
final class TestServer: @unchecked Sendable {
    let server: LeaseServer
    let port: UInt16
    let inventoryPath: String
    let token: String?
    let clock: LoopClock

    static let smallInventory = """
        resources:
          - name: array-01
            type: array
            labels: {proto: fc, model: af40}
            attributes: {mgmt: 10.0.0.11, ports: [1, 2], nested: {rack: "r1", slot: 3}}
          - name: array-02
            type: array
            labels: {proto: fc, model: af20}
            attributes: {mgmt: 10.0.0.12}
          - name: array-03
            type: array
            labels: {proto: iscsi, model: af40}
          - name: switch-01
            type: switch
          - name: switch-02
            type: switch
        """

    /// Starts a server; `configure` may shorten timeouts or drop the admin token.
    /// `clock`: a `ManualClock` makes every timeout, ping and wait of the server move only when
    /// the test advances it.
    /// `logger`: where the server logs (by default nowhere below critical).
    init(inventory: String = TestServer.smallInventory, token: String? = "secret", clock: LoopClock = .system,
         logger: Logger? = nil, configure: (inout ServerOptions) -> Void = { _ in }) throws {
        let path = NSTemporaryDirectory() + "leasehold-test-\(UUID().uuidString).yaml"
        try inventory.write(toFile: path, atomically: true, encoding: .utf8)
        var options = ServerOptions()
        options.listen = ["127.0.0.1:0"]
        options.inventoryPath = path
        options.adminToken = token
        options.loops = 2
        configure(&options)
        var quiet = Logger(label: "leasehold-test")
        quiet.logLevel = .critical
        server = try LeaseServer(options: options, logger: logger ?? quiet, clock: clock)
        self.clock = clock
        port = try server.start()[0].port
        inventoryPath = path
        self.token = token
    }

    deinit {
        try? FileManager.default.removeItem(atPath: inventoryPath)
    }

    /// Closes every connection (1001) and stops listening; waits until done.
    func stop() async {
        await whileTimePasses(clock) {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                server.shutdown { continuation.resume() }
            }
        }
    }

    /// Bytes the server has read from clients and processed: once it has grown, a client's pong
    /// or message has arrived and counts as heard.
    var bytesReceived: UInt64 { server.bytesReceived }

    func rewriteInventory(_ text: String) throws {
        try text.write(toFile: inventoryPath, atomically: true, encoding: .utf8)
    }

    // MARK: clients

    func lease() async throws -> WSClient {
        try await WSClient.connect(port: port, path: "/v1/lease")
    }

    /// Opens `/v1/lease` and sends an acquire request.
    func acquire(_ want: String, holder: String? = nil, wait: String? = nil, extra: String = "") async throws -> WSClient {
        let client = try await lease()
        client.send(acquireJSON(want, holder: holder, wait: wait, extra: extra))
        return client
    }

    /// Acquires and expects an immediate grant; returns the client and the granted event.
    func hold(_ want: String, holder: String? = nil) async throws -> (WSClient, JSONValue) {
        let client = try await acquire(want, holder: holder)
        let granted = try await client.expectEvent("granted")
        return (client, granted)
    }

    /// Acquires and expects to be queued; returns the client and the queued event.
    func queue(_ want: String, holder: String? = nil, wait: String? = nil, extra: String = "") async throws -> (WSClient, JSONValue) {
        let client = try await acquire(want, holder: holder, wait: wait, extra: extra)
        let queued = try await client.expectEvent("queued")
        return (client, queued)
    }

    func watch(headers: [(String, String)] = []) async throws -> WSClient {
        try await WSClient.connect(port: port, path: "/v1/watch", headers: headers)
    }

    func http(_ method: String, _ path: String, headers: [(String, String)] = [], body: String? = nil) async throws -> HTTPResult {
        try await rawHTTP(port: port, method: method, path: path, headers: headers, body: body)
    }

    /// `POST /v1/resources/{name}/{action}` with the right token (or `token`).
    func admin(_ action: String, _ name: String, token: String? = nil, reason: String? = nil) async throws -> HTTPResult {
        var headers: [(String, String)] = []
        if let bearer = token ?? self.token { headers.append(("Authorization", "Bearer \(bearer)")) }
        let body = reason.map { JSONValue.object([("reason", .string($0))]).serialized() }
        return try await http("POST", "/v1/resources/\(name)/\(action)", headers: headers, body: body)
    }

    func reloadViaHTTP() async throws -> HTTPResult {
        var headers: [(String, String)] = []
        if let token { headers.append(("Authorization", "Bearer \(token)")) }
        return try await http("POST", "/v1/reload", headers: headers)
    }

    /// `server.reload` (what SIGHUP does).
    func reloadDirect() async -> Result<String, StartupError> {
        await withCheckedContinuation { continuation in
            server.reload { continuation.resume(returning: $0) }
        }
    }

    func status() async throws -> JSONValue {
        let response = try await http("GET", "/v1/status")
        guard response.status == 200 else { throw TestFailure("GET /v1/status answered \(response.status)") }
        return try JSONValue.parse(response.body)
    }

    /// The status entry of one resource.
    func resource(_ name: String) async throws -> JSONValue {
        let document = try await status()
        guard case .array(let resources)? = document["resources"],
              let entry = resources.first(where: { $0["name"]?.stringValue == name }) else {
            throw TestFailure("no resource \(name) in status")
        }
        return entry
    }

    /// Polls `/v1/status` until `condition` holds (state changes reach the table asynchronously).
    @discardableResult
    func waitForStatus(_ what: String, timeout: Double = liveness, _ condition: (JSONValue) -> Bool) async throws -> JSONValue {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let document = try await status()
            if condition(document) { return document }
            if Date() > deadline { throw TestTimeout(what: "\(what); last status: \(document.serialized())") }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
    }

    /// Waits until the table has taken back `name` (a closed client's release is asynchronous).
    func waitUntilFree(_ name: String) async throws {
        try await waitForStatus("\(name) free") { status in
            status["resources"]?.arrayValue?.first { $0["name"] == .string(name) }?["state"] == .string("free")
        }
    }

    /// Advances the manual clock by `step` (a ping interval), then waits until the server has
    /// read the pongs that the pings drew from live clients: they count as heard before time
    /// moves on. Only for tests whose other clients send nothing meanwhile.
    func advanceAndHearPongs(_ step: Duration) async throws {
        guard let manual = clock as? ManualClock else { throw TestFailure("the server runs on the system clock") }
        let heard = bytesReceived
        manual.advance(by: step)
        let deadline = Date().addingTimeInterval(liveness)
        while bytesReceived == heard {
            if Date() > deadline { throw TestTimeout(what: "a pong after advancing the clock by \(step)") }
            try await Task.sleep(nanoseconds: 5_000_000)
        }
    }

    func metrics() async throws -> PrometheusText {
        let response = try await http("GET", "/metrics")
        guard response.status == 200 else { throw TestFailure("GET /metrics answered \(response.status)") }
        return try PrometheusText(parsing: response.body)
    }
}

/// `{"op":"acquire","want":[…],…}` from the want groups' JSON text.
func acquireJSON(_ want: String, holder: String? = nil, wait: String? = nil, extra: String = "") -> String {
    var text = "{\"op\":\"acquire\",\"want\":\(want)"
    if let holder { text += ",\"holder\":\(JSONValue.string(holder).serialized())" }
    if let wait { text += ",\"wait\":\(wait)" }
    if !extra.isEmpty { text += "," + extra }
    return text + "}"
}

extension JSONValue {
    var arrayValue: [JSONValue]? {
        if case .array(let items) = self { return items }
        return nil
    }

    var intValue: Int64? {
        if case .int(let value) = self { return value }
        return nil
    }

    var objectKeys: [String]? {
        if case .object(let members) = self { return members.map(\.0) }
        return nil
    }

    var isNull: Bool { self == .null }
}

/// Names of the resources of a granted event, in order.
func grantedNames(_ event: JSONValue) -> [String] {
    (event["resources"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue }
}

/// Runs blocking work on a thread of its own: neither the cooperative pool nor Dispatch's few
/// global threads, which the server's own work and parallel tests also need (starving them made
/// timing tests flaky under load).
func blocking<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: work()) }
        thread.stackSize = 1 << 20
        thread.start()
    }
}

func sleep(seconds: Double) async {
    try? await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
}

/// The journal's lines once it has `count` (it is written on a queue of its own).
/// The journal's lines once there are `count`; the server's own `started` and `stopped` lines
/// only with `lifecycle`.
func journalLines(_ path: String, atLeast count: Int, lifecycle: Bool = false) async throws -> [JSONValue] {
    var lines: [JSONValue] = []
    let deadline = Date().addingTimeInterval(liveness)
    while Date() < deadline {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        lines = text.split(separator: "\n").compactMap { try? JSONValue.parse(String($0)) }
        if !lifecycle { lines.removeAll { ["started", "stopped"].contains($0["event"]?.stringValue ?? "") } }
        if lines.count >= count { break }
        try await Task.sleep(nanoseconds: 50_000_000)
    }
    return lines
}
