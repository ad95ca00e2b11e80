import Logging
import LeaseProtocol
@testable import LeaseholdServer
import Testing
import Transport

/// Log lines are fixed messages with what varies in metadata (so they can be searched and
/// counted), at the level an operator would want.
@Suite struct LoggingTests {
    struct Entry: Sendable {
        let level: Logger.Level
        let message: String
        let metadata: [String: String]
    }

    /// Keeps every entry; tests wait for the one they expect.
    struct Capture: LogHandler {
        let entries: Locked<[Entry]>
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let all = metadata.merging(event.metadata ?? [:]) { _, new in new }
            let entry = Entry(level: event.level, message: event.message.description, metadata: all.mapValues { "\($0)" })
            entries.withLock { $0.append(entry) }
        }
    }

    static func capturing() -> (Logger, Locked<[Entry]>) {
        let entries = Locked<[Entry]>([])
        return (Logger(label: "leasehold-test") { _ in Capture(entries: entries) }, entries)
    }

    /// Each line is written before the answer it goes with is sent, so a test that has its answer
    /// finds the line without waiting.
    static func entry(_ message: String, in entries: Locked<[Entry]>) -> Entry? {
        entries.withLock { $0.first { $0.message == message } }
    }

    @Test("a grant, an admin action and a refused connection log fixed messages with metadata")
    func linesCarryMetadata() async throws {
        let (logger, entries) = Self.capturing()
        let server = try TestServer(logger: logger) { $0.maxConnectionsPerAddress = 2 }
        let (holder, granted) = try await server.hold(#"[{"name":"switch-01"}]"#, holder: "ci/nightly")
        let lease = try #require(granted["lease"]?.stringValue)

        let grant = try #require(Self.entry("granted", in: entries))
        #expect(grant.level == .info)
        #expect(grant.metadata["lease.id"] == lease)
        #expect(grant.metadata["lease.holder"] == "ci/nightly")
        #expect(grant.metadata["resources"] == "switch-01#1")

        #expect(try await server.admin("free", "switch-01", reason: "rack maintenance").status == 200)
        let admin = try #require(Self.entry("admin action", in: entries))
        #expect(admin.level == .notice)
        #expect(admin.metadata["action"] == "free")
        #expect(admin.metadata["resource.name"] == "switch-01")
        #expect(admin.metadata["reason"] == "rack maintenance")
        let revoked = try #require(Self.entry("revoked", in: entries))
        #expect(revoked.metadata["lease.id"] == lease)
        holder.close()

        // Past the per-address limit of 2. The holder's connection counts until the server has
        // read its end, so the refusal comes at the second new connection or the third.
        var held: [WSClient] = []
        var refusal429 = false
        for name in ["switch-02", "switch-01", "array-01"] where !refusal429 {
            do {
                held.append(try await server.hold(#"[{"name":"\#(name)"}]"#).0)
            } catch WebSocketClientError.rejected(let status, _) {
                refusal429 = status == 429
            }
        }
        #expect(refusal429, "no connection was refused at the limit")
        #expect(held.count <= 2)
        let refusal = try #require(Self.entry("connection refused at its limit", in: entries))
        #expect(refusal.level == .notice)
        #expect(refusal.metadata["http.status"] == "429")
        #expect(refusal.metadata["limit"] == "2")
        #expect(refusal.metadata["connection.peer"]?.hasPrefix("127.0.0.1:") == true)
        for client in held { client.close() }
        await server.stop()
    }
}
