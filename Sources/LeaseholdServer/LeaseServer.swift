import Dispatch
import Synchronization
import HTTPCodec
import LeaseCore
import LeaseProtocol
import PerMessageDeflate
import Logging
import Transport
#if canImport(Glibc)
import Glibc
#endif

public struct ServerOptions: Sendable {
    public var listen: [String] = ["0.0.0.0:7400"]
    /// Listening sockets handed over already bound (systemd socket activation), served besides
    /// `listen`.
    public var inheritedListeners: [Int32] = []
    /// Proxies whose `X-Forwarded-For`/`Forwarded`, `X-Forwarded-Host` and `X-Forwarded-Proto`
    /// headers are believed; they are also exempt from `maxConnectionsPerAddress`.
    public var trustedProxies: [AddressRange] = []
    /// The URL people open the page at (`https://lab.example`), when a proxy serves it: its origin
    /// may use the WebSocket endpoints and its host name is one of the server's.
    public var publicURL: String?
    public var inventoryPath: String = "deploy/lab-inventory.yaml"
    public var pingInterval: Duration = .seconds(15)
    public var deadAfter: Duration = .seconds(45)
    public var requestTimeout: Duration = .seconds(30)
    public var maxMessageSize: Int = 64 * 1024
    /// TLS listeners (`--listen-tls`): every endpoint over https:// and wss://.
    public var listenTLS: [String] = []
    /// PEM certificate (chain) and key for the TLS listeners; re-read by `reload`.
    public var tlsCertificate: String?
    public var tlsKey: String?
    /// CA certificates client certificates must chain to: TLS then requires one (mutual TLS)
    /// and its subject's common name is the lease's default holder.
    public var tlsClientCA: String?
    /// permessage-deflate (RFC 7692) for clients that offer it. Clients are asked not to keep
    /// context, so no inflate stream outlives a message; ours is freed when a connection is quiet.
    public var compression = true
    /// Pings a client may send a second; past it its connection closes with 1008.
    public var maxPingsPerSecond = 20
    /// Open connections in all (beyond: 503 before any upgrade) and from one address (429).
    public var maxConnections = 100_000
    public var maxConnectionsPerAddress = 4096
    /// Open `/v1/watch` streams; beyond, a new one closes with 1013 (try again later).
    public var maxWatchers = 1000
    /// Waiters in all and from one address; beyond, a request that cannot be granted at once
    /// fails with wait_timeout and says the queue is full.
    public var maxWaiters = 10_000
    public var maxWaitersPerAddress = 2_000
    /// nil: admin routes answer 403 and say how to enable them.
    public var adminToken: String?
    /// nil: anyone who reaches `/v1/lease` may lease.
    public var leaseTokens: LeaseTokens?
    public var loops: Int = 2
    /// Origins (`scheme://host[:port]`) whose pages may open `/v1/lease` and `/v1/watch`,
    /// besides the server's own pages; "*": any but "null", which must be listed itself.
    public var allowedOrigins: [String] = []
    /// Names the server answers to besides IP addresses, localhost and this machine's host name
    /// (a `Host` of any other name is a DNS-rebinding page, or a proxy to configure); "*": any.
    public var allowedHosts: [String] = []
    /// Where fencing epochs are kept across restarts; nil: they start again at 0.
    public var epochFile: String?
    /// Epochs reserved per name and write of the epoch file (small in tests, to reach a ceiling).
    var epochBlock: UInt64 = EpochFile.block
    /// Audit journal (JSON lines: grants with meta, lease ends, admin actions); nil: logs only
    /// (or `<stateDirectory>/audit.jsonl` when there is a state directory).
    public var auditFile: String?
    /// Rotate the journal past this many bytes (0: never), keeping this many old files.
    public var auditMaxBytes: Int64 = 256 << 20
    public var auditKeep = 4
    /// No journal even with a state directory.
    public var auditDisabled = false
    /// The journal file in use: `auditFile`, else the state directory's.
    public var journalPath: String? {
        guard !auditDisabled else { return nil }
        return auditFile ?? stateDirectory.map { $0 + "/audit.jsonl" }
    }
    /// Where leases, waiters and epochs outlive the process; nil: a stop ends every lease.
    public var stateDirectory: String?
    /// How long a lease kept over a restart waits for its client to resume it.
    public var resumeGrace: Duration = .seconds(60)
    /// The largest `grace` an acquire may ask for, and the largest `revoke_wait` honoured.
    public var maxGrace: Double = 300
    public var maxRevokeWait: Double = 60
    /// Reset commands running at once (the rest wait their turn).
    public var resetConcurrency = 4

