@_exported import LeaseProtocol

/// Every way a client call can fail. Each description says what happened and what to do next.
public enum LeaseholdError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `--server`/`LEASEHOLD_URL` is not a server address.
    case invalidServerURL(String, String)
    /// A `wss://`/`https://` address whose TLS could not be set up or failed (untrusted or
    /// wrong certificate, unreadable CA file or client certificate, refused client certificate).
    case tls(ServerURL, String)
    /// No TCP connection (refused, unknown host, unreachable network, connect timeout).
    case connectionRefused(ServerURL, String)
    /// The server answered the WebSocket upgrade with an HTTP error (or garbage).
    case handshakeRejected(ServerURL, status: Int, String)
    /// The server refused the request as malformed (`bad_request`, close 4400).
    case badRequest(String)
    /// The inventory can never satisfy the request (`unsatisfiable`, close 4404).
    case unsatisfiable(String)
    /// Not granted within `wait` seconds, or at once under `wait: 0` (`wait_timeout`, close 4408).
    case waitTimeout(String)
    /// An admin force-freed a resource of the lease (close 4001).
    case revoked(reason: String)
    /// The connection ended without a release: the server died, restarted, stopped answering pings,
    /// or the network broke. `granted` tells whether the lease had been granted.
    case connectionLost(ServerURL, String, granted: Bool)
    /// The server no longer keeps the lease a client tried to resume (`resume_refused`, close
    /// 4410), or it was resumed on another connection (4002).
    case resumeRefused(String)
    /// The server broke the protocol (or refused ours: `request_timeout`, `protocol`).
    case protocolViolation(String)
    /// An HTTP call (status, admin) got an error answer.
    case httpError(ServerURL, status: Int, String)
    /// An admin call without a token on our side.
    case noAdminToken
    /// A local problem (reading a file, bad arguments to the library).
    case local(String)

    public var description: String {
        switch self {
        case .invalidServerURL(let text, let problem):
            return "invalid server address '\(text)': \(problem). Use ws://HOST:PORT (--server or LEASEHOLD_URL)."
        case .tls(let url, let detail):
            return "TLS with \(url) failed: \(detail). Check --ca-file (default: the system's trust store) and, if the server requires a client certificate, --cert and --key."
        case .connectionRefused(let url, let detail):
            return "cannot connect to \(url): \(detail). Is `leasehold serve` running there? Check --server or LEASEHOLD_URL."
        case .handshakeRejected(let url, 401, let body):
            return "\(url) leases only to holders of a lease token (HTTP 401: \(body.split(separator: "\n").first.map(String.init) ?? "")). Set LEASEHOLD_LEASE_TOKEN."
        case .handshakeRejected(let url, let status, let body):
            let what = status > 0 ? "HTTP \(status)" : "an invalid answer"
            return "\(url) refused the WebSocket connection with \(what)\(body.isEmpty ? "" : ": \(body)"). Is this a leasehold server (protocol v1)?"
        case .badRequest(let message):
            return "the server refused the request: \(message). Fix the --type/--name/--label/--count arguments."
        case .unsatisfiable(let message):
            return "the request can never be granted: \(message). Check names, types and labels with `leasehold status`."
        case .waitTimeout(let message):
            return "not granted in time: \(message). Wait longer with --wait SECONDS, or see who holds what with `leasehold status`."
        case .revoked(let reason):
            return "the lease was revoked by an admin\(reason.isEmpty ? "" : ": \(reason)"). Ask the lab admins before retrying."
        case .connectionLost(let url, let detail, let granted):
            return "lost the connection to \(url)\(granted ? " while holding the lease" : " while waiting"): \(detail). Check that the server is up (`leasehold status`), then retry."
        case .resumeRefused(let message):
            return "the server no longer keeps the lease: \(message). It may have been freed and given to someone else; start again."
        case .protocolViolation(let message):
            return "protocol error: \(message). Are the client and server versions compatible?"
        case .httpError(let url, let status, let message):
            let hint: String
            switch status {
            case 401: hint = "Pass the server's admin token with LEASEHOLD_ADMIN_TOKEN or --token-file FILE."
            case 403: hint = "The server has admin calls disabled; start it with --admin-token-file."
            case 404: hint = "Check the name with `leasehold status`."
            case 409: hint = "Nothing to do: it is not held (see `leasehold status`)."
            case 400: hint = "Fix the problem above and try again."
            default: hint = "Check the server's log."
            }
            return "\(url.httpDescription) answered \(status): \(message). \(hint)"
        case .noAdminToken:
            return "no admin token: set LEASEHOLD_ADMIN_TOKEN or pass --token-file FILE (the token the server was started with)."
        case .local(let message):
            return message
        }
    }
}

/// A granted lease.
public struct Lease: Sendable, Equatable {
    public let id: String
    /// In the order of the request's `want` groups.
    public let resources: [GrantedResource]
    /// The token that resumes the lease on another connection (after a server restart or a
    /// dropped connection); the server sends it with every grant.
    public let resumeToken: String?
    /// When the lease's `max_hold` runs out (RFC 3339), if it has one.
    public let expires: String?

    public init(id: String, resources: [GrantedResource], resumeToken: String? = nil, expires: String? = nil) {
        self.id = id
        self.resources = resources
        self.resumeToken = resumeToken
        self.expires = expires
    }
}

/// What a lease connection reports. `.revoked`, `.released` and `.failed` are final: nothing follows.
public enum LeaseEvent: Sendable, Equatable {
    /// Waiting in the queue at `position` (from 1); `resume`: the token that resumes the place
    /// on another connection (the first `queued` only).
    case queued(lease: String, position: Int, resume: String? = nil)
    case granted(Lease)
    /// An admin force-freed it (or its `max_hold` ran out). Without a `revokeWait` the server has
    /// closed the connection; with one, the resources stay out of reach until `close()`.
    case revoked(lease: String, reason: String)
    /// The connection ended, but the server keeps the lease for a while: it restarts
    /// (`restarting`, close 1012), or the connection dropped and the lease asked for a `grace`.
    /// Resume it on a new session with `resume(lease:token:)`.
    case interrupted(lease: String, token: String, restarting: Bool, detail: String)
    /// `release()` completed: the server has let the resources go.
    case released
    /// The request failed or the connection ended without a release.
    case failed(LeaseholdError)

    public var isFinal: Bool {
        switch self {
        case .queued, .granted: return false
        case .revoked, .released, .failed, .interrupted: return true
        }
    }
}

