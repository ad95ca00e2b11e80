import HTTPCodec
import Transport

/// Who a request comes from and which origin it was made to, seen through the proxies the server
/// trusts (`--trusted-proxy`). From any other peer, forwarded headers are ignored: anyone can
/// write them.
struct ForwardedClient: Equatable {
    /// The client's address without a port: what per-address limits count, and what the status
    /// shows. For a direct peer, with its port.
    var peer: String
    var host: String
    /// The `Host` the client asked for (`X-Forwarded-Host` through a trusted proxy).
    var requestedHost: String?
    /// The scheme the client used, when a trusted proxy says (`X-Forwarded-Proto`); nil otherwise.
    var requestedScheme: String?

    init(peer: SocketAddress, head: HTTPRequestHead, trusted: [AddressRange]) {
        self.peer = peer.description
        host = peer.host
        requestedHost = head.headers["Host"]
        guard trusted.contains(where: { $0.contains(peer.host) }) else { return }
        if let forwardedHost = head.headers["X-Forwarded-Host"]?.split(separator: ",").first {
            requestedHost = forwardedHost.trimmingWhitespace()
        }
        if let proto = head.headers["X-Forwarded-Proto"]?.split(separator: ",").first?.trimmingWhitespace().lowercased(),
           proto == "http" || proto == "https" {
            requestedScheme = proto
        }
        // The nearest hop that is not a trusted proxy is the client (RFC 7239 section 7.4).
        let hops = Self.forwardedFor(head)
        guard let client = hops.last(where: { hop in !trusted.contains { $0.contains(hop) } }) ?? hops.first else { return }
        self.peer = client
        host = client
    }

    /// The addresses in `X-Forwarded-For`, or else in `Forwarded: for=`, nearest last; entries
    /// that are not IP addresses (`unknown`, obfuscated names) end the list there.
    static func forwardedFor(_ head: HTTPRequestHead) -> [String] {
        var entries: [String] = []
        if let header = head.headers["X-Forwarded-For"] {
            entries = header.split(separator: ",").map { $0.trimmingWhitespace() }
        } else if let header = head.headers["Forwarded"] {
            for element in header.split(separator: ",") {
                for pair in element.split(separator: ";") {
                    let parts = pair.split(separator: "=", maxSplits: 1)
                    guard parts.count == 2, parts[0].trimmingWhitespace().lowercased() == "for" else { continue }
                    entries.append(Self.address(ofForwardedNode: parts[1].trimmingWhitespace()))
                }
            }
        }
        // Only a trailing run of real addresses can be believed: past a bad entry, anything goes.
        var addresses: [String] = []
        for entry in entries.reversed() {
            guard (try? AddressRange(parsing: entry)) != nil, !entry.contains("/") else { break }
            addresses.insert(entry, at: 0)
        }
        return addresses
    }

    /// `"[2001:db8::1]:4711"` → `2001:db8::1`, `192.0.2.1:80` → `192.0.2.1`.
    static func address(ofForwardedNode node: String) -> String {
        var text = Substring(node)
        if text.hasPrefix("\""), text.hasSuffix("\""), text.count >= 2 { text = text.dropFirst().dropLast() }
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            return String(text[text.index(after: text.startIndex)..<close])
        }
        if text.filter({ $0 == ":" }).count == 1, let colon = text.firstIndex(of: ":") { return String(text[..<colon]) }
        return String(text)
    }
}

extension Substring {
    func trimmingWhitespace() -> String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