    public init() {}
}

/// The leasehold server: HTTP routes, `/v1/lease` and `/v1/watch` WebSockets, admin calls,
/// metrics, around a `LeaseService` that owns the lease table.
public final class LeaseServer: HTTPRequestHandler, @unchecked Sendable {
    public let options: ServerOptions
    private let logger: Logger
    let clock: ServerClock
    let service: LeaseService
    private let group: EventLoopGroup
    private var http: HTTPServer!
    private let shuttingDown = ShutdownFlag()
    /// Open watch streams (see `ServerOptions.maxWatchers`).
    private let watchers: ConnectionLimit
    /// Lowercased host names that `Host` may carry (see `ServerOptions.allowedHosts`).
    private let hostNames: Set<String>
    /// Keeps the journal's usage summaries up to date; nil without a journal.
    let usageIndexer: UsageIndexer?
    /// Serial, so two reloads apply in the order they were asked for.
    private let reloadQueue = DispatchQueue(label: "leasehold.reload")
    /// The TLS listeners' certificate and key (reloaded with the inventory); nil without TLS.
    public let tls: TLSServerContext?
    /// The TLS listeners' bound addresses, once `start` has run.
    public private(set) var tlsAddresses: [SocketAddress] = []

    /// `clock` drives every timeout, ping and timer of the server; tests pass a `ManualClock`.
    public init(options: ServerOptions, logger: Logger, clock: LoopClock = .system) throws(StartupError) {
        self.options = options
        self.logger = logger
        self.clock = ServerClock(clock)
        hostNames = Self.hostNames(allowed: options.allowedHosts + (options.publicURL.flatMap(Self.authority(ofURL:)).map { [Self.name(ofAuthority: $0)] } ?? []))
        let inventory = try Self.loadInventory(path: options.inventoryPath)
        if !options.listenTLS.isEmpty {
            guard let certificate = options.tlsCertificate, let key = options.tlsKey else {
                throw StartupError(message: "TLS listeners need a certificate and a key (--tls-cert, --tls-key)")
            }
            do {
                tls = try TLSServerContext(certificate: certificate, key: key, clientCA: options.tlsClientCA)
            } catch {
                throw StartupError(message: "TLS: \(error.message)")
            }
        } else {
            tls = nil
        }
        let epochFile = try options.epochFile.map { path throws(StartupError) in
            try EpochFile(path: path, names: inventory.resources.map(\.name), block: options.epochBlock)
        }
        let clock = self.clock
        group = EventLoopGroup(count: max(1, options.loops), label: "leasehold.loop", clock: clock.source)
        // The lease table runs on the first loop's thread: a request read there is decided and
        // answered without waking another thread (the common case with `--loops 1`).
        let serviceQueue = DispatchQueue(label: "leasehold.leases", target: group.loops[0].queue)
        let store = try options.stateDirectory.map { directory throws(StartupError) in
            try FileLeaseStore(directory: directory, queue: serviceQueue, logger: logger)
        }
        var journalSettings = AuditJournal.Settings()
        journalSettings.maxBytes = options.auditMaxBytes
        journalSettings.keep = options.auditKeep
        let journal = try options.journalPath.map { path throws(StartupError) in
            try AuditJournal(path: path, clock: clock, settings: journalSettings)
        }
        var limits = LeaseService.Limits()
        limits.waitersTotal = options.maxWaiters
        limits.waitersPerAddress = options.maxWaitersPerAddress
        limits.resumeGrace = options.resumeGrace
        limits.maxGrace = options.maxGrace
        limits.maxRevokeWait = options.maxRevokeWait
        limits.resetConcurrency = options.resetConcurrency
        do {
            service = try LeaseService(queue: serviceQueue, inventory: inventory, epochFile: epochFile, journal: journal, store: store,
                                       clock: clock, logger: logger, metrics: Metrics(), shutdown: shuttingDown, limits: limits)
        } catch {
            throw StartupError(message: "inventory \(options.inventoryPath): \(error)")
        }
        journal?.record([("event", .string("started")), ("version", .string(leaseholdVersion)), ("state", .bool(store != nil))])
        usageIndexer = journal.map { UsageIndexer(journal: $0, clock: clock) }
        if let usageIndexer {
            journal?.onRotation { usageIndexer.refresh() }
            // Files without summaries (a journal from before them, or one a crash left behind)
            // get them in the background.
            usageIndexer.refresh()
        }
        if options.stateDirectory == nil, inventory.resources.contains(where: { $0.reset != nil }) {
            logger.warning("the inventory names reset commands but there is no --state-dir: a reset that a stop or a crash interrupts is not run again, and its resource comes back free")
        }
        var configuration = HTTPServerConfiguration()
        configuration.webSocket.maxMessageSize = options.maxMessageSize
        configuration.webSocket.maxPingsPerSecond = options.maxPingsPerSecond
        if options.compression {
            var compression = PerMessageDeflateConfiguration()
            compression.requestPeerNoContextTakeover = true
            // Lease messages are sparse and snapshots are compressed once for all watchers: no
            // connection keeps a zlib stream between messages.
            compression.releaseAfterEachMessage = true
            configuration.webSocket.compression = compression
        } else {
            configuration.webSocket.compression = nil
        }
        configuration.maxConnections = options.maxConnections
        configuration.maxConnectionsPerAddress = options.maxConnectionsPerAddress
        configuration.perAddressLimitExempt = options.trustedProxies
        watchers = ConnectionLimit(maximum: options.maxWatchers)
        configuration.webSocket.pingInterval = options.pingInterval
        configuration.webSocket.deadAfter = options.deadAfter
        let logger = logger
        http = HTTPServer(group: group, configuration: configuration, handler: self,
                          onProblem: { problem in
                              switch problem {
                              case .acceptFailed(let error):
                                  logger.warning("accept failed", metadata: ["error": .string("\(error)")])
                              case .tlsFailed(let peer, let reason):
                                  logger.notice("TLS failed", metadata: ["connection.peer": .string(peer.description), "reason": .string(reason)])
                              case .refused(let peer, let status, let limit):
                                  logger.notice("connection refused at its limit", metadata: [
                                      "connection.peer": .string(peer.description), "http.status": .stringConvertible(status),
                                      "limit": .stringConvertible(limit),
                                  ])
                              }
                          })
    }

