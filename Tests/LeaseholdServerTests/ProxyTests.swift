import Foundation
import HTTPCodec
import LeaseProtocol
@testable import LeaseholdServer
import Testing
import Transport

/// Behind a reverse proxy (`--trusted-proxy`, `--public-url`): forwarded headers are believed from
/// trusted proxies only.
@Suite struct ProxyTests {
    static func head(_ headers: [(String, String)]) throws -> HTTPRequestHead {
        var text = "GET /v1/status HTTP/1.1\r\n"
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        var parser = HTTPRequestParser()
        parser.feed(Array((text + "\r\n").utf8))
        guard let request = try parser.nextRequest() else { throw TestFailure("no request parsed") }
        return request.head
    }

    static let proxy = try! SocketAddress(host: "10.0.0.5", port: 40000)
    static let trusted = [try! AddressRange(parsing: "10.0.0.0/24"), try! AddressRange(parsing: "::1")]

    @Test func addressRangesMatchByPrefixAndIPv4AlsoInItsMappedForm() throws {
        let block = try AddressRange(parsing: "192.168.4.0/22")
        #expect(block.contains("192.168.7.255"))
        #expect(!block.contains("192.168.8.0"))
        #expect(block.contains("::ffff:192.168.5.1"), "a dual-stack listener's name for an IPv4 peer")
        #expect(try AddressRange(parsing: "fd00::/8").contains("fd12::1"))
        #expect(!(try AddressRange(parsing: "fd00::/8").contains("fe80::1")))
        #expect(try AddressRange(parsing: "127.0.0.1").contains("127.0.0.1"))
        #expect(!(try AddressRange(parsing: "127.0.0.1").contains("127.0.0.2")))
        #expect(try AddressRange(parsing: "0.0.0.0/0").contains("203.0.113.9"))
        for bad in ["lab.example", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/x", ""] {
            #expect(throws: AddressError.self, "\(bad)") { try AddressRange(parsing: bad) }
        }
    }

    @Test func theNearestUntrustedHopIsTheClient() throws {
        // A client may write its own X-Forwarded-For: only what trusted proxies appended counts.
        let head = try Self.head([("Host", "127.0.0.1"), ("X-Forwarded-For", "6.6.6.6, 203.0.113.7, 10.0.0.9")])
        let client = ForwardedClient(peer: Self.proxy, head: head, trusted: Self.trusted)
        #expect(client.host == "203.0.113.7")
        #expect(client.peer == "203.0.113.7")
    }

    @Test func forwardedHeadersFromAnUntrustedPeerAreIgnored() throws {
        let head = try Self.head([("Host", "127.0.0.1:7400"), ("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Host", "lab.example")])
        let direct = try SocketAddress(host: "198.51.100.3", port: 5555)
        let client = ForwardedClient(peer: direct, head: head, trusted: Self.trusted)
        #expect(client.host == "198.51.100.3")
        #expect(client.peer == direct.description)
        #expect(client.requestedHost == "127.0.0.1:7400")
    }

    @Test func theForwardedHeaderIsReadWhenThereIsNoXForwardedFor() throws {
        let head = try Self.head([("Host", "x"), ("Forwarded", #"for=192.0.2.60;proto=https, for="[2001:db8::17]:4711""#), ("X-Forwarded-Host", "lab.example")])
        let client = ForwardedClient(peer: Self.proxy, head: head, trusted: Self.trusted)
        #expect(client.host == "2001:db8::17")
        #expect(client.requestedHost == "lab.example")
    }

    @Test func aGarbledHopEndsWhatIsBelieved() throws {
        // Past an entry that is no address, nothing further out can be trusted: the proxy's own
        // address stands.
        let head = try Self.head([("Host", "x"), ("X-Forwarded-For", "unknown")])
        let client = ForwardedClient(peer: Self.proxy, head: head, trusted: Self.trusted)
        #expect(client.host == "10.0.0.5")
    }

    @Test func throughATrustedProxyThePageWatchesAndLeasesShowTheRealClient() async throws {
        let server = try TestServer {
            $0.trustedProxies = [try! AddressRange(parsing: "127.0.0.1/32")]
            $0.publicURL = "https://lab.example"
            $0.maxConnectionsPerAddress = 1
        }
        // What nginx sends for the page's live view (the client adds Host: 127.0.0.1:PORT, the
        // name the proxy dialled): the public origin and host, the real client.
        let proxied = [("Origin", "https://lab.example"),
                       ("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Host", "lab.example"), ("X-Forwarded-Proto", "https")]
        let watcher = try await WSClient.connect(port: server.port, path: "/v1/watch", headers: proxied)
        _ = try await watcher.expectEvent("snapshot")
        // Two connections from the proxy's one address although the per-address limit is 1.
        let holder = try await WSClient.connect(port: server.port, path: "/v1/lease", headers: proxied)
        holder.send(acquireJSON(#"[{"name":"switch-01"}]"#))
        _ = try await holder.expectEvent("granted")
        let status = try await server.status()
        #expect(status["leases"]?.arrayValue?.first?["peer"] == .string("203.0.113.7"))
        // The page's own host under another scheme than the proxy served it with is not the page.
        let downgraded = [("Host", "127.0.0.1:\(server.port)"), ("Origin", "http://lab2.example"),
                          ("X-Forwarded-Host", "lab2.example"), ("X-Forwarded-Proto", "https")]
        let other = try TestServer {
            $0.trustedProxies = [try! AddressRange(parsing: "127.0.0.1/32")]
            $0.allowedHosts = ["lab2.example"]
        }
        #expect(try await other.http("GET", "/v1/watch", headers: HardeningTests.upgrade + downgraded.map { $0.0 == "Host" ? ("Host", "127.0.0.1:\(other.port)") : $0 }).status == 403)
        let same = try await WSClient.connect(port: other.port, path: "/v1/watch", headers: [
            ("Origin", "https://lab2.example"), ("X-Forwarded-Host", "lab2.example"), ("X-Forwarded-Proto", "https"),
        ])
        same.close()
        await other.stop()
        // Another site's page is still refused, forwarded or not.
        let foreign = [("Host", "127.0.0.1:\(server.port)")] + proxied.map { $0.0 == "Origin" ? ("Origin", "https://evil.example") : $0 }
        #expect(try await server.http("GET", "/v1/watch", headers: HardeningTests.upgrade + foreign).status == 403)
        holder.close()
        watcher.close()
        await server.stop()
    }

    @Test func withoutTrustTheSameRequestsAreRefusedAndThePeerIsTheSocket() async throws {
        let server = try TestServer { $0.trustedProxies = [try! AddressRange(parsing: "10.9.9.9/32")] }
        let proxied = [("Host", "127.0.0.1:\(server.port)"), ("Origin", "https://lab.example"),
                       ("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Host", "lab.example")]
        #expect(try await server.http("GET", "/v1/watch", headers: HardeningTests.upgrade + proxied).status == 403)
        let holder = try await WSClient.connect(port: server.port, path: "/v1/lease", headers: [("X-Forwarded-For", "203.0.113.7")])
        holder.send(acquireJSON(#"[{"name":"switch-01"}]"#))
        _ = try await holder.expectEvent("granted")
        let peer = try await server.status()["leases"]?.arrayValue?.first?["peer"]?.stringValue ?? ""
        #expect(peer.hasPrefix("127.0.0.1:"), "\(peer)")
        holder.close()
        await server.stop()
    }
}
