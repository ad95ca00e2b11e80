// permessage-deflate: RFC 7692's byte vectors, negotiation as header strings, limits.
import PerMessageDeflate
import Testing
import WebSocketCodec

private let hello = Array("Hello".utf8)

private func codec(_ parameters: PerMessageDeflateParameters = PerMessageDeflateParameters(),
                   minimum: Int = 0) -> PerMessageDeflate {
    var configuration = PerMessageDeflateConfiguration()
    configuration.minimumCompressedSize = minimum
    configuration.compressionWindowBits = 15
    return PerMessageDeflate(parameters: parameters, configuration: configuration)
}

private func compress(_ codec: PerMessageDeflate, _ bytes: [UInt8]) -> [UInt8]? {
    bytes.withUnsafeBytes { codec.compress($0) }
}

@Suite("RFC 7692 §7.2.3 examples as byte vectors")
struct RFCVectorTests {
    @Test("'Hello' compresses to f2 48 cd c9 c9 07 00 (§7.2.3.1)")
    func helloCompressed() {
        #expect(compress(codec(), hello) == [0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00])
    }

    @Test("a second 'Hello' with context takeover refers back: f2 00 11 00 00 (§7.2.3.2)")
    func contextTakeover() {
        let shared = codec()
        _ = compress(shared, hello)
        #expect(compress(shared, hello) == [0xF2, 0x00, 0x11, 0x00, 0x00])
    }

    @Test("without context takeover the second 'Hello' is compressed alone again (§7.2.3.2)")
    func noContextTakeover() {
        let alone = codec(PerMessageDeflateParameters(localNoContextTakeover: true))
        _ = compress(alone, hello)
        #expect(compress(alone, hello) == [0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00])
        #expect(!alone.holdsStreams)
    }

    @Test("the §7.2.3 payloads inflate to 'Hello'", arguments: [
        [0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00] as [UInt8],                                 // 7.2.3.1
        [0x00, 0x05, 0x00, 0xFA, 0xFF, 0x48, 0x65, 0x6C, 0x6C, 0x6F, 0x00],                      // 7.2.3.3 stored block
        [0xF2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xCA, 0xC9, 0xC9, 0x07, 0x00],          // 7.2.3.4 two blocks
        [0xF3, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00, 0x00],                                        // 7.2.3.5 BFINAL set
    ])
    func inflateVectors(payload: [UInt8]) throws {
        #expect(try codec().decompress(payload, limit: 1 << 20) == hello)
    }

    @Test("context takeover on the receiving side: 'Hello' then f2 00 11 00 00 is 'Hello' again")
    func inflateWithContext() throws {
        let receiver = codec()
        #expect(try receiver.decompress([0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00], limit: 100) == hello)
        #expect(try receiver.decompress([0xF2, 0x00, 0x11, 0x00, 0x00], limit: 100) == hello)
    }

    @Test("after a BFINAL message the next message starts a new stream")
    func afterFinalBlock() throws {
        let receiver = codec()
        #expect(try receiver.decompress([0xF3, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00, 0x00], limit: 100) == hello)
        #expect(try receiver.decompress([0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00], limit: 100) == hello)
    }

    @Test("the fragmented example (§7.2.3.1: 41 03 f2 48 cd, 80 04 c9 c9 07 00) decodes with RSV1 on the first frame only")
    func fragmented() throws {
        var decoder = WebSocketDecoder(role: .client, maxMessageSize: 1 << 20, reservedBitsAllowed: 0x40)
        decoder.feed([0x41, 0x03, 0xF2, 0x48, 0xCD, 0x80, 0x04, 0xC9, 0xC9, 0x07, 0x00])
        let event = try decoder.nextEvent()
        #expect(event == .text([0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00]))
        #expect(decoder.lastMessageReservedBits == 0x40)
        #expect(try codec().decompress([0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00], limit: 100) == hello)
    }
}