    /// The most connections this server takes (see `HTTPServer.connectionCapacity`).
    public var connectionCapacity: Int { http.connectionCapacity }

    /// Bytes read from clients and processed so far (see `EventLoopGroup.bytesRead`).
    public var bytesReceived: UInt64 { group.bytesRead }

    /// Binds every `--listen` address; returns the bound addresses (real ports for port 0).
    public func start() throws(StartupError) -> [SocketAddress] {
        var bound: [SocketAddress] = []
        for fd in options.inheritedListeners {
            do {
                bound.append(try http.listen(adopting: fd))
            } catch {
                throw StartupError(message: "cannot serve the socket passed as descriptor \(fd): \(error)")
            }
        }
        for text in options.listen {
            do {
                let address = try SocketAddress(parsing: text)
                bound.append(try http.listen(on: address))
            } catch let error as AddressError {
                throw StartupError(message: error.description)
            } catch {
                throw StartupError(message: "cannot listen on \(text): \(error)")
            }
        }
        for text in options.listenTLS {
            do {
                let address = try SocketAddress(parsing: text)
                tlsAddresses.append(try http.listen(on: address, tls: tls))
            } catch let error as AddressError {
                throw StartupError(message: error.description)
            } catch {
                throw StartupError(message: "cannot listen (TLS) on \(text): \(error)")
            }
        }
        return bound
    }

