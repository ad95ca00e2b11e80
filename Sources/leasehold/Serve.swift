import ArgumentParser
import Dispatch
import LeaseholdServer
import Logging
import Transport
#if canImport(Glibc)
import Glibc
#endif

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the lease server.",
        discussion: """
            Prints one line per listener on stdout (`leasehold listening on HOST:PORT`), then logs to \
            stderr. Listening sockets passed by systemd (socket activation: LISTEN_FDS) are served \
            too, and then the default address is not bound. SIGHUP re-reads the inventory; SIGTERM \
            closes every connection with 1001 and exits 0 (with --state-dir: with 1012, keeping \
            every lease for the next start).
            """
    )

    @Option(name: .long, help: ArgumentHelp("Address to listen on (repeatable).", valueName: "host:port"))
    var listen: [String] = []

    @Option(name: .long, help: "Inventory YAML file (PROTOCOL.md, \"Inventory\").")
    var inventory: String = "deploy/lab-inventory.yaml"

    @Option(name: .long, help: "Seconds of silence after which the server pings a connection.")
    var pingInterval: Double = 15

    @Option(name: .long, help: "Seconds without any traffic (not even a pong) after which a connection is closed and its lease freed.")
    var deadAfter: Double = 45

    @Option(name: .long, help: "Seconds a new /v1/lease connection has to send its acquire request.")
    var requestTimeout: Double = 30

    @Option(name: .long, help: "Largest WebSocket message accepted, in bytes.")
    var maxMessageSize: Int = 64 * 1024

    @Option(name: .long, help: "Pings one client may send a second; beyond, its connection closes with 1008.")
    var maxPingsPerSecond: Int = 20

    @Option(name: .long, help: "Open connections at most; beyond, new ones get 503 (bounded by the descriptor limit too).")
    var maxConnections: Int = 100_000

    @Option(name: .long, help: "Open connections from one client address at most; beyond, 429. Raise it behind a proxy.")
    var maxConnectionsPerAddress: Int = 4096

    @Option(name: .long, help: "Open /v1/watch streams at most; beyond, a new one closes with 1013.")
    var maxWatchers: Int = 1000

    @Option(name: .long, help: "Waiters at most; beyond, a request that cannot be granted at once fails with wait_timeout (4408).")
    var maxWaiters: Int = 10_000

    @Option(name: .long, help: "Waiters from one client address at most (as --max-waiters).")
    var maxWaitersPerAddress: Int = 2_000

    @Option(name: .long, help: "File holding the admin bearer token (or set LEASEHOLD_ADMIN_TOKEN). Without one, admin calls answer 403.")
    var adminTokenFile: String?

    @Option(name: .long, help: "File of NAME TOKEN lines: /v1/lease then needs one of the tokens (Authorization: Bearer, or ?token=), and holders are prefixed NAME/. Off by default.")
    var leaseTokenFile: String?

    @Option(name: .long, help: "Origin (scheme://host:port) whose pages may open /v1/lease and /v1/watch besides the server's own (repeatable; * for any but null).")
    var allowOrigin: [String] = []

    @Option(name: .long, help: "Host name the server is reached by, besides IP addresses, localhost and this machine's name (repeatable; * for any). Requests naming another host get 403.")
    var allowHost: [String] = []

    @Option(name: .long, help: ArgumentHelp("A proxy (address or CIDR block) whose X-Forwarded-For/Forwarded, X-Forwarded-Host and X-Forwarded-Proto headers are believed; it is also exempt from --max-connections-per-address (repeatable). Everyone else's forwarded headers are ignored.", valueName: "cidr"))
    var trustedProxy: [String] = []

    @Option(name: .long, help: ArgumentHelp("The URL people open the status page at through a proxy (https://lab.example): its origin may use /v1/watch and /v1/lease, and its host is a name of this server.", valueName: "url"))
    var publicURL: String?

    @Option(name: .long, help: "File keeping fencing epochs growing across restarts (created if missing). Without it, epochs start at 0 on every start.")
    var epochFile: String?

    @Option(name: .long, help: "Audit journal: JSON lines for every grant (with meta), lease end and admin action, appended to FILE (with --state-dir the default is DIR/audit.jsonl). GET /v1/history and /v1/usage read it.")
    var auditFile: String?

    @Option(name: .long, help: ArgumentHelp("Rotate the audit journal once it would grow past this many bytes (0: never).", valueName: "bytes"))
    var auditMaxBytes: Int64 = 256 << 20

    @Option(name: .long, help: "Rotated audit journal files kept (FILE.1 … FILE.N); history spans them.")
    var auditKeep: Int = 4

    @Flag(name: .long, help: "No audit journal even with --state-dir.")
    var noAudit = false

    @Option(name: .long, help: ArgumentHelp("Directory where leases, waiters and fencing epochs outlive the process (created if missing): a stop by SIGTERM closes connections with 1012 and the next start restores every lease for its client to resume; a crash restores them too. Without it, a stop ends every lease.", valueName: "dir"))
    var stateDir: String?

    @Option(name: .long, help: "Seconds a lease kept over a restart waits for its client to resume it.")
    var resumeGrace: Double = 60

    @Option(name: .long, help: "The largest grace (seconds a lease survives a dropped connection) an acquire may ask for.")
    var maxGrace: Double = 300

    @Option(name: .long, help: "The largest revoke_wait (seconds a revoked lease keeps its resources while its client stops) honoured; more is capped.")
    var maxRevokeWait: Double = 60

    @Option(name: .long, help: "Reset commands (the inventory's reset) running at once; the rest wait their turn.")
    var resetConcurrency: Int = 4

    @Option(name: .long, help: ArgumentHelp("Address to serve TLS on (https://, wss://; repeatable, beside --listen). Needs --tls-cert and --tls-key.", valueName: "host:port"))
    var listenTls: [String] = []

    @Option(name: .long, help: ArgumentHelp("PEM certificate for --listen-tls, the chain after it allowed; re-read on SIGHUP.", valueName: "file"))
    var tlsCert: String?

    @Option(name: .long, help: ArgumentHelp("PEM private key of --tls-cert; re-read on SIGHUP.", valueName: "file"))
    var tlsKey: String?

    @Option(name: .long, help: ArgumentHelp("PEM CA certificates: TLS clients must then show a certificate they issued (mutual TLS); its common name is the lease's default holder.", valueName: "file"))
    var tlsClientCa: String?

    @Option(name: .long, help: ArgumentHelp("permessage-deflate (RFC 7692) for WebSocket clients that offer it: on or off.", valueName: "on|off"))
    var compression: String = "on"

    @Option(name: .long, help: "Event loops (serial queues) for connections.")
    var loops: Int = 2

    @Option(name: .long, help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    @Option(name: .long, help: "Log lines as text (TIME LEVEL message key=value…) or json (one object per line). Either way lease.id, lease.holder and connection.peer are fields of their own, and control characters in a value are escaped.")
    var logFormat: String = "text"

    func validate() throws {
        guard LeaseholdLogHandler.Format(rawValue: logFormat) != nil else {
            throw ValidationError("--log-format must be text or json (got '\(logFormat)')")
        }
        if !listenTls.isEmpty, tlsCert == nil || tlsKey == nil {
            throw ValidationError("--listen-tls needs --tls-cert and --tls-key")
        }
        if listenTls.isEmpty, tlsCert != nil || tlsKey != nil || tlsClientCa != nil {
            throw ValidationError("--tls-cert, --tls-key and --tls-client-ca need a --listen-tls address")
        }
        guard compression == "on" || compression == "off" else {
            throw ValidationError("--compression must be on or off")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        try Self.check(pingInterval, "--ping-interval", in: Self.pingIntervalRange)
        try Self.check(deadAfter, "--dead-after", in: Self.deadAfterRange)
        try Self.check(requestTimeout, "--request-timeout", in: Self.requestTimeoutRange)
        try Self.check(resumeGrace, "--resume-grace", in: 0...604_800)
        try Self.check(maxGrace, "--max-grace", in: 0...604_800)
        try Self.check(maxRevokeWait, "--max-revoke-wait", in: 0...86_400)
        guard deadAfter > pingInterval else {
            throw ValidationError("--dead-after must be longer than --ping-interval, or live peers would be dropped")
        }
        guard Self.maxMessageSizeRange.contains(maxMessageSize) else {
            throw ValidationError("--max-message-size must be \(Self.maxMessageSizeRange.lowerBound)-\(Self.maxMessageSizeRange.upperBound) bytes")
        }
        guard (1...64).contains(loops) else { throw ValidationError("--loops must be 1-64") }
        guard (1...256).contains(resetConcurrency) else { throw ValidationError("--reset-concurrency must be 1-256 (got \(resetConcurrency))") }
        guard auditMaxBytes == 0 || auditMaxBytes >= 4096 else { throw ValidationError("--audit-max-bytes must be 0 (never rotate) or at least 4096") }
        guard (0...1000).contains(auditKeep) else { throw ValidationError("--audit-keep must be 0-1000") }
        guard !(noAudit && auditFile != nil) else { throw ValidationError("--no-audit and --audit-file contradict each other") }
        guard (1...10_000).contains(maxPingsPerSecond) else {
            throw ValidationError("--max-pings-per-second must be 1-10000 (got \(maxPingsPerSecond))")
        }
        for (value, flag) in [(maxConnections, "--max-connections"), (maxConnectionsPerAddress, "--max-connections-per-address"),
                              (maxWatchers, "--max-watchers"), (maxWaiters, "--max-waiters"), (maxWaitersPerAddress, "--max-waiters-per-address")] {
            guard (1...10_000_000).contains(value) else { throw ValidationError("\(flag) must be 1-10000000 (got \(value))") }
        }
    }

    static let pingIntervalRange: ClosedRange<Double> = 0.5...3600
    static let deadAfterRange: ClosedRange<Double> = 1...86_400
    static let requestTimeoutRange: ClosedRange<Double> = 0.1...3600
    static let maxMessageSizeRange: ClosedRange<Int> = 1024...(16 << 20)

    /// Seconds within `range` (which also keeps them convertible to a Duration), or a message
    /// that names the flag and the range.
    static func check(_ seconds: Double, _ flag: String, in range: ClosedRange<Double>) throws {
        guard seconds.isFinite, range.contains(seconds) else {
            throw ValidationError("\(flag) must be \(number(range.lowerBound))-\(number(range.upperBound)) seconds (got \(seconds))")
        }
    }

    private static func number(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(value)
    }

    /// A configuration problem found while starting (after the arguments parsed): said as
    /// `leasehold serve: …` with exit 64, without the usage line that only argument errors need.
    struct ServeFailure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    func run() throws {
        do {
            try start()
        } catch let failure as ServeFailure {
            writeStderr("leasehold serve: \(failure.description)\n")
            throw ExitCode(64)
        }
    }

    private func start() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        let format = LeaseholdLogHandler.Format(rawValue: logFormat) ?? .text
        LoggingSystem.bootstrap { label in
            var handler = LeaseholdLogHandler(label: label, format: format)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "leasehold")

        var options = ServerOptions()
        options.inheritedListeners = try Self.socketsFromSystemd()
        options.listen = listen.isEmpty && options.inheritedListeners.isEmpty && listenTls.isEmpty ? ["0.0.0.0:7400"] : listen
        do {
            options.trustedProxies = try trustedProxy.map { text throws(AddressError) in try AddressRange(parsing: text) }
        } catch {
            throw ServeFailure("--trusted-proxy: \(error)")
        }
        if let url = publicURL {
            guard url.hasPrefix("http://") || url.hasPrefix("https://"), LeaseServer.origin(url) != nil else {
                throw ServeFailure("--public-url must be an http:// or https:// URL with a host (got '\(url)')")
            }
            options.publicURL = url
        }
        options.inventoryPath = inventory
        options.pingInterval = .milliseconds(Int64(pingInterval * 1000))
        options.deadAfter = .milliseconds(Int64(deadAfter * 1000))
        options.requestTimeout = .milliseconds(Int64(requestTimeout * 1000))
        options.maxMessageSize = maxMessageSize
        options.maxPingsPerSecond = maxPingsPerSecond
        options.compression = compression == "on"
        options.listenTLS = listenTls
        options.tlsCertificate = tlsCert
        options.tlsKey = tlsKey
        options.tlsClientCA = tlsClientCa
        options.maxConnections = maxConnections
        options.maxConnectionsPerAddress = maxConnectionsPerAddress
        options.maxWatchers = maxWatchers
        options.maxWaiters = maxWaiters
        options.maxWaitersPerAddress = maxWaitersPerAddress
        options.allowedOrigins = allowOrigin
        options.allowedHosts = allowHost
        options.loops = loops
        options.epochFile = epochFile
        options.auditFile = auditFile
        options.auditMaxBytes = auditMaxBytes
        options.auditKeep = auditKeep
        options.auditDisabled = noAudit
        options.stateDirectory = stateDir
        options.resumeGrace = .milliseconds(Int64(resumeGrace * 1000))
        options.maxGrace = maxGrace
        options.maxRevokeWait = maxRevokeWait
        options.resetConcurrency = resetConcurrency
        options.adminToken = try adminToken()
        if let path = leaseTokenFile {
            do {
                options.leaseTokens = try LeaseTokens(parsing: readTextFile(path, limit: 1 << 20))
            } catch let error as LeaseTokens.Problem {
                throw ServeFailure("--lease-token-file \(path), \(error.description)")
            } catch {
                throw ServeFailure("cannot read --lease-token-file \(path): \(error)")
            }
        }

        let server: LeaseServer
        let addresses: [String]
        do {
            server = try LeaseServer(options: options, logger: logger)
            addresses = try server.start().map(\.description)
        } catch {
            throw ServeFailure(error.message)
        }
        // Before the listening lines: whoever reads them may signal at once (a SIGTERM must stop
        // the server cleanly, not kill it).
        installSignalHandlers(server: server, logger: logger)
        for address in addresses {
            writeStdout("leasehold listening on \(address)\n")
        }
        for address in server.tlsAddresses {
            writeStdout("leasehold listening on \(address) (TLS)\n")
        }
        logger.info("serving", metadata: [
            "inventory": .string(inventory), "listen": .string(addresses.joined(separator: " ")),
            "admin": .string(options.adminToken == nil ? "disabled" : "enabled"),
            "lease_tokens": .string(options.leaseTokens.map { $0.names.joined(separator: ",") } ?? "off"),
            // The descriptor limit is raised to its hard limit at start; this is what it allows.
            "connections.max": .stringConvertible(server.connectionCapacity),
        ])
        dispatchMain()
    }

    /// The listening sockets systemd passed (sd_listen_fds(3): descriptors 3… when LISTEN_PID is
    /// this process). The variables are cleared so that nothing this process starts takes them.
    static func socketsFromSystemd() throws -> [Int32] {
        guard let pidText = getenv("LISTEN_PID").map({ String(cString: $0) }),
              let countText = getenv("LISTEN_FDS").map({ String(cString: $0) }) else { return [] }
        defer {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        guard Int32(pidText) == getpid() else { return [] }
        guard let count = Int32(countText), (0...4096).contains(count) else {
            throw ServeFailure("LISTEN_FDS must be a number of descriptors (got '\(countText)')")
        }
        return Array(3..<(3 + count))
    }

    /// A bearer token is one word: a second line or a space would be part of no header a client sends.
    static func checkToken(_ token: String, source: String) throws {
        guard token.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7F }) else {
            throw ServeFailure("\(source) must hold one token on one line, without spaces or control characters")
        }
    }

    private func adminToken() throws -> String? {
        if let path = adminTokenFile {
            let text: String
            do { text = try readTextFile(path, limit: 64 * 1024) } catch {
                throw ServeFailure("cannot read --admin-token-file \(path): \(error.description)")
            }
            let token = text.trimmingCharacters(in: " \t\r\n")
            guard !token.isEmpty else { throw ServeFailure("--admin-token-file \(path) is empty") }
            try Self.checkToken(token, source: "--admin-token-file \(path)")
            return token
        }
        if let value = getenv("LEASEHOLD_ADMIN_TOKEN") {
            let token = String(cString: value).trimmingCharacters(in: " \t\r\n")
            try Self.checkToken(token, source: "LEASEHOLD_ADMIN_TOKEN")
            return token.isEmpty ? nil : token
        }
        return nil
    }
}