@Suite("permessage-deflate streams and limits")
struct DeflateLimitTests {
    @Test("round trip of large, repetitive and random messages, context kept and not")
    func roundTrip() throws {
        var generator = SystemRandomNumberGenerator()
        let random = (0..<70_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let json = Array(String(repeating: "{\"resource\":\"gpu-07\",\"state\":\"free\"},", count: 3000).utf8)
        for noContext in [false, true] {
            let sender = codec(PerMessageDeflateParameters(localNoContextTakeover: noContext, localMaxWindowBits: 9))
            let receiver = codec(PerMessageDeflateParameters(remoteNoContextTakeover: noContext, remoteMaxWindowBits: 9))
            for message in [json, random, [], hello, json] {
                let wire = try #require(compress(sender, message))
                #expect(try receiver.decompress(wire, limit: 1 << 20) == message)
            }
        }
        let ratio = Double(json.count) / Double(try #require(compress(codec(), json)).count)
        #expect(ratio > 10)
    }

    @Test("a bomb (10 MB of zeros in a few KB) is refused with 1009 once the cap is passed")
    func bomb() throws {
        let zeros = [UInt8](repeating: 0, count: 10_000_000)
        let wire = try #require(compress(codec(), zeros))
        #expect(wire.count < 20_000)
        #expect(throws: WebSocketError.self) { try codec().decompress(wire, limit: 1 << 20) }
        do {
            _ = try codec().decompress(wire, limit: 1 << 20)
        } catch {
            #expect(error.closeCode == 1009)
        }
    }

    @Test("a message exactly at the cap is accepted, one byte more is not")
    func capBoundary() throws {
        let message = [UInt8](repeating: 0x61, count: 1000)
        let wire = try #require(compress(codec(), message))
        #expect(try codec().decompress(wire, limit: 1000) == message)
        #expect(throws: WebSocketError(closeCode: 1009, reason: "message inflates past 999 bytes")) {
            try codec().decompress(wire, limit: 999)
        }
    }

    @Test("invalid deflate data closes with 1007 and the inflater recovers for nothing else")
    func invalidData() {
        #expect(throws: WebSocketError(closeCode: 1007, reason: "invalid compressed data")) {
            try codec().decompress([0xFF, 0xFF, 0xFF, 0xFF, 0x00], limit: 1000)
        }
    }

    @Test("messages under the minimum go out uncompressed")
    func tinyMessages() {
        let small = codec(minimum: 64)
        #expect(compress(small, hello) == nil)
        #expect(!small.holdsStreams)
        #expect(compress(small, [UInt8](repeating: 1, count: 64)) != nil)
    }

    @Test("streams are freed when the connection goes quiet; the next message still inflates")
    func releaseIdle() throws {
        let sender = codec()
        let receiver = codec()
        #expect(try receiver.decompress(try #require(compress(sender, hello)), limit: 100) == hello)
        #expect(sender.holdsStreams)
        sender.releaseIdleStreams()
        #expect(!sender.holdsStreams)
        #expect(try receiver.decompress(try #require(compress(sender, hello)), limit: 100) == hello)
    }

    @Test("a window of 8 is compressed with zlib's 9, and a 256-byte window still inflates it")
    func windowEight() throws {
        var generator = SystemRandomNumberGenerator()
        let words = ["lease", "gpu", "holder", "resource", "state", "free", "taken", "queue"]
        let text = (0..<5000).map { _ in words[Int.random(in: 0..<words.count, using: &generator)] }.joined(separator: " ")
        let sender = codec(PerMessageDeflateParameters(localMaxWindowBits: 8))
        let receiver = codec(PerMessageDeflateParameters(remoteMaxWindowBits: 8))
        for _ in 0..<3 {
            let wire = try #require(compress(sender, Array(text.utf8)))
            #expect(try receiver.decompress(wire, limit: 1 << 20) == Array(text.utf8))
        }
    }
}

