/// The `code` values of error events (PROTOCOL.md, "Details that clients rely on").
public enum ErrorCode: String, Sendable, CaseIterable {
    case badRequest = "bad_request"
    case unsatisfiable = "unsatisfiable"
    case waitTimeout = "wait_timeout"
    case requestTimeout = "request_timeout"
    case `protocol` = "protocol"
    case resumeRefused = "resume_refused"

    /// The close code that follows an error event with this code.
    public var closeCode: UInt16 {
        switch self {
        case .badRequest: return CloseCode.badRequest
        case .unsatisfiable: return CloseCode.unsatisfiable
        case .waitTimeout: return CloseCode.waitTimeout
        case .requestTimeout, .protocol: return CloseCode.policy
        case .resumeRefused: return CloseCode.resumeRefused
        }
    }
}

/// A request the server refuses, with the message the client sees.
public struct RequestError: Error, Equatable, Sendable {
    public let code: ErrorCode
    public let message: String

    public init(_ code: ErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }
}

/// One `want` group: a resource by name, or `count` resources of a type carrying all `labels`.
public enum WantGroup: Equatable, Sendable {
    case name(String)
    case type(String, labels: [String: String], count: Int)

    public var json: JSONValue {
        switch self {
        case .name(let name):
            return .object([("name", .string(name))])
        case .type(let type, let labels, let count):
            return .object([
                ("type", .string(type)),
                ("count", .int(Int64(count))),
                ("labels", .object(labels.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })),
            ])
        }
    }
}

public struct AcquireRequest: Equatable, Sendable {
    public var want: [WantGroup]
    /// nil: the server uses the peer address.
    public var holder: String?
    /// In the order the client sent them.
    public var meta: [(String, String)]
    /// Seconds; nil: wait as long as it takes.
    public var wait: Double?
    /// Seconds the lease survives an abrupt end of its connection, as an orphan; nil: none.
    public var grace: Double?
    /// Seconds the resources stay out of reach after a revocation, until the client closes.
    public var revokeWait: Double?
    /// The longest the client means to hold the lease, in seconds (positive).
    public var maxHold: Double?

    public init(want: [WantGroup], holder: String? = nil, meta: [(String, String)] = [], wait: Double? = nil,
                grace: Double? = nil, revokeWait: Double? = nil, maxHold: Double? = nil) {
        self.want = want
        self.holder = holder
        self.meta = meta
        self.wait = wait
        self.grace = grace
        self.revokeWait = revokeWait
        self.maxHold = maxHold
    }

    public static func == (lhs: AcquireRequest, rhs: AcquireRequest) -> Bool {
        lhs.want == rhs.want && lhs.holder == rhs.holder && lhs.wait == rhs.wait
            && lhs.grace == rhs.grace && lhs.revokeWait == rhs.revokeWait && lhs.maxHold == rhs.maxHold
            && lhs.meta.count == rhs.meta.count && zip(lhs.meta, rhs.meta).allSatisfy { $0 == $1 }
    }

    public var json: JSONValue {
        var members: [(String, JSONValue)] = [("op", .string("acquire")), ("want", .array(want.map(\.json)))]
        if let holder { members.append(("holder", .string(holder))) }
        if !meta.isEmpty { members.append(("meta", .object(meta.map { ($0.0, .string($0.1)) }))) }
        if let wait { members.append(("wait", .double(wait))) }
        if let grace { members.append(("grace", .double(grace))) }
        if let revokeWait { members.append(("revoke_wait", .double(revokeWait))) }
        if let maxHold { members.append(("max_hold", .double(maxHold))) }
        return .object(members)
    }
}

public enum ClientMessage: Equatable, Sendable {
    case acquire(AcquireRequest)
    case release
    /// Take over a kept lease (after a restart or a lost connection).
    case resume(lease: String, token: String)

    public var json: JSONValue {
        switch self {
        case .acquire(let request): return request.json
        case .release: return .object([("op", .string("release"))])
        case .resume(let lease, let token):
            return .object([("op", .string("resume")), ("lease", .string(lease)), ("token", .string(token))])
        }
    }
}

