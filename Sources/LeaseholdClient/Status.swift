import LeaseProtocol
import Transport
#if canImport(Glibc)
import Glibc
#endif

/// The status document of PROTOCOL.md ("Watching"): `GET /v1/status` or a `/v1/watch` snapshot.
public struct StatusSnapshot: Sendable, Equatable {
    public struct Resource: Sendable, Equatable {
        public var name: String
        public var type: String
        public var labels: [(String, String)]
        public var state: String
        public var lease: String?
        public var holder: String?
        public var epoch: Int64
        public var since: String
        /// Why an admin (or a failed epoch write) took it out of service; nil while enabled.
        public var disabledReason: String?

        public static func == (lhs: Resource, rhs: Resource) -> Bool {
            lhs.name == rhs.name && lhs.type == rhs.type && lhs.state == rhs.state && lhs.lease == rhs.lease
                && lhs.disabledReason == rhs.disabledReason
                && lhs.holder == rhs.holder && lhs.epoch == rhs.epoch && lhs.since == rhs.since
                && lhs.labels.count == rhs.labels.count && zip(lhs.labels, rhs.labels).allSatisfy { $0 == $1 }
        }
    }

    public struct Waiter: Sendable, Equatable {
        public var id: String
        public var holder: String
        public var position: Int
        public var want: [JSONValue]
        public var since: String
        /// When the wait ends by itself; nil: it waits as long as it takes.
        public var until: String?
        /// Ids of the granted leases holding what it still needs.
        public var blockedBy: [String]
    }

    public struct Lease: Sendable, Equatable {
        public var id: String
        public var holder: String
        public var resources: [String]
    }

    public var resources: [Resource]
    public var leases: [Lease]
    public var queue: [Waiter]
    /// The whole document as the server sent it.
    public var json: JSONValue

    public init(parsing bytes: [UInt8]) throws(LeaseholdError) {
        let value: JSONValue
        do {
            value = try JSONValue.parse(bytes, maxDepth: 64)
        } catch {
            throw .protocolViolation("the status document is not JSON: \(error.description)")
        }
        try self.init(value)
    }

    public init(_ value: JSONValue) throws(LeaseholdError) {
        guard case .array(let resourceItems)? = value["resources"] else {
            throw .protocolViolation("the status document has no \"resources\" array")
        }
        json = value
        resources = []
        for item in resourceItems {
            guard let name = item["name"]?.stringValue, let state = item["state"]?.stringValue else {
                throw .protocolViolation("a status resource lacks \"name\" or \"state\"")
            }
            var labels: [(String, String)] = []
            if case .object(let pairs)? = item["labels"] {
                labels = pairs.map { ($0.0, $0.1.stringValue ?? $0.1.serialized()) }
            }
            var epoch: Int64 = 0
            if case .int(let value)? = item["epoch"] { epoch = value }
            resources.append(Resource(name: name, type: item["type"]?.stringValue ?? "", labels: labels, state: state,
                                      lease: item["lease"]?.stringValue, holder: item["holder"]?.stringValue,
                                      epoch: epoch, since: item["since"]?.stringValue ?? "",
                                      disabledReason: item["disabled"]?["reason"]?.stringValue))
        }
        leases = []
        if case .array(let items)? = value["leases"] {
            for item in items {
                var names: [String] = []
                if case .array(let values)? = item["resources"] { names = values.compactMap(\.stringValue) }
                leases.append(Lease(id: item["id"]?.stringValue ?? "", holder: item["holder"]?.stringValue ?? "", resources: names))
            }
        }
        queue = []
        if case .array(let waiters)? = value["queue"] {
            for item in waiters {
                var position = queue.count + 1
                if case .int(let value)? = item["position"] { position = Int(clamping: value) }
                var want: [JSONValue] = []
                if case .array(let groups)? = item["want"] { want = groups }
                var blockedBy: [String] = []
                if case .array(let ids)? = item["blocked_by"] { blockedBy = ids.compactMap(\.stringValue) }
                queue.append(Waiter(id: item["id"]?.stringValue ?? "", holder: item["holder"]?.stringValue ?? "",
                                    position: position, want: want, since: item["since"]?.stringValue ?? "",
                                    until: item["until"]?.stringValue, blockedBy: blockedBy))
            }
        }
    }