@Suite("permessage-deflate negotiation: header in, header out")
struct NegotiationTests {
    static let cases: [(offer: String, response: String?)] = [
        ("permessage-deflate", "permessage-deflate"),
        ("permessage-deflate; client_max_window_bits", "permessage-deflate; client_max_window_bits=15"),
        ("permessage-deflate; client_max_window_bits=9", "permessage-deflate; client_max_window_bits=9"),
        ("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
         "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        ("permessage-deflate; server_max_window_bits=8", "permessage-deflate; server_max_window_bits=8"),
        ("permessage-deflate; server_max_window_bits=10; client_max_window_bits",
         "permessage-deflate; server_max_window_bits=10; client_max_window_bits=15"),
        // Declined: unknown parameter, duplicates, values out of range or malformed.
        ("permessage-deflate; mystery", nil),
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", nil),
        ("permessage-deflate; server_max_window_bits=7", nil),
        ("permessage-deflate; server_max_window_bits=16", nil),
        ("permessage-deflate; server_max_window_bits=010", nil),
        ("permessage-deflate; server_max_window_bits", nil),
        ("permessage-deflate; client_no_context_takeover=1", nil),
        ("x-webkit-deflate-frame", nil),
        // The first offer the server can honour wins.
        ("permessage-deflate; server_max_window_bits=20, permessage-deflate; client_no_context_takeover",
         "permessage-deflate; client_no_context_takeover"),
        ("x-unknown, permessage-deflate", "permessage-deflate"),
    ]

    @Test("the server's answer to an offer", arguments: cases)
    func serverAnswer(offer: String, response: String?) throws {
        let offers = try WebSocketExtensions.parse([offer])
        let answer = PerMessageDeflateNegotiation.accept(offers: offers, configuration: .default)
        #expect(answer?.response.headerValue == response)
    }

    @Test("what the server agreed to, from its side")
    func serverParameters() throws {
        let offers = try WebSocketExtensions.parse(["permessage-deflate; server_no_context_takeover; server_max_window_bits=9; client_max_window_bits=10"])
        let parameters = try #require(PerMessageDeflateNegotiation.accept(offers: offers, configuration: .default)).parameters
        #expect(parameters == PerMessageDeflateParameters(localNoContextTakeover: true, remoteNoContextTakeover: false,
                                                          localMaxWindowBits: 9, remoteMaxWindowBits: 10))
    }

    @Test("a server that asks peers not to keep context adds client_no_context_takeover")
    func requestNoContext() throws {
        var configuration = PerMessageDeflateConfiguration()
        configuration.requestPeerNoContextTakeover = true
        configuration.peerWindowBits = 11
        let offers = try WebSocketExtensions.parse(["permessage-deflate; client_max_window_bits"])
        let answer = try #require(PerMessageDeflateNegotiation.accept(offers: offers, configuration: configuration))
        #expect(answer.response.headerValue == "permessage-deflate; client_no_context_takeover; client_max_window_bits=11")
        #expect(answer.parameters.remoteNoContextTakeover)
    }

    @Test("the client's offer and its check of the answer")
    func clientSide() throws {
        #expect(PerMessageDeflateNegotiation.offer(configuration: .default).headerValue == "permessage-deflate; client_max_window_bits")
        let accepted = try PerMessageDeflateNegotiation.validateResponse(
            WebSocketExtensions.parse(["permessage-deflate; server_no_context_takeover; client_max_window_bits=9"]),
            configuration: .default)
        #expect(accepted == PerMessageDeflateParameters(localNoContextTakeover: false, remoteNoContextTakeover: true,
                                                        localMaxWindowBits: 9, remoteMaxWindowBits: 15))
        #expect(try PerMessageDeflateNegotiation.validateResponse([], configuration: .default) == nil)
        for bad in ["permessage-deflate; bogus", "x-other", "permessage-deflate; client_max_window_bits",
                    "permessage-deflate, permessage-deflate"] {
            #expect(throws: WebSocketError.self) {
                try PerMessageDeflateNegotiation.validateResponse(WebSocketExtensions.parse([bad]), configuration: .default)
            }
        }
    }
}