public enum ProtocolLimits {
    public static let maxGroups = 16
    public static let maxHolderCharacters = 200
    public static let maxMetaEntries = 16
    public static let maxMetaKeyCharacters = 64
    public static let maxMetaValueCharacters = 500
}

extension ClientMessage {
    /// Parses and validates one client text message. Every refusal is `bad_request` with a message
    /// naming the problem.
    public static func parse(_ bytes: [UInt8]) -> Result<ClientMessage, RequestError> {
        let value: JSONValue
        do {
            value = try JSONValue.parse(bytes)
        } catch {
            return .failure(RequestError(.badRequest, error.description))
        }
        guard case .object = value else {
            return .failure(RequestError(.badRequest, "a message must be a JSON object"))
        }
        switch value["op"] {
        case .string("acquire"):
            return parseAcquire(value).map { .acquire($0) }
        case .string("release"):
            return .success(.release)
        case .string("resume"):
            guard case .string(let lease)? = value["lease"], case .string(let token)? = value["token"] else {
                return .failure(RequestError(.badRequest, "\"resume\" needs \"lease\" and \"token\" strings"))
            }
            return .success(.resume(lease: lease, token: token))
        case .none:
            return .failure(RequestError(.badRequest, "missing \"op\" (expected \"acquire\", \"resume\" or \"release\")"))
        case .some(let op):
            return .failure(RequestError(.badRequest, "unknown op \(op.serialized()) (expected \"acquire\", \"resume\" or \"release\")"))
        }
    }

    static func parseAcquire(_ message: JSONValue) -> Result<AcquireRequest, RequestError> {
        func bad(_ text: String) -> Result<AcquireRequest, RequestError> { .failure(RequestError(.badRequest, text)) }

        guard case .array(let groups) = message["want"] ?? .null else {
            return bad("\"want\" must be an array of 1 to \(ProtocolLimits.maxGroups) groups")
        }
        guard (1...ProtocolLimits.maxGroups).contains(groups.count) else {
            return bad("\"want\" must have 1 to \(ProtocolLimits.maxGroups) groups, not \(groups.count)")
        }
        var want: [WantGroup] = []
        for (index, group) in groups.enumerated() {
            switch parseGroup(group, index: index) {
            case .success(let parsed): want.append(parsed)
            case .failure(let error): return .failure(error)
            }
        }

        var holder: String?
        switch message["holder"] {
        case .none, .some(.null): holder = nil
        case .some(.string(let text)):
            guard text.unicodeScalars.count <= ProtocolLimits.maxHolderCharacters else {
                return bad("\"holder\" is longer than \(ProtocolLimits.maxHolderCharacters) characters")
            }
            holder = text
        default: return bad("\"holder\" must be a string")
        }

        var meta: [(String, String)] = []
        switch message["meta"] {
        case .none, .some(.null): break
        case .some(.object(let members)):
            guard members.count <= ProtocolLimits.maxMetaEntries else {
                return bad("\"meta\" has more than \(ProtocolLimits.maxMetaEntries) entries")
            }
            for (key, value) in members {
                guard key.unicodeScalars.count <= ProtocolLimits.maxMetaKeyCharacters else {
                    return bad("\"meta\" key \"\(key.prefix(20))…\" is longer than \(ProtocolLimits.maxMetaKeyCharacters) characters")
                }
                guard case .string(let text) = value else { return bad("\"meta\" value of \"\(key)\" must be a string") }
                guard text.unicodeScalars.count <= ProtocolLimits.maxMetaValueCharacters else {
                    return bad("\"meta\" value of \"\(key)\" is longer than \(ProtocolLimits.maxMetaValueCharacters) characters")
                }
                meta.append((key, text))
            }
        default: return bad("\"meta\" must be an object of strings")
        }

        var wait: Double?
        switch message["wait"] {
        case .none, .some(.null): wait = nil
        case .some(let value):
            guard let seconds = value.numberValue else { return bad("\"wait\" must be a number of seconds or null") }
            guard seconds >= 0 else { return bad("\"wait\" must not be negative") }
            wait = seconds
        }

        /// A non-negative number of seconds, or null/absent.
        func seconds(_ key: String, positive: Bool = false) -> Result<Double?, RequestError> {
            switch message[key] {
            case .none, .some(.null): return .success(nil)
            case .some(let value):
                guard let seconds = value.numberValue, seconds.isFinite else {
                    return .failure(RequestError(.badRequest, "\"\(key)\" must be a number of seconds or null"))
                }
                if positive {
                    guard seconds > 0 else { return .failure(RequestError(.badRequest, "\"\(key)\" must be a positive number of seconds")) }
                } else {
                    guard seconds >= 0 else { return .failure(RequestError(.badRequest, "\"\(key)\" must not be negative")) }
                }
                return .success(seconds)
            }
        }
        let grace: Double?, revokeWait: Double?, maxHold: Double?
        switch (seconds("grace"), seconds("revoke_wait"), seconds("max_hold", positive: true)) {
        case (.success(let g), .success(let r), .success(let m)): (grace, revokeWait, maxHold) = (g, r, m)
        case (.failure(let e), _, _), (_, .failure(let e), _), (_, _, .failure(let e)): return .failure(e)
        }
        return .success(AcquireRequest(want: want, holder: holder, meta: meta, wait: wait,
                                       grace: grace, revokeWait: revokeWait, maxHold: maxHold))
    }