    /// Stops accepting and closes every connection, then calls `completion`. With a state
    /// directory the leases and waiters are kept for the next process (close 1012, "resume it")
    /// and `completion` waits until the state is durable; without one they end (1001).
    public func shutdown(completion: @escaping @Sendable () -> Void) {
        shuttingDown.set()
        http.stopAccepting()
        let keeping = options.stateDirectory != nil
        let code = keeping ? CloseCode.serviceRestart : CloseCode.goingAway
        let reason = keeping ? "server restarting; resume the lease" : "server shutting down"
        // A reset that runs now runs again on the next start (with a state directory).
        service.resetRunner.stopAll()
        http.closeAllConnections(code: code, reason: reason, timeout: .seconds(5)) { [service] in
            service.journal?.record([("event", .string("stopped")), ("kept", .bool(keeping))])
            service.whenDurable {
                guard let journal = service.journal else { return completion() }
                journal.whenDurable { completion() }
            }
        }
    }

    /// Re-reads the inventory file (SIGHUP and `POST /v1/reload`).
    public func reload(completion: @escaping @Sendable (Result<String, StartupError>) -> Void) {
        // Reading and parsing a large file takes a while: not on an event loop or the lease queue.
        reloadQueue.async { [options, service, tls] in
            // The certificate and key first: if they cannot be read, nothing changes.
            do throws(TLSError) {
                try tls?.reload()
            } catch {
                completion(.failure(StartupError(message: "TLS certificate: \(error.message)")))
                return
            }
            let inventory: Inventory
            do throws(StartupError) {
                inventory = try Self.loadInventory(path: options.inventoryPath)
            } catch {
                completion(.failure(error))
                return
            }
            service.reload(inventory) { result in
                switch result {
                case .applied:
                    let certificate = tls.map { "; TLS certificate reloaded (\($0.certificateSubject))" } ?? ""
                    completion(.success("inventory reloaded: \(inventory.resources.count == 1 ? "1 resource" : "\(inventory.resources.count) resources")" + certificate))
                case .invalid(let problems):
                    completion(.failure(StartupError(message: problems.map(\.description).joined(separator: "; "))))
                }
            }
        }
    }

    static func loadInventory(path: String) throws(StartupError) -> Inventory {
        let text: String
        do {
            text = try readTextFile(path)
        } catch {
            throw StartupError(message: "cannot read inventory \(path): \(error.description)")
        }
        let entries: [InventoryEntry]
        do {
            entries = try InventoryFile.parse(text)
        } catch {
            throw StartupError(message: "invalid inventory \(path): \(error.description)")
        }
        return Inventory(resources: entries.map {
            ResourceSpec(name: $0.name, type: $0.type, labels: $0.labels, attributes: $0.attributes,
                         maxHold: $0.maxHold.map(LeaseService.duration), reset: $0.reset)
        })
    }

    // MARK: routes

