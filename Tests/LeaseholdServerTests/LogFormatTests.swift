import Logging
import LeaseProtocol
@testable import LeaseholdServer
import Testing
import Transport

/// `--log-format text|json`: one line per event whatever the values hold.
@Suite struct LogFormatTests {
    static let forged = "ci/evil\n2026-12-07T10:00:00.000Z critical \"lease revoked\" lease.holder=admin\r\u{1B}[2K\u{85}\u{2028}"

    @Test func aHolderWithNewlinesAndControlCharactersStaysInsideItsTextLine() {
        let line = LeaseholdLogHandler.line(time: "2026-12-07T10:00:00.000Z", level: .info, message: "granted",
                                            metadata: ["lease.holder": .string(Self.forged), "lease.id": "L1", "connection.peer": "10.0.0.1:5"],
                                            source: "LeaseholdServer", format: .text)
        #expect(line.filter { $0 == "\n" || $0 == "\r\n" }.count == 1 && line.hasSuffix("\n"))
        #expect(!line.unicodeScalars.dropLast().contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) || $0 == "\u{2028}" })
        #expect(line == #"2026-12-07T10:00:00.000Z info granted connection.peer=10.0.0.1:5 lease.holder="ci/evil\n2026-12-07T10:00:00.000Z critical \"lease revoked\" lease.holder=admin\r\u{1b}[2K\u{85}\u{2028}" lease.id=L1"# + "\n")
    }

    @Test func jsonLinesKeepEveryValueExactlyAsAFieldOfItsOwn() throws {
        let line = LeaseholdLogHandler.line(time: "2026-12-07T10:00:00.000Z", level: .notice, message: "revoked",
                                            metadata: ["lease.holder": .string(Self.forged), "lease.id": "L1", "connection.peer": "10.0.0.1:5",
                                                       "count": .stringConvertible(3)],
                                            source: "LeaseholdServer", format: .json)
        #expect(line.filter { $0 == "\n" }.count == 1 && line.hasSuffix("\n"))
        let value = try JSONValue.parse(String(line.dropLast()))
        #expect(value["lease.holder"] == .string(Self.forged))
        #expect(value["lease.id"] == .string("L1"))
        #expect(value["connection.peer"] == .string("10.0.0.1:5"))
        #expect(value["level"] == .string("notice") && value["message"] == .string("revoked"))
        #expect(value["count"] == .string("3"))
    }

    @Test(arguments: LeaseholdLogHandler.Format.allCases)
    func aServerLogsAForgingHolderAsOneLinePerEvent(_ format: LeaseholdLogHandler.Format) async throws {
        let lines = Locked<[String]>([])
        let logger = Logger(label: "leasehold") { label in
            LeaseholdLogHandler(label: label, format: format, output: { line in lines.withLock { $0.append(line) } })
        }
        let server = try TestServer(logger: logger)
        let holderJSON = JSONValue.string(Self.forged).serialized()
        let client = try await server.acquire(#"[{"name": "switch-01"}]"#, extra: "\"holder\": \(holderJSON)")
        let granted = try await client.expectEvent("granted")
        client.send(#"{"op":"release"}"#)
        _ = try await client.expectClose()
        try await server.waitUntilFree("switch-01")
        await server.stop()
        let captured = lines.withLock { $0 }
        let lease = try #require(granted["lease"]?.stringValue)
        let about = captured.filter { $0.contains(lease) }
        #expect(about.count >= 3, "\(captured)")   // acquire, granted, released
        for line in captured {
            #expect(line.hasSuffix("\n") && line.dropLast().allSatisfy { $0 != "\n" && $0 != "\r" && $0 != "\r\n" }, "\(line)")
        }
        if format == .json {
            for line in about {
                let value = try JSONValue.parse(String(line.dropLast()))
                #expect(value["lease.holder"] == .string(Self.forged))
                #expect(value["lease.id"] == .string(lease))
                #expect(value["connection.peer"]?.stringValue?.hasPrefix("127.0.0.1:") == true)
            }
        } else {
            #expect(about.allSatisfy { $0.contains("lease.id=\(lease)") && $0.contains("connection.peer=127.0.0.1:") && $0.contains(#"lease.holder="ci/evil\n2026"#) })
        }
    }
}