    public static func parseGroup(_ group: JSONValue, index: Int) -> Result<WantGroup, RequestError> {
        func bad(_ text: String) -> Result<WantGroup, RequestError> {
            .failure(RequestError(.badRequest, "want[\(index)]: \(text)"))
        }
        guard case .object(let members) = group else { return bad("a group must be an object") }
        for (key, _) in members where !["name", "type", "labels", "count"].contains(key) {
            return bad("unknown key \"\(key)\" (a group has \"name\", or \"type\" with optional \"labels\" and \"count\")")
        }
        if let name = group["name"] {
            guard group["type"] == nil, group["labels"] == nil, group["count"] == nil else {
                return bad("\"name\" cannot be combined with \"type\", \"labels\" or \"count\"")
            }
            guard case .string(let text) = name, !text.isEmpty else { return bad("\"name\" must be a non-empty string") }
            return .success(.name(text))
        }
        guard case .string(let type)? = group["type"], !type.isEmpty else {
            return bad("a group needs \"name\" or \"type\" (a non-empty string)")
        }
        var labels: [String: String] = [:]
        switch group["labels"] {
        case .none, .some(.null): break
        case .some(.object(let pairs)):
            for (key, value) in pairs {
                guard case .string(let text) = value else { return bad("label \"\(key)\" must have a string value") }
                // Keys are distinct by scalars (the parser saw to that), but a Swift dictionary
                // holds "é" and "e" + U+0301 as one key: refuse rather than drop one.
                guard labels[key] == nil else {
                    return bad("labels \"\(key)\" and another key differ only in Unicode normalization; use one spelling")
                }
                labels[key] = text
            }
        default: return bad("\"labels\" must be an object of strings")
        }
        var count = 1
        switch group["count"] {
        case .none: break
        case .some(.int(let value)):
            guard value > 0 else { return bad("\"count\" must be a positive integer") }
            count = Int(clamping: value)
        case .some(.double(let value)):
            guard value > 0, value == value.rounded(), let exact = Int(exactly: value) else {
                return bad("\"count\" must be a positive integer")
            }
            count = exact
        default: return bad("\"count\" must be a positive integer")
        }
        return .success(.type(type, labels: labels, count: count))
    }
}

/// A resource as the client sees it in a `granted` event.
public struct GrantedResource: Equatable, Sendable {
    public var name: String
    public var type: String
    public var labels: [String: String]
    public var attributes: JSONValue
    public var epoch: UInt64