    public func handle(_ request: HTTPRequest, responder: HTTPResponder) {
        let head = request.head
        let path = head.path
        // HEAD is answered like GET; the transport leaves out the body.
        let method = head.method == "HEAD" ? "GET" : head.method
        let client = ForwardedClient(peer: responder.peer, head: head, trusted: options.trustedProxies)
        if path != "/healthz", path != "/metrics", let refusal = checkHost(client.requestedHost) { return responder.respond(refusal) }
        switch (method, path) {
        case ("GET", "/v1/lease"):
            guard !shuttingDown.isSet else { return responder.respond(.text(503, "server shutting down\n")) }
            if let refusal = checkOrigin(head, client, endpoint: path) { return responder.respond(refusal) }
            var tokenName: String?
            if let tokens = options.leaseTokens {
                switch Self.leaseTokenName(head, tokens) {
                case .success(let name): tokenName = name
                case .failure(let refusal): return responder.respond(refusal.response)
                }
            }
            let session = LeaseSession(service: service, peer: client.peer, peerHost: client.host,
                                       requestTimeout: options.requestTimeout, tokenName: tokenName,
                                       clientCertificate: responder.tlsClientSubject.map {
                                           .init(subject: $0, name: responder.tlsClientName ?? $0)
                                       })
            responder.upgradeToWebSocket(handler: session)
        case ("GET", "/v1/watch"):
            if let refusal = checkOrigin(head, client, endpoint: path) { return responder.respond(refusal) }
            responder.upgradeToWebSocket(handler: WatchSession(hub: service.watch, hubQueue: service.queue, slots: watchers))
        case ("GET", "/v1/history"):
            answerHistory(query: head.query, responder: responder)
        case ("GET", "/v1/usage"):
            answerUsage(query: head.query, responder: responder)
        case ("GET", "/v1/status"):
            service.queue.async { [service] in
                let render = service.statusRenderer()
                DispatchQueue.global().async { responder.respond(.json(200, bytes: SharedMessage(textPieces: render()).payload)) }
            }
        case ("GET", "/healthz"):
            if shuttingDown.isSet { return responder.respond(.text(503, "shutting down\n")) }
            if let store = service.store, !store.isHealthy {
                return responder.respond(.text(503, "the lease state cannot be written; grants are held back (see the log)\n"))
            }
            responder.respond(.text(200, "ok\n"))
        case ("GET", "/metrics"):
            let connections = http.openConnections
            service.queue.async { [service] in
                responder.respond(.text(200, service.metricsText(connections: connections),
                                        contentType: "text/plain; version=0.0.4; charset=utf-8"))
            }
        case ("GET", "/"):
            let query = head.query
            service.queue.async { [service, clock] in
                let snapshot = service.snapshot()
                // Render off the lease queue: a big lab's page takes a while to write.
                DispatchQueue.global().async {
                    responder.respond(StatusPage.response(snapshot, clock: clock, query: query))
                }
            }
        case ("GET", _) where path.hasPrefix("/static/"):
            responder.respond(StatusPage.assetResponse(path: path, query: head.query, headers: head.headers))
        case ("GET", "/v1/admin"):
            // Beyond PROTOCOL.md: whether a token is the admin token, changing nothing (the page
            // checks a token when it is entered).
            if let refusal = authorize(head) { return responder.respond(refusal) }
            responder.respond(.json(200, JSONValue.object([("ok", .bool(true))]).serialized()))
        case ("POST", "/v1/reload"):
            if let refusal = authorize(head) { return responder.respond(refusal) }
            let peer = client.peer
            reload { [logger, service] result in
                switch result {
                case .success(let message):
                    logger.notice("admin reload", metadata: ["connection.peer": .string(peer)])
                    service.journal?.record([("event", .string("admin")), ("action", .string("reload")), ("peer", .string(peer))])
                    responder.respond(.json(200, JSONValue.object([("ok", .bool(true)), ("message", .string(message))]).serialized()))
                case .failure(let error):
                    logger.warning("admin reload refused", metadata: ["connection.peer": .string(peer), "reason": .string(error.message)])
                    responder.respond(.jsonError(400, error.message))
                }
            }
        default:
            if method == "POST", path.hasPrefix("/v1/resources/") {
                // The token first: without it, nothing about the name is answered (PROTOCOL.md: 401 before any 404).
                if let refusal = authorize(head) { return responder.respond(refusal) }
                guard let (name, action) = Self.adminResourceRoute(path) else {
                    return responder.respond(.jsonError(404, "no such admin route: \(path) (POST /v1/resources/NAME/free, disable, enable or reset)"))
                }
                handleAdmin(action: action, resource: name, body: request.body, peer: client.peer, responder: responder)
            } else if method == "GET", let (name, action) = Self.adminResourceRoute(path), action == "reset" {
                // The latest reset's outcome and output (which may name credentials: admins only).
                if let refusal = authorize(head) { return responder.respond(refusal) }
                service.queue.async { [service] in
                    guard let reset = service.latestReset(name) else {
                        return responder.respond(.jsonError(404, "no reset of '\(name)' has run since the server started"))
                    }
                    responder.respond(.json(200, reset.serialized()))
                }
            } else if Self.adminResourceRoute(path) != nil {
                responder.respond(.methodNotAllowed("POST"))
            } else if ["/v1/lease", "/v1/watch", "/v1/status", "/healthz", "/metrics", "/", "/v1/admin", "/v1/history", "/v1/usage"].contains(path) {
                responder.respond(.methodNotAllowed("GET"))
            } else if path == "/v1/reload" {
                responder.respond(.methodNotAllowed("POST"))
            } else {
                responder.respond(.text(404, "no such route: \(path)\n"))
            }
        }
    }

