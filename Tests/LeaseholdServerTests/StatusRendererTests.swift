import LeaseCore
import LeaseProtocol
@testable import LeaseholdServer
import PerMessageDeflate
import Testing
import Transport
import TransportTesting

/// The status document rendered in blocks that are kept until one of their resources changes.
@Suite struct StatusRendererTests {
    let clock = ServerClock(ManualClock())

    func lab(_ count: Int) throws -> LeaseTable {
        try LeaseTable(inventory: Inventory((0..<count).map {
            ResourceSpec(name: "host-\($0)", type: "host", labels: ["rack": "r\($0 % 7)"])
        }))
    }

    func whole(_ snapshot: Snapshot, resets: [String: ResetShown] = [:]) -> [UInt8] {
        StatusDocument.json(snapshot, clock: clock, resets: resets).serializedBytes()
    }

    @Test func piecesJoinToTheDocumentAndOnlyChangedBlocksAreRenderedAgain() throws {
        var table = try lab(3 * StatusRenderer.blockSize + 5)
        let renderer = StatusRenderer(clock: clock)
        let first = renderer.render(table.snapshot(), resets: [:])
        #expect(SharedMessage(textPieces: first).payload == whole(table.snapshot()))
        // The opening, four blocks of resources, the rest.
        #expect(first.count == 6)

        let name = "host-\(StatusRenderer.blockSize + 3)"
        _ = table.acquire(LeaseID(1), Request(want: [.name(name)], holder: "ci/one"), now: .seconds(2))
        let second = renderer.render(table.snapshot(), resets: [:])
        #expect(SharedMessage(textPieces: second).payload == whole(table.snapshot()))
        #expect(String(decoding: second[2].bytes, as: UTF8.self).contains("ci/one"))
        #expect(second[1] === first[1] && second[3] === first[3] && second[4] === first[4])
        #expect(second[2] !== first[2] && second[5] !== first[5])

        // A reset shown for one resource renders its block again, and only that one.
        let resets = ["host-0": ResetShown(result: "ok", at: .seconds(3), detail: "wiped")]
        let third = renderer.render(table.snapshot(), resets: resets)
        #expect(SharedMessage(textPieces: third).payload == whole(table.snapshot(), resets: resets))
        #expect(third[1] !== second[1] && third[2] === second[2])
    }

    @Test func aReloadRendersEveryBlockAgain() throws {
        var table = try lab(2 * StatusRenderer.blockSize)
        let renderer = StatusRenderer(clock: clock)
        let first = renderer.render(table.snapshot(), resets: [:])
        // Same states, new labels: only the generation tells.
        var effects: [Effect] = []
        let problems = table.reload(Inventory((0..<2 * StatusRenderer.blockSize).map {
            ResourceSpec(name: "host-\($0)", type: "host", labels: ["rack": "moved"])
        }), now: .zero, into: &effects)
        #expect(problems.isEmpty)
        let second = renderer.render(table.snapshot(), resets: [:])
        #expect(SharedMessage(textPieces: second).payload == whole(table.snapshot()))
        #expect(second[1] !== first[1] && second[2] !== first[2])
    }

    @Test func anEmptyLabIsAValidDocument() throws {
        let table = try lab(0)
        let bytes = SharedMessage(textPieces: StatusRenderer(clock: clock).render(table.snapshot(), resets: [:])).payload
        #expect(bytes == whole(table.snapshot()))
        #expect(try JSONValue.parse(bytes)["resources"] == .array([]))
    }

    @Test func aMessageOfPiecesCompressesToTheSameDocument() throws {
        let table = try lab(2 * StatusRenderer.blockSize)
        let message = SharedMessage(textPieces: StatusRenderer(clock: clock).render(table.snapshot(), resets: [:]))
        for windowBits in [9, 12, 15] {
            let (frame, compressed) = message.serverFrame(.init(windowBits: windowBits, configuration: .default))
            #expect(compressed)
            // FIN, RSV1, text; then a 16- or 64-bit length.
            #expect(frame[0] == 0xC1)
            let header = frame[1] == 126 ? 4 : 10
            let inflated = try Inflater(windowBits: windowBits).decompress(Array(frame[header...]), limit: 1 << 24)
            #expect(inflated == whole(table.snapshot()))
        }
        let (plain, compressed) = message.serverFrame(nil)
        #expect(!compressed && plain[0] == 0x81)
    }
}
