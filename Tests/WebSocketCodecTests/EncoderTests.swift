import Testing
@testable import WebSocketCodec

@Suite("Encoder")
struct EncoderTests {
    @Test func rfcExampleMaskedHello() {
        var buffer: [UInt8] = []
        WebSocketEncoder.appendFrame(opcode: .text, payload: bytes("Hello"), maskingKey: exampleKey, into: &buffer)
        #expect(buffer == [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    }

    @Test func rfcExampleUnmaskedFragments() {
        var buffer: [UInt8] = []
        WebSocketEncoder.appendFrame(opcode: .text, payload: bytes("Hel"), fin: false, into: &buffer)
        WebSocketEncoder.appendFrame(opcode: .continuation, payload: bytes("lo"), into: &buffer)
        #expect(buffer == [0x01, 0x03, 0x48, 0x65, 0x6C, 0x80, 0x02, 0x6C, 0x6F])
    }

    @Test func rsv1Bit() {
        var buffer: [UInt8] = []
        WebSocketEncoder.appendFrame(opcode: .binary, payload: [], rsv1: true, into: &buffer)
        #expect(buffer == [0xC2, 0x00])
    }

    @Test(arguments: [(0, [UInt8(0x00)]), (125, [0x7D]), (126, [0x7E, 0x00, 0x7E]), (65535, [0x7E, 0xFF, 0xFF]),
                      (65536, [0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00])])
    func lengthEncodingIsMinimal(length: Int, expectedLengthBytes: [UInt8]) {
        var buffer: [UInt8] = []
        WebSocketEncoder.appendFrame(opcode: .binary, payload: [UInt8](repeating: 9, count: length), into: &buffer)
        #expect(Array(buffer[1..<(1 + expectedLengthBytes.count)]) == expectedLengthBytes)
        #expect(buffer.count == 1 + expectedLengthBytes.count + length)
    }

    @Test(arguments: [0, 1, 125, 126, 127, 65535, 65536, 70_001])
    func roundTripBothRoles(length: Int) throws {
        var generator = SplitMix64(seed: UInt64(length))
        let payload = (0..<length).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        // Client → server: masked.
        var masked: [UInt8] = []
        WebSocketEncoder.appendFrame(opcode: .binary, payload: payload, maskingKey: (1, 2, 3, 4), into: &masked)
        #expect(decode([masked], role: .server) == DecodeOutcome(events: [.binary(payload)], errorCode: nil))
        #expect(masked == rawFrame(0x82, payload, maskingKey: (1, 2, 3, 4)))
        // Server → client: unmasked.
        var unmasked: [UInt8] = []
        WebSocketEncoder.appendFrame(opcode: .binary, payload: payload, into: &unmasked)
        #expect(decode([unmasked], role: .client) == DecodeOutcome(events: [.binary(payload)], errorCode: nil))
    }

    @Test func appendsToExistingBytes() {
        var buffer: [UInt8] = [0xAA]
        WebSocketEncoder.appendFrame(opcode: .ping, payload: [1], into: &buffer)
        #expect(buffer == [0xAA, 0x89, 0x01, 0x01])
    }

    @Test func closePayloadCarriesCodeAndReason() {
        #expect(WebSocketEncoder.closePayload(code: 1000, reason: "") == [0x03, 0xE8])
        #expect(WebSocketEncoder.closePayload(code: 4001, reason: "revoked") == [0x0F, 0xA1] + bytes("revoked"))
    }

    @Test func closePayloadTruncatesOnAScalarBoundary() {
        let ascii = WebSocketEncoder.closePayload(code: 1000, reason: String(repeating: "a", count: 300))
        #expect(ascii.count == 125)
        // "é" is 2 bytes: 61 fit in 123, the 62nd would straddle the limit.
        let accented = WebSocketEncoder.closePayload(code: 1000, reason: String(repeating: "é", count: 100))
        #expect(accented.count == 2 + 122)
        // "€" is 3 bytes: 41 of them are exactly 123.
        let euros = WebSocketEncoder.closePayload(code: 1000, reason: String(repeating: "€", count: 50))
        #expect(euros.count == 125)
        let emoji = WebSocketEncoder.closePayload(code: 1000, reason: "a" + String(repeating: "🎉", count: 40))
        #expect(emoji.count == 2 + 1 + 120)
        for payload in [accented, euros, emoji] {
            #expect(UTF8Validation.isValid(Array(payload.dropFirst(2))))
            #expect(decode([rawFrame(0x88, payload)]).errorCode == nil)
        }
    }
}

@Suite("Handshake")
struct HandshakeTests {
    @Test func rfcAcceptExample() {
        #expect(WebSocketHandshake.acceptValue(forKey: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    /// FIPS 180-2 appendix vectors, plus the block-boundary lengths where padding changes.
    @Test(arguments: [
        ("", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        ("abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
        ("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "84983e441c3bd26ebaae4aa1f95129e5e54670f1"),
        (String(repeating: "a", count: 55), "c1c8bbdc22796e28c0e15163d20899b65621d65a"),
        (String(repeating: "a", count: 64), "0098ba824b5c16427bd7a1122a5a442a25ec644d"),
    ])
    func sha1Vectors(_ testCase: (String, String)) {
        let hex = SHA1.hash(Array(testCase.0.utf8)).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        #expect(hex == testCase.1)
    }

    @Test func sha1OfAMillionAs() {
        let hex = SHA1.hash([UInt8](repeating: 0x61, count: 1_000_000)).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        #expect(hex == "34aa973cd4c4daa4f61eeb2bdbad27316534016f")
    }

    @Test(arguments: ["dGhlIHNhbXBsZSBub25jZQ==", "AAAAAAAAAAAAAAAAAAAAAA==", "/////////////////////w=="])
    func validKeys(key: String) {
        #expect(WebSocketHandshake.isValidKey(key))
    }

    @Test(arguments: ["", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZQ=", "dGhlIHNhbXBsZSBub25jZQ===",
                      "dGhlIHNhbXBsZSBub25jZSE=", "dGhlIHNhbXBsZSBub25j!Q==", "dGhlIHNhbXBsZSBub25jZQ==AAAA",
                      "dGhl=HNhbXBsZSBub25jZQ==", " dGhlIHNhbXBsZSBub25jZQ==", "aGVsbG8="])
    func invalidKeys(key: String) {
        #expect(!WebSocketHandshake.isValidKey(key))
    }

    @Test func clientKeysAreValidAndDistinct() {
        let keys = (0..<32).map { _ in WebSocketHandshake.makeClientKey() }
        #expect(keys.allSatisfy(WebSocketHandshake.isValidKey))
        #expect(Set(keys).count == keys.count)
    }

    @Test func base64RoundTrip() {
        for length in 0..<40 {
            let data = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            #expect(Base64.decode(Base64.encode(data)) == data)
        }
        #expect(Base64.encode(bytes("foobar")) == "Zm9vYmFy")
        #expect(Base64.encode(bytes("fooba")) == "Zm9vYmE=")
        #expect(Base64.encode(bytes("foob")) == "Zm9vYg==")
    }
}

@Suite("Sec-WebSocket-Extensions parsing")
struct ExtensionHeaderTests {
    static let valid: [([String], [WebSocketExtensionOffer])] = [
        ([], []),
        ([""], []),
        (["permessage-deflate"], [.init(name: "permessage-deflate")]),
        (["permessage-deflate; client_max_window_bits"],
         [.init(name: "permessage-deflate", parameters: [("client_max_window_bits", nil)])]),
        (["permessage-deflate;client_max_window_bits=10;server_no_context_takeover"],
         [.init(name: "permessage-deflate", parameters: [("client_max_window_bits", "10"), ("server_no_context_takeover", nil)])]),
        (["permessage-deflate; server_max_window_bits=\"10\""],
         [.init(name: "permessage-deflate", parameters: [("server_max_window_bits", "10")])]),
        (["permessage-deflate; a=\"b\\c\""], [.init(name: "permessage-deflate", parameters: [("a", "bc")])]),
        (["foo, bar; baz=2"], [.init(name: "foo"), .init(name: "bar", parameters: [("baz", "2")])]),
        (["foo", "bar"], [.init(name: "foo"), .init(name: "bar")]),
        (["  foo ;  x = 1 ,, bar\t"], [.init(name: "foo", parameters: [("x", "1")]), .init(name: "bar")]),
        (["permessage-deflate; client_max_window_bits, permessage-deflate"],
         [.init(name: "permessage-deflate", parameters: [("client_max_window_bits", nil)]), .init(name: "permessage-deflate")]),
    ]

    @Test(arguments: valid)
    func parsesOffers(headers: [String], expected: [WebSocketExtensionOffer]) throws {
        #expect(try WebSocketExtensions.parse(headers) == expected)
    }

    @Test(arguments: [
        "; foo", "foo;", "foo; =1", "foo; a=", "foo; a=\"unterminated", "foo; a=\"two words\"", "foo bar",
        "foo; a=1 2", "fo\"o", "foo; a=\"\"", "foo; a=\"x\\", "foo;;a",
    ])
    func rejectsMalformedHeader(header: String) {
        #expect(throws: WebSocketError.self) { try WebSocketExtensions.parse([header]) }
    }

    @Test func headerValueRoundTrips() throws {
        let offers: [WebSocketExtensionOffer] = [
            .init(name: "permessage-deflate", parameters: [("client_max_window_bits", "10"), ("server_no_context_takeover", nil)]),
            .init(name: "x-other"),
        ]
        let header = WebSocketExtensions.headerValue(offers)
        #expect(header == "permessage-deflate; client_max_window_bits=10; server_no_context_takeover, x-other")
        #expect(try WebSocketExtensions.parse([header]) == offers)
    }

    @Test func parameterLookupIsCaseInsensitive() {
        let offer = WebSocketExtensionOffer(name: "permessage-deflate", parameters: [("Client_Max_Window_Bits", nil), ("x", "1")])
        #expect(offer.parameter(named: "client_max_window_bits") == .some(nil))
        #expect(offer.parameter(named: "x") == .some("1"))
        #expect(offer.parameter(named: "y") == nil)
    }

    @Test func offersCompareParameterOrderAndValues() {
        #expect(WebSocketExtensionOffer(name: "a", parameters: [("x", nil)]) != WebSocketExtensionOffer(name: "a", parameters: [("x", "")]))
        #expect(WebSocketExtensionOffer(name: "a", parameters: [("x", "1"), ("y", nil)])
                != WebSocketExtensionOffer(name: "a", parameters: [("y", nil), ("x", "1")]))
    }
}