nonisolated(unsafe) private var signalSources: [DispatchSourceSignal] = []

private func installSignalHandlers(server: LeaseServer, logger: Logger) {
    // Sockets are written with MSG_NOSIGNAL; this is for a log pipe whose reader went away,
    // which must not take every lease down with the server.
    signal(SIGPIPE, SIG_IGN)
    for number in [SIGTERM, SIGINT, SIGHUP] {
        signal(number, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: number, queue: .main)
        source.setEventHandler {
            if number == SIGHUP {
                server.reload { result in
                    switch result {
                    case .success(let message):
                        logger.notice("reload on SIGHUP", metadata: ["result": .string(message)])
                    case .failure(let error):
                        logger.error("reload on SIGHUP refused; nothing changed", metadata: ["reason": .string(error.message)])
                    }
                }
            } else {
                logger.notice("shutting down", metadata: ["signal": .stringConvertible(number), "close.code": "1001"])
                server.shutdown { exit(0) }
            }
        }
        source.activate()
        signalSources.append(source)
    }
}

func writeStdout(_ text: String) {
    var text = text
    text.withUTF8 { buffer in _ = write(1, buffer.baseAddress, buffer.count) }
}

extension String {
    /// Trims by Unicode scalar: as Characters, "\r\n" is one and a lone "\n" would not match it.
    func trimmingCharacters(in set: String) -> String {
        let trimmed = Set(set.unicodeScalars)
        var view = Substring(self).unicodeScalars
        while let first = view.first, trimmed.contains(first) { view = view.dropFirst() }
        while let last = view.last, trimmed.contains(last) { view = view.dropLast() }
        return String(view)
    }
}