    /// A plain-text table of resources and queue, for people. `now`: Unix seconds.
    public func table(now: Double) -> String {
        var rows: [[String]] = [["RESOURCE", "TYPE", "STATE", "HOLDER", "HELD FOR", "LEASE"]]
        for resource in resources {
            let active = resource.state == "held" || resource.state == "reserved"
            let heldFor = resource.state == "held" ? Self.parseTimestamp(resource.since).map { Self.age(now - $0) } ?? "?" : "-"
            rows.append([resource.name, resource.type, resource.state,
                         active ? (resource.holder ?? "-") : "-", heldFor, active ? (resource.lease ?? "-") : "-"])
        }
        var text = Self.render(rows)
        if queue.isEmpty {
            text += "\nqueue: empty\n"
        } else {
            var waiting: [[String]] = [["POS", "LEASE", "HOLDER", "WAITING", "WANTS", "BLOCKED BY"]]
            for waiter in queue {
                let waited = Self.parseTimestamp(waiter.since).map { Self.age(now - $0) } ?? "?"
                let blockers = waiter.blockedBy.map { id in leases.first { $0.id == id }.map { "\(id) (\($0.holder))" } ?? id }
                waiting.append([String(waiter.position), waiter.id, waiter.holder, waited,
                                waiter.want.map(Self.describe).joined(separator: ", "),
                                blockers.isEmpty ? "-" : blockers.joined(separator: ", ")])
            }
            text += "\nqueue: \(queue.count) waiting\n" + Self.render(waiting)
        }
        let disabled = resources.filter { $0.disabledReason != nil }
        if !disabled.isEmpty {
            text += "\ndisabled:\n" + disabled.map { "  \($0.name): \($0.disabledReason ?? "")\n" }.joined()
        }
        return text
    }

    /// Who holds what waiter `id` still needs, for people: `lease L1 of ci/nightly (switch-01)`,
    /// joined by "; "; nil when the waiter is unknown or nothing granted blocks it.
    public func blockers(ofWaiter id: String) -> String? {
        guard let waiter = queue.first(where: { $0.id == id }), !waiter.blockedBy.isEmpty else { return nil }
        return waiter.blockedBy.map { blocker in
            guard let lease = leases.first(where: { $0.id == blocker }) else { return "lease \(blocker)" }
            return "lease \(blocker) of \(lease.holder) (\(lease.resources.joined(separator: ", ")))"
        }.joined(separator: "; ")
    }

    /// `array x2 {proto=fc}` or `switch-03`.
    public static func describe(_ group: JSONValue) -> String {
        if let name = group["name"]?.stringValue { return name }
        var text = group["type"]?.stringValue ?? "?"
        if case .int(let count)? = group["count"], count != 1 { text += " x\(count)" }
        if case .object(let labels)? = group["labels"], !labels.isEmpty {
            text += " {" + labels.map { "\($0.0)=\($0.1.stringValue ?? "?")" }.joined(separator: ",") + "}"
        }
        return text
    }

    static func render(_ rows: [[String]]) -> String {
        var widths: [Int] = []
        for row in rows {
            for (index, cell) in row.enumerated() {
                if index >= widths.count { widths.append(0) }
                widths[index] = max(widths[index], cell.count)
            }
        }
        var text = ""
        for row in rows {
            var line = ""
            for (index, cell) in row.enumerated() {
                line += cell
                if index < row.count - 1 { line += String(repeating: " ", count: widths[index] - cell.count + 2) }
            }
            text += line + "\n"
        }
        return text
    }

    /// `42s`, `4m12s`, `3h05m`, `2d04h`.
    public static func age(_ seconds: Double) -> String {
        let total = Int(max(0, seconds.isFinite ? seconds : 0))
        if total < 60 { return "\(total)s" }
        if total < 3600 { return "\(total / 60)m\(pad(total % 60))s" }
        if total < 86400 { return "\(total / 3600)h\(pad(total / 60 % 60))m" }
        return "\(total / 86400)d\(pad(total / 3600 % 24))h"
    }

    private static func pad(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }

    /// `2026-11-25T16:04:45Z` (fraction allowed) → Unix seconds.
    public static func parseTimestamp(_ text: String) -> Double? {
        let digits = Array(text.utf8)
        guard digits.count >= 20 else { return nil }
        func number(_ start: Int, _ length: Int) -> Int? {
            var value = 0
            for index in start..<(start + length) {
                let byte = digits[index]
                guard byte >= 48, byte <= 57 else { return nil }
                value = value * 10 + Int(byte - 48)
            }
            return value
        }
        guard let year = number(0, 4), let month = number(5, 2), let day = number(8, 2),
              let hour = number(11, 2), let minute = number(14, 2), let second = number(17, 2),
              (1...12).contains(month), (1...31).contains(day) else { return nil }
        var fields = tm()
        fields.tm_year = Int32(year - 1900)
        fields.tm_mon = Int32(month - 1)
        fields.tm_mday = Int32(day)
        fields.tm_hour = Int32(hour)
        fields.tm_min = Int32(minute)
        fields.tm_sec = Int32(second)
        var fraction = 0.0
        if digits[19] == UInt8(ascii: ".") {
            var scale = 0.1
            var index = 20
            while index < digits.count, digits[index] >= 48, digits[index] <= 57 {
                fraction += Double(digits[index] - 48) * scale
                scale /= 10
                index += 1
            }
        }
        return Double(timegm(&fields)) + fraction
    }

    /// Unix seconds now.
    public static func unixNow() -> Double {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
    }
}

/// Status and admin calls over HTTP.
public struct LeaseholdHTTP: Sendable {
    public let http: HTTPClient

    public init(server: ServerURL, timeout: Duration = .seconds(10)) {
        http = HTTPClient(server: server, timeout: timeout)
    }

