import Transport

/// Where the server is: `ws://HOST[:PORT][/PREFIX]` (also `wss://`, `http://`, `https://`, or a bare
/// `HOST:PORT`). The port defaults to 7400, the server's default, for every scheme.
public struct ServerURL: Sendable, Equatable, CustomStringConvertible {
    public static let defaultPort: UInt16 = 7400
    public static let defaultText = "ws://127.0.0.1:7400"

    public let host: String
    public let port: UInt16
    /// Whether the URL asks for TLS (`wss://` or `https://`).
    public let tls: Bool
    /// A path prefix in front of `/v1/...` (for a server behind a reverse proxy); "" normally.
    public let pathPrefix: String
    /// For `wss://`/`https://`: what to trust (default: the system's store) and the client
    /// certificate to show (mutual TLS).
    public var trust = TLSClientConfiguration()

    public init(host: String, port: UInt16 = ServerURL.defaultPort, tls: Bool = false, pathPrefix: String = "") {
        self.host = host
        self.port = port
        self.tls = tls
        self.pathPrefix = pathPrefix
    }

    public init(parsing text: String) throws(LeaseholdError) {
        func bad(_ problem: String) -> LeaseholdError { .invalidServerURL(text, problem) }
        var rest = Substring(text.trimmingSpaces())
        var tls = false
        if let schemeEnd = rest.firstRange(of: "://") {
            switch rest[..<schemeEnd.lowerBound].lowercased() {
            case "ws", "http": tls = false
            case "wss", "https": tls = true
            case let other: throw bad("unknown scheme '\(other)' (use ws:// or wss://)")
            }
            rest = rest[schemeEnd.upperBound...]
        }
        var prefix = ""
        if let slash = rest.firstIndex(of: "/") {
            prefix = String(rest[slash...])
            rest = rest[..<slash]
            while prefix.hasSuffix("/") { prefix.removeLast() }
        }
        guard !rest.isEmpty else { throw bad("no host") }
        guard !rest.contains("@"), !rest.contains("?"), !prefix.contains("?"), !prefix.contains("#") else {
            throw bad("user info, queries and fragments are not supported")
        }
        var host: String
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw bad("missing ']' after the IPv6 address") }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw bad("expected ':PORT' after ']'") }
                portText = after.dropFirst()
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            portText = rest[rest.index(after: colon)...]
        } else {
            host = String(rest)
        }
        guard !host.isEmpty else { throw bad("no host") }
        var port = ServerURL.defaultPort
        if let portText {
            guard let parsed = UInt16(portText), parsed > 0 else { throw bad("the port must be 1-65535") }
            port = parsed
        }
        host = host.lowercased() == "localhost" ? "127.0.0.1" : host
        self.init(host: host, port: port, tls: tls, pathPrefix: prefix)
    }

    /// `HOST:PORT` as it goes into a Host header or an address (IPv6 in brackets).
    public var authority: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public var description: String { "\(tls ? "wss" : "ws")://\(authority)\(pathPrefix)" }

    /// The HTTP form of the same address, for messages that point at the status page.
    public var httpDescription: String { "\(tls ? "https" : "http")://\(authority)\(pathPrefix)/" }

    public func path(_ path: String) -> String { pathPrefix + path }
}

extension String {
    func trimmingSpaces() -> String {
        var view = Substring(self)
        while let first = view.first, first == " " || first == "\t" || first == "\n" || first == "\r" { view = view.dropFirst() }
        while let last = view.last, last == " " || last == "\t" || last == "\n" || last == "\r" { view = view.dropLast() }
        return String(view)
    }
}

extension ServerURL {
    /// The TLS context for this address; nil for ws:// and http://.
    func tlsContext() throws(LeaseholdError) -> TLSClientContext? {
        guard tls else { return nil }
        do {
            return try TLSClientContext(trust)
        } catch {
            throw .tls(self, error.message)
        }
    }
}
