import Foundation
import LeaseProtocol
@testable import LeaseholdServer
import Testing
import Transport

/// `--lease-token-file`: who may lease.
@Suite struct LeaseTokenTests {
    static let file = """
        # team tokens
        team-a  a-very-long-token-0001

        ci.nightly\tanother-long-token-0002
        """

    @Test func theFileNamesEachTokenAndRefusesWhatCannotWork() throws {
        let tokens = try LeaseTokens(parsing: Self.file)
        #expect(tokens.names == ["team-a", "ci.nightly"])
        #expect(tokens.name(for: "another-long-token-0002") == "ci.nightly")
        #expect(tokens.name(for: "another-long-token-000") == nil)
        #expect(tokens.name(for: "") == nil)
        let refused: [(String, String)] = [
            ("", "nobody could lease"),
            ("# only a comment\n", "nobody could lease"),
            ("team-a\n", "line 1: expected NAME TOKEN, got 1 word"),
            ("team-a tok en-0000000000000\n", "line 1: expected NAME TOKEN, got 3 words"),
            ("team-a short\n", "at least 16"),
            ("team/a a-very-long-token-0001\n", "letters, digits"),
            ("a a-very-long-token-0001\na a-very-long-token-0002\n", "line 2: a is named twice"),
            ("a a-very-long-token-0001\nb a-very-long-token-0001\n", "line 2: the token of b is another name's too"),
        ]
        for (text, message) in refused {
            #expect {
                _ = try LeaseTokens(parsing: text)
            } throws: { error in
                "\(error)".contains(message)
            }
        }
    }

    @Test func withTokensALeaseNeedsOneAndTheHolderSaysWhose() async throws {
        let journal = NSTemporaryDirectory() + "leasehold-tokens-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: journal) }
        let tokens = try LeaseTokens(parsing: Self.file)
        let server = try TestServer {
            $0.leaseTokens = tokens
            $0.auditFile = journal
        }

        // No token, a wrong one: 401 before the upgrade, saying what is missing.
        guard case .failure(.rejected(401, let missing)) = try await WSClient.connectResult(port: server.port, path: "/v1/lease") else {
            Issue.record("a lease without a token was not refused with 401")
            return
        }
        #expect(missing.contains("Authorization: Bearer"))
        let wrong = try await WSClient.connectResult(port: server.port, path: "/v1/lease",
                                                     headers: [("Authorization", "Bearer a-very-long-token-9999")])
        guard case .failure(.rejected(401, let unknown)) = wrong, unknown.contains("unknown lease token") else {
            Issue.record("a wrong token was not refused with 401")
            return
        }

        // The header, or the query for clients that cannot set one.
        let byHeader = try await WSClient.connect(port: server.port, path: "/v1/lease",
                                                  headers: [("Authorization", "Bearer a-very-long-token-0001")])
        byHeader.send(acquireJSON(#"[{"name":"switch-01"}]"#, holder: "nightly-7"))
        _ = try await byHeader.expectEvent("granted")
        let byQuery = try await WSClient.connect(port: server.port, path: "/v1/lease?token=another-long-token-0002")
        byQuery.send(acquireJSON(#"[{"name":"switch-02"}]"#))
        _ = try await byQuery.expectEvent("granted")

        let status = try await server.http("GET", "/v1/status")
        let leases = try JSONValue.parse(status.body)["leases"]
        guard case .array(let list)? = leases else { Issue.record("no leases in \(status.body)"); return }
        let holders = list.compactMap { $0["holder"]?.stringValue }
        #expect(holders.first == "team-a/nightly-7")
        #expect(holders.last?.hasPrefix("ci.nightly/127.0.0.1:") == true, "\(holders)")

        let lines = try await journalLines(journal, atLeast: 2)
        #expect(lines.compactMap { $0["token"]?.stringValue } == ["team-a", "ci.nightly"])
        // Watching stays open to all: the status page works without a token.
        let watcher = try await server.watch()
        _ = try await watcher.expectEvent("snapshot")
        watcher.close()
        byHeader.close()
        byQuery.close()
        await server.stop()
    }
}