    public var server: ServerURL { http.server }

    /// `GET /v1/status`.
    public func status() throws(LeaseholdError) -> StatusSnapshot {
        let response = try http.request("GET", "/v1/status")
        guard response.status == 200 else { throw Self.failure(server, response) }
        return try StatusSnapshot(parsing: response.body)
    }

    public enum AdminAction: String, Sendable, CaseIterable {
        case free, disable, enable, reset
    }

    /// `POST /v1/resources/{name}/{action}`; returns the server's answer. `now`: a free that does
    /// not wait for the holder to stop (its `revoke_wait`).
    public func admin(_ action: AdminAction, resource: String, reason: String?, token: String?, now: Bool = false) throws(LeaseholdError) -> String {
        guard let token, !token.isEmpty else { throw .noAdminToken }
        var members: [(String, JSONValue)] = []
        if let reason { members.append(("reason", .string(reason))) }
        if now { members.append(("now", .bool(true))) }
        let body = members.isEmpty ? [] : Array(JSONValue.object(members).serialized().utf8)
        let response = try http.request("POST", "/v1/resources/\(Self.percentEncode(resource))/\(action.rawValue)",
                                        headers: [("Authorization", "Bearer \(token)"), ("Content-Type", "application/json")],
                                        body: body)
        guard response.status == 200 else { throw Self.failure(server, response) }
        return response.text
    }

    /// `POST /v1/reload`; returns the server's message.
    public func reload(token: String?) throws(LeaseholdError) -> String {
        guard let token, !token.isEmpty else { throw .noAdminToken }
        let response = try http.request("POST", "/v1/reload", headers: [("Authorization", "Bearer \(token)")])
        guard response.status == 200 else { throw Self.failure(server, response) }
        if let value = try? JSONValue.parse(response.body), let message = value["message"]?.stringValue { return message }
        return response.text.trimmingSpaces()
    }

    static func failure(_ server: ServerURL, _ response: HTTPClient.Response) -> LeaseholdError {
        var message = response.text.trimmingSpaces()
        if let value = try? JSONValue.parse(response.body), let error = value["error"]?.stringValue { message = error }
        if message.count > 500 { message = String(message.prefix(500)) + "…" }
        return .httpError(server, status: response.status, message)
    }

    static func percentEncode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.append(Character(UnicodeScalar(byte)))
            default:
                let hex = Array("0123456789ABCDEF")
                out += "%" + String(hex[Int(byte >> 4)]) + String(hex[Int(byte & 15)])
            }
        }
        return out
    }
}

/// Follows `/v1/watch`: `onSnapshot` for each snapshot, then `onEnd` once (on the loop).
public final class StatusWatcher: WebSocketHandler, @unchecked Sendable {
    private let onSnapshot: @Sendable (StatusSnapshot) -> Void
    private let onEnd: @Sendable (LeaseholdError) -> Void
    private let server: ServerURL
    private var ended = false

    private init(server: ServerURL, onSnapshot: @escaping @Sendable (StatusSnapshot) -> Void,
                 onEnd: @escaping @Sendable (LeaseholdError) -> Void) {
        self.server = server
        self.onSnapshot = onSnapshot
        self.onEnd = onEnd
    }

    public static func watch(_ server: ServerURL, configuration: ClientConfiguration = ClientConfiguration(),
                             loop: EventLoop = LeaseSession.sharedLoop,
                             onSnapshot: @escaping @Sendable (StatusSnapshot) -> Void,
                             onEnd: @escaping @Sendable (LeaseholdError) -> Void) {
        let tls: TLSClientContext?
        do {
            tls = try server.tlsContext()
        } catch {
            loop.execute { onEnd(error) }
            return
        }
        let watcher = StatusWatcher(server: server, onSnapshot: onSnapshot, onEnd: onEnd)
        WebSocketClient.connect(host: server.host, port: server.port, path: server.path("/v1/watch"), loop: loop,
                                configuration: configuration.webSocket, handshakeTimeout: configuration.connectTimeout,
                                tls: tls, handler: watcher) { result in
            if case .failure(let error) = result {
                watcher.end(LeaseholdError(error, server: server, timeout: configuration.connectTimeout))
            }
        }
    }

    private func end(_ error: LeaseholdError) {
        guard !ended else { return }
        ended = true
        onEnd(error)
    }

    public func webSocket(_ socket: WebSocketConnection, didReceiveText text: [UInt8]) {
        guard let value = try? JSONValue.parse(text, maxDepth: 64), value["event"]?.stringValue == "snapshot" else { return }
        do {
            onSnapshot(try StatusSnapshot(value))
        } catch {
            end(error)
            socket.close(code: CloseCode.policy, reason: "bad snapshot")
        }
    }

    public func webSocketDidClose(_ socket: WebSocketConnection, code: UInt16, reason: String) {
        let detail = code == CloseCode.goingAway ? "the server is shutting down" : (reason.isEmpty ? "closed with \(code)" : reason)
        end(.connectionLost(server, detail, granted: false))
    }
}