    /// `/v1/resources/{name}/{free|disable|enable}` → (name, action).
    static func adminResourceRoute(_ path: String) -> (String, String)? {
        let prefix = "/v1/resources/"
        guard path.hasPrefix(prefix) else { return nil }
        let rest = path.dropFirst(prefix.count)
        guard let slash = rest.lastIndex(of: "/") else { return nil }
        let action = String(rest[rest.index(after: slash)...])
        guard ["free", "disable", "enable", "reset"].contains(action),
              let name = percentDecode(String(rest[..<slash])), !name.isEmpty else { return nil }
        return (name, action)
    }

    /// Call once `authorize` passed.
    private func handleAdmin(action: String, resource: String, body: [UInt8], peer: String, responder: HTTPResponder) {
        var reason = ""
        var immediately = false
        if !body.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) {
            guard let value = try? JSONValue.parse(body), case .object = value else {
                return responder.respond(.jsonError(400, "the body must be JSON like {\"reason\": \"text\"}"))
            }
            switch value["reason"] {
            case .none, .some(.null): break
            case .some(.string(let text)):
                guard text.unicodeScalars.count <= 500 else { return responder.respond(.jsonError(400, "\"reason\" is longer than 500 characters")) }
                reason = text
            default: return responder.respond(.jsonError(400, "\"reason\" must be a string"))
            }
            switch value["now"] {
            case .none, .some(.null): break
            case .some(.bool(let flag)): immediately = flag
            default: return responder.respond(.jsonError(400, "\"now\" must be true or false"))
            }
        }
        if action == "reset" {
            return service.adminReset(resource) { [logger, service, reason] result in
                switch result {
                case .started:
                    logger.notice("admin action", metadata: ["action": "reset", "resource.name": .string(resource), "connection.peer": .string(peer)])
                    service.journal?.record([("event", .string("admin")), ("action", .string("reset")), ("resource", .string(resource)),
                                             ("reason", .string(reason)), ("peer", .string(peer))])
                    responder.respond(.json(200, JSONValue.object([
                        ("ok", .bool(true)), ("resource", .string(resource)), ("action", .string("reset")),
                    ]).serialized()))
                case .notFound:
                    responder.respond(.jsonError(404, "no resource named '\(resource)'"))
                case .conflict(let why):
                    responder.respond(.jsonError(409, why))
                }
            }
        }
        let coreAction: LeaseService.AdminAction
        switch action {
        case "free": coreAction = .free(reason: reason.isEmpty ? "freed by an admin" : reason, now: immediately)
        case "disable": coreAction = .disable(reason: reason.isEmpty ? Disabling.byAdmin : reason)
        default: coreAction = .enable
        }
        service.admin(coreAction, resource: resource, by: peer) { [logger, reason, service] result in
            switch result {
            case .ok:
                logger.notice("admin action", metadata: [
                    "action": .string(action), "resource.name": .string(resource), "reason": .string(reason), "connection.peer": .string(peer),
                ])
                service.journal?.record([
                    ("event", .string("admin")), ("action", .string(action)), ("resource", .string(resource)),
                    ("reason", .string(reason)), ("peer", .string(peer)),
                ])
                responder.respond(.json(200, JSONValue.object([
                    ("ok", .bool(true)), ("resource", .string(resource)), ("action", .string(action)),
                ]).serialized()))
            case .notFound:
                responder.respond(.jsonError(404, "no resource named '\(resource)'"))
            case .notHeld:
                responder.respond(.jsonError(409, "'\(resource)' is not held, so there is no lease to free"))
            }
        }
    }

    struct Refusal: Error { let response: HTTPResponse }

    /// The name of the lease token the request carries (`Authorization: Bearer`, else `?token=`),
    /// or the 401 that says what is missing.
    static func leaseTokenName(_ head: HTTPRequestHead, _ tokens: LeaseTokens) -> Result<String, Refusal> {
        let header = head.headers["Authorization"] ?? ""
        var presented = header.prefix(7).lowercased() == "bearer " ? String(header.dropFirst(7)).trimmingSpaces() : ""
        if presented.isEmpty { presented = StatusPage.formValue("token", in: head.query) ?? "" }
        if !presented.isEmpty, let name = tokens.name(for: presented) { return .success(name) }
        var response = HTTPResponse.text(401, presented.isEmpty
            ? "this server leases only to holders of a lease token: send Authorization: Bearer TOKEN (or ?token=TOKEN); leasehold hold and the Python client read LEASEHOLD_LEASE_TOKEN\n"
            : "unknown lease token\n")
        response.headers.add(name: "WWW-Authenticate", value: "Bearer realm=\"leasehold\"")
        return .failure(Refusal(response: response))
    }

    /// nil when the request carries the admin token.
    private func authorize(_ head: HTTPRequestHead) -> HTTPResponse? {
        guard let token = options.adminToken else {
            return .jsonError(403, "admin calls are disabled: start the server with --admin-token-file FILE or the LEASEHOLD_ADMIN_TOKEN environment variable, then send Authorization: Bearer TOKEN")
        }
        let header = head.headers["Authorization"] ?? ""
        let scheme = header.prefix(7).lowercased()
        let presented = scheme == "bearer " ? String(header.dropFirst(7)).trimmingSpaces() : ""
        guard !presented.isEmpty, constantTimeEquals(presented, token) else {
            var response = HTTPResponse.jsonError(401, header.isEmpty ? "admin calls need Authorization: Bearer TOKEN" : "wrong admin token")
            response.headers.add(name: "WWW-Authenticate", value: "Bearer realm=\"leasehold\"")
            return response
        }
        return nil
    }

    /// A WebSocket from a browser page of another site is refused, so a page opened on a lab
    /// machine can neither hold the lab's hardware nor read its state through the visitor's
    /// network position. Tools send no `Origin`; sandboxed pages and files send "null".
    private func checkOrigin(_ head: HTTPRequestHead, _ client: ForwardedClient, endpoint: String) -> HTTPResponse? {
        guard let origin = head.headers["Origin"] else { return nil }
        let allowed = options.allowedOrigins + (options.publicURL.flatMap(Self.origin).map { [$0] } ?? [])
        if allowed.contains(origin) || (origin != "null" && allowed.contains("*")) { return nil }
        // The server's own pages: the requested host has passed `checkHost`, so this is not a
        // rebound name.
        // Through a proxy that says which scheme the page was served under, the scheme counts too.
        if origin != "null", let host = client.requestedHost, let scheme = origin.range(of: "://"),
           client.requestedScheme.map({ origin.lowercased().hasPrefix($0 + "://") }) ?? true,
           origin[scheme.upperBound...].lowercased() == host.lowercased() {
            return nil
        }
        return .text(403, "origin \(origin) may not use \(endpoint) on this server (allow it with --allow-origin)\n")
    }

    /// DNS rebinding: a page whose own name was made to resolve to this server is same-origin with
    /// it, and the browser sends that name as `Host`. Only names the server goes by are served.
    private func checkHost(_ requestedHost: String?) -> HTTPResponse? {
        guard let host = requestedHost, !hostNames.contains("*") else { return nil }
        let name = Self.name(ofAuthority: host)
        if hostNames.contains(name) || name == "localhost" || name.hasSuffix(".localhost") || Self.isAddressLiteral(name) {
            return nil
        }
        return .text(403, "host '\(host)' is not a name of this server (add it with --allow-host)\n")
    }

    /// `https://lab.example:8443/sub/` → `lab.example:8443`; nil without a scheme.
    static func authority(ofURL url: String) -> String? {
        guard let scheme = url.range(of: "://") else { return nil }
        let rest = url[scheme.upperBound...]
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        return authority.isEmpty ? nil : String(authority)
    }

    /// `https://lab.example/sub/` → `https://lab.example` (what a browser sends as `Origin`).
    public static func origin(_ url: String) -> String? {
        guard let scheme = url.range(of: "://"), let authority = authority(ofURL: url) else { return nil }
        return url[..<scheme.lowerBound].lowercased() + "://" + authority.lowercased()
    }

    static func hostNames(allowed: [String]) -> Set<String> {
        var names = Set(allowed.map { $0.lowercased() })
        var buffer = [CChar](repeating: 0, count: 256)
        if gethostname(&buffer, buffer.count - 1) == 0 {
            let machine = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).lowercased()
            names.insert(machine)
            if let dot = machine.firstIndex(of: ".") { names.insert(String(machine[..<dot])) }
        }
        return names
    }

    /// `Host` without its port, lowercased: `lab.example:7400` → `lab.example`, `[::1]:7400` → `::1`.
    static func name(ofAuthority authority: String) -> String {
        let text = authority.lowercased()
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            return String(text[text.index(after: text.startIndex)..<close])
        }
        if let colon = text.lastIndex(of: ":") { return String(text[..<colon]) }
        return text
    }

    static func isAddressLiteral(_ name: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, name, &v4) == 1 || inet_pton(AF_INET6, name, &v6) == 1
    }
}