    public init(name: String, type: String, labels: [String: String], attributes: JSONValue, epoch: UInt64) {
        self.name = name
        self.type = type
        self.labels = labels
        self.attributes = attributes
        self.epoch = epoch
    }

    public var json: JSONValue {
        .object([
            ("name", .string(name)),
            ("type", .string(type)),
            ("labels", .labels(labels)),
            ("attributes", attributes),
            ("epoch", .int(Int64(clamping: epoch))),
        ])
    }
}

extension JSONValue {
    /// Labels as a JSON object with keys in a stable order.
    public static func labels(_ labels: [String: String]) -> JSONValue {
        .object(labels.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })
    }
}

/// Events the server sends on `/v1/lease`.
public enum ServerEvent: Equatable, Sendable {
    /// `resume`: the lease's resume token, on the first `queued` only.
    case queued(lease: String, position: Int, resume: String? = nil)
    /// `resume`: the lease's resume token; `expires`: RFC 3339 time its `max_hold` runs out.
    case granted(lease: String, resources: [GrantedResource], resume: String? = nil, expires: String? = nil)
    case revoked(lease: String, reason: String)
    case error(code: ErrorCode, message: String)

    public var json: JSONValue {
        switch self {
        case .queued(let lease, let position, let resume):
            var members: [(String, JSONValue)] = [("event", .string("queued")), ("lease", .string(lease)), ("position", .int(Int64(position)))]
            if let resume { members.append(("resume", .string(resume))) }
            return .object(members)
        case .granted(let lease, let resources, let resume, let expires):
            var members: [(String, JSONValue)] = [("event", .string("granted")), ("lease", .string(lease)), ("resources", .array(resources.map(\.json)))]
            if let resume { members.append(("resume", .string(resume))) }
            if let expires { members.append(("expires", .string(expires))) }
            return .object(members)
        case .revoked(let lease, let reason):
            return .object([("event", .string("revoked")), ("lease", .string(lease)), ("reason", .string(reason))])
        case .error(let code, let message):
            return .object([("event", .string("error")), ("code", .string(code.rawValue)), ("message", .string(message))])
        }
    }

    public var text: String { json.serialized() }

    /// Parses a server event (for clients and tests).
    public static func parse(_ bytes: [UInt8]) -> ServerEvent? {
        guard let value = try? JSONValue.parse(bytes), case .string(let event)? = value["event"] else { return nil }
        switch event {
        case "queued":
            guard let lease = value["lease"]?.stringValue, case .int(let position)? = value["position"] else { return nil }
            return .queued(lease: lease, position: Int(clamping: position), resume: value["resume"]?.stringValue)
        case "granted":
            guard let lease = value["lease"]?.stringValue, case .array(let items)? = value["resources"] else { return nil }
            var resources: [GrantedResource] = []
            for item in items {
                guard let name = item["name"]?.stringValue, let type = item["type"]?.stringValue,
                      case .int(let epoch)? = item["epoch"] else { return nil }
                var labels: [String: String] = [:]
                if case .object(let pairs)? = item["labels"] {
                    for (key, value) in pairs { labels[key] = value.stringValue }
                }
                resources.append(GrantedResource(name: name, type: type, labels: labels,
                                                 attributes: item["attributes"] ?? .object([]),
                                                 epoch: UInt64(clamping: epoch)))
            }
            return .granted(lease: lease, resources: resources, resume: value["resume"]?.stringValue,
                            expires: value["expires"]?.stringValue)
        case "revoked":
            guard let lease = value["lease"]?.stringValue else { return nil }
            return .revoked(lease: lease, reason: value["reason"]?.stringValue ?? "")
        case "error":
            guard let code = value["code"]?.stringValue.flatMap(ErrorCode.init(rawValue:)) else { return nil }
            return .error(code: code, message: value["message"]?.stringValue ?? "")
        default:
            return nil
        }
    }
}