public struct StartupError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// Whether the server is stopping: the one place that fact is kept, read by routes on the loops
/// and by the lease service (a lease that ends from then on ends because the server stops).
final class ShutdownFlag: Sendable {
    private let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .acquiring) }
    func set() { value.store(true, ordering: .releasing) }
}

extension HTTPResponse {
    static func json(_ status: Int, _ text: String) -> HTTPResponse {
        .text(status, text + "\n", contentType: "application/json")
    }

    static func json(_ status: Int, bytes: [UInt8]) -> HTTPResponse {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        return HTTPResponse(status: status, headers: headers, body: bytes + [UInt8(ascii: "\n")])
    }

    static func jsonError(_ status: Int, _ message: String) -> HTTPResponse {
        json(status, JSONValue.object([("error", .string(message))]).serialized())
    }

    static func methodNotAllowed(_ allow: String) -> HTTPResponse {
        var response = HTTPResponse.text(405, "method not allowed here; use \(allow)\n")
        response.headers.add(name: "Allow", value: allow)
        return response
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
func constantTimeEquals(_ a: String, _ b: String) -> Bool {
    constantTimeEquals(Array(a.utf8), Array(b.utf8))
}

func constantTimeEquals(_ left: [UInt8], _ right: [UInt8]) -> Bool {
    var difference = UInt8(truncatingIfNeeded: left.count ^ right.count)
    for index in 0..<max(left.count, right.count) {
        let x = index < left.count ? left[index] : 0
        let y = index < right.count ? right[index] : 0
        difference |= x ^ y
    }
    return difference == 0 && left.count == right.count
}

func percentDecode(_ text: String) -> String? {
    var bytes: [UInt8] = []
    var iterator = Array(text.utf8).makeIterator()
    while let byte = iterator.next() {
        if byte == UInt8(ascii: "%") {
            guard let high = iterator.next(), let low = iterator.next(),
                  let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16) else { return nil }
            bytes.append(value)
        } else {
            bytes.append(byte)
        }
    }
    return String(validating: bytes, as: UTF8.self)
}

public struct FileReadError: Error, CustomStringConvertible {
    public let description: String
}

/// Reads a whole UTF-8 text file, at most `limit` bytes (an inventory is not gigabytes, a token
/// file is a line).
public func readTextFile(_ path: String, limit: Int = 64 << 20) throws(FileReadError) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw FileReadError(description: String(cString: strerror(errno))) }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 {
            if errno == EINTR { continue }
            throw FileReadError(description: String(cString: strerror(errno)))
        }
        if count == 0 { break }
        bytes.append(contentsOf: chunk[0..<count])
        guard bytes.count <= limit else { throw FileReadError(description: "file larger than \(limit) bytes") }
    }
    guard let text = String(validating: bytes, as: UTF8.self) else { throw FileReadError(description: "not UTF-8 text") }
    return text
}

extension String {
    func trimmingSpaces() -> String {
        var view = Substring(self)
        while let first = view.first, first == " " || first == "\t" { view = view.dropFirst() }
        while let last = view.last, last == " " || last == "\t" { view = view.dropLast() }
        return String(view)
    }
}
