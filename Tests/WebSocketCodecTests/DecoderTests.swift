import Testing
@testable import WebSocketCodec

@Suite("RFC 6455 §5.7 examples")
struct RFCExampleTests {
    @Test func singleFrameUnmaskedTextForClientRole() {
        verifyDecoding([[0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F]], expect: [.text(bytes("Hello"))], role: .client)
    }

    @Test func singleFrameMaskedTextForServerRole() {
        verifyDecoding([[0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]], expect: [.text(bytes("Hello"))])
    }

    @Test func fragmentedUnmaskedText() {
        verifyDecoding(
            [[0x01, 0x03, 0x48, 0x65, 0x6C], [0x80, 0x02, 0x6C, 0x6F]], expect: [.text(bytes("Hello"))], role: .client)
    }

    @Test func unmaskedPingAndMaskedPong() {
        verifyDecoding([[0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F]], expect: [.ping(bytes("Hello"))], role: .client)
        verifyDecoding([[0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]], expect: [.pong(bytes("Hello"))])
        verifyDecoding([rawFrame(0x89, bytes("Hello"))], expect: [.ping(bytes("Hello"))])
    }

    @Test func binaryWith16BitLength() {
        let payload = (0..<256).map { UInt8(truncatingIfNeeded: $0) }
        let frame: [UInt8] = [0x82, 0x7E, 0x01, 0x00] + payload
        verifyDecoding([frame], expect: [.binary(payload)], role: .client)
    }

    @Test func binaryWith64BitLength() {
        let payload = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let frame: [UInt8] = [0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00] + payload
        #expect(decode([frame], role: .client) == DecodeOutcome(events: [.binary(payload)], errorCode: nil))
        #expect(decode([rawFrame(0x82, payload)]) == DecodeOutcome(events: [.binary(payload)], errorCode: nil))
    }
}

@Suite("Frame header rules")
struct FrameHeaderRuleTests {
    @Test func nonMinimalLengthEncodingsAreAccepted() {
        verifyDecoding([rawFrame(0x81, bytes("Hi"), length: .sixteen)], expect: [.text(bytes("Hi"))])
        verifyDecoding([rawFrame(0x82, bytes("Hi"), length: .sixtyFour)], expect: [.binary(bytes("Hi"))])
    }

    @Test func sixtyFourBitLengthWithMostSignificantBitIsProtocolError() {
        let header: [UInt8] = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 5] + [1, 2, 3, 4]
        verifyDecoding([header], expect: [], error: 1002)
    }

    @Test func serverRejectsUnmaskedFrame() {
        verifyDecoding([rawFrame(0x81, bytes("Hello"), maskingKey: nil)], expect: [], error: 1002)
    }

    @Test func clientRejectsMaskedFrame() {
        verifyDecoding([rawFrame(0x81, bytes("Hello"))], expect: [], error: 1002, role: .client)
    }

    @Test(arguments: [UInt8(0x40), 0x20, 0x10, 0x70])
    func reservedBitsWithoutExtensionAreProtocolError(bits: UInt8) {
        verifyDecoding([rawFrame(0x81 | bits, bytes("x"))], expect: [], error: 1002)
    }

    @Test func reservedBitClaimedByExtensionIsDelivered() {
        let frame = rawFrame(0xC2, [1, 2, 3])
        verifyDecoding([frame], expect: [.binary([1, 2, 3])], reservedBitsAllowed: 0x40)
        verifyDecoding([rawFrame(0xA2, [1])], expect: [], error: 1002, reservedBitsAllowed: 0x40)
        // RSV1 belongs on the first frame of a message only, never on control frames.
        verifyDecoding([rawFrame(0xC9, [1])], expect: [], error: 1002, reservedBitsAllowed: 0x40)
        verifyDecoding([rawFrame(0x42, [1]), rawFrame(0xC0, [2])], expect: [], error: 1002, reservedBitsAllowed: 0x40)
    }

    @Test func compressedTextIsNotValidatedAndReportsItsBits() throws {
        var decoder = WebSocketDecoder(role: .server, maxMessageSize: 100, reservedBitsAllowed: 0x40)
        decoder.feed(rawFrame(0xC1, [0xFF, 0xFE]))
        #expect(try decoder.nextEvent() == .text([0xFF, 0xFE]))
        #expect(decoder.lastMessageReservedBits == 0x40)
        decoder.feed(rawFrame(0x81, bytes("ok")))
        #expect(try decoder.nextEvent() == .text(bytes("ok")))
        #expect(decoder.lastMessageReservedBits == 0)
    }

    @Test(arguments: [UInt8(3), 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
    func unknownOpcodeIsProtocolError(opcode: UInt8) {
        verifyDecoding([rawFrame(0x80 | opcode, [])], expect: [], error: 1002)
    }

    @Test func unknownOpcodeFailsOnTheFirstByte() {
        #expect(decode([[0x83]]).errorCode == 1002)
    }

    @Test func controlFrameOf125BytesIsAccepted() {
        let payload = [UInt8](repeating: 0x61, count: 125)
        verifyDecoding([rawFrame(0x89, payload)], expect: [.ping(payload)])
    }

    @Test(arguments: [UInt8(0x88), 0x89, 0x8A])
    func controlFrameOf126BytesIsProtocolError(first: UInt8) {
        let payload = [UInt8](repeating: 0x61, count: 126)
        verifyDecoding([rawFrame(first, payload)], expect: [], error: 1002)
        // Known from the second byte alone.
        #expect(decode([[first, 0xFE]]).errorCode == 1002)
    }

    @Test func fragmentedPingIsProtocolError() {
        verifyDecoding([rawFrame(0x09, bytes("ping"))], expect: [], error: 1002)
        #expect(decode([[0x09]]).errorCode == 1002)
    }

    @Test func continuationWithoutMessageIsProtocolError() {
        verifyDecoding([rawFrame(0x80, bytes("lo"))], expect: [], error: 1002)
    }

    @Test func newDataFrameInsideFragmentedMessageIsProtocolError() {
        verifyDecoding([rawFrame(0x01, bytes("Hel")), rawFrame(0x81, bytes("lo"))], expect: [], error: 1002)
        verifyDecoding([rawFrame(0x02, [1]), rawFrame(0x01, [2])], expect: [], error: 1002)
    }

    @Test func controlFramesInsideFragmentedMessageAreDeliveredImmediately() {
        verifyDecoding(
            [rawFrame(0x01, bytes("Hel")), rawFrame(0x89, bytes("p")), rawFrame(0x00, bytes("l")),
             rawFrame(0x8A, []), rawFrame(0x80, bytes("o"))],
            expect: [.ping(bytes("p")), .pong([]), .text(bytes("Hello"))])
    }

    @Test func pingBetweenFragmentsArrivesBeforeTheLastFragment() throws {
        var decoder = WebSocketDecoder(role: .server, maxMessageSize: 100)
        decoder.feed(rawFrame(0x01, bytes("Hel")) + rawFrame(0x89, bytes("p")))
        #expect(try decoder.nextEvent() == .ping(bytes("p")))
        #expect(try decoder.nextEvent() == nil)
        #expect(!decoder.isIdle)
    }

    @Test func emptyMessages() {
        verifyDecoding([rawFrame(0x81, [])], expect: [.text([])])
        verifyDecoding([rawFrame(0x02, []), rawFrame(0x80, [])], expect: [.binary([])])
        verifyDecoding([rawFrame(0x81, []), rawFrame(0x82, [])], expect: [.text([]), .binary([])])
    }

    @Test func severalMessagesInOneFeed() {
        verifyDecoding(
            [rawFrame(0x81, bytes("one")), rawFrame(0x82, [2]), rawFrame(0x89, []), rawFrame(0x81, bytes("four"))],
            expect: [.text(bytes("one")), .binary([2]), .ping([]), .text(bytes("four"))])
    }

    @Test func errorIsStickyAndLaterBytesAreIgnored() {
        var decoder = WebSocketDecoder(role: .server, maxMessageSize: 100)
        decoder.feed([0x83])
        #expect(throws: WebSocketError.self) { try decoder.nextEvent() }
        decoder.feed(rawFrame(0x81, bytes("late")))
        #expect((try? decoder.nextEvent()) == nil)
        #expect(throws: WebSocketError.self) { try decoder.nextEvent() }
    }
}

@Suite("Message size limits")
struct MessageSizeLimitTests {
    @Test func messageOfExactlyTheLimitIsAccepted() {
        let payload = [UInt8](repeating: 1, count: 100)
        verifyDecoding([rawFrame(0x82, payload)], expect: [.binary(payload)], maxMessageSize: 100)
        verifyDecoding(
            [rawFrame(0x02, Array(payload[..<60])), rawFrame(0x80, Array(payload[60...]))],
            expect: [.binary(payload)], maxMessageSize: 100)
    }

    @Test func oversizedFrameFailsOnTheHeaderBeforeAnyPayload() {
        let header = Array(rawFrame(0x82, [UInt8](repeating: 0, count: 101)).prefix(2))
        #expect(decode([header], maxMessageSize: 100) == DecodeOutcome(events: [], errorCode: 1009))
        verifyDecoding([rawFrame(0x82, [UInt8](repeating: 0, count: 101))], expect: [], error: 1009, maxMessageSize: 100)
    }

    @Test func hugeDeclaredLengthFailsWithoutBuffering() {
        // 2^62 bytes announced: refused from the 10 header bytes alone (no mask key needed).
        let header: [UInt8] = [0x82, 0xFF, 0x40, 0, 0, 0, 0, 0, 0, 0]
        #expect(decode([header]) == DecodeOutcome(events: [], errorCode: 1009))
        let header16: [UInt8] = [0x82, 0xFE, 0xFF, 0xFF]
        #expect(decode([header16], maxMessageSize: 65534) == DecodeOutcome(events: [], errorCode: 1009))
    }

    @Test func accumulatedFragmentsOverTheLimitFailAtTheNextHeader() {
        let first = rawFrame(0x02, [UInt8](repeating: 0, count: 60))
        let secondHeader = Array(rawFrame(0x80, [UInt8](repeating: 0, count: 41)).prefix(2))
        #expect(decode([first, secondHeader], maxMessageSize: 100) == DecodeOutcome(events: [], errorCode: 1009))
        verifyDecoding(
            [first, rawFrame(0x00, [UInt8](repeating: 0, count: 40)), rawFrame(0x80, [1])],
            expect: [], error: 1009, maxMessageSize: 100)
    }

    @Test func controlFramesDoNotCountTowardsTheMessage() {
        let payload = [UInt8](repeating: 1, count: 100)
        verifyDecoding(
            [rawFrame(0x02, Array(payload[..<50])), rawFrame(0x89, [UInt8](repeating: 2, count: 125)),
             rawFrame(0x80, Array(payload[50...]))],
            expect: [.ping([UInt8](repeating: 2, count: 125)), .binary(payload)], maxMessageSize: 100)
    }
}

@Suite("UTF-8 in text messages")
struct TextUTF8Tests {
    let euro: [UInt8] = [0xE2, 0x82, 0xAC]

    @Test func invalidTextIsInvalidPayload() {
        verifyDecoding([rawFrame(0x81, [0x48, 0xFF, 0x48])], expect: [], error: 1007)
        verifyDecoding([rawFrame(0x81, [0xED, 0xA0, 0x80])], expect: [], error: 1007)   // surrogate
        verifyDecoding([rawFrame(0x81, [0xC0, 0xAF])], expect: [], error: 1007)         // overlong
    }

    @Test func binaryIsNotValidated() {
        verifyDecoding([rawFrame(0x82, [0xFF, 0xC0])], expect: [.binary([0xFF, 0xC0])])
    }

    @Test(arguments: [1, 2])
    func codePointSplitAcrossFragmentsIsValid(split: Int) {
        let text = bytes("price: ") + euro + bytes("5")
        let cut = 7 + split
        verifyDecoding(
            [rawFrame(0x01, Array(text[..<cut])), rawFrame(0x80, Array(text[cut...]))], expect: [.text(text)])
    }

    @Test func codePointSplitAcrossThreeFragmentsIsValid() {
        verifyDecoding(
            [rawFrame(0x01, [euro[0]]), rawFrame(0x00, [euro[1]]), rawFrame(0x80, [euro[2]])], expect: [.text(euro)])
    }

    @Test func invalidContinuationInNextFragmentIsInvalidPayload() {
        verifyDecoding([rawFrame(0x01, [0xE2, 0x82]), rawFrame(0x80, [0x41])], expect: [], error: 1007)
    }

    @Test func messageEndingInsideCodePointIsInvalidPayload() {
        verifyDecoding([rawFrame(0x81, [0x41, 0xE2, 0x82])], expect: [], error: 1007)
        verifyDecoding([rawFrame(0x01, [0x41]), rawFrame(0x80, [0xE2, 0x82])], expect: [], error: 1007)
    }

    @Test func invalidFirstFragmentFailsBeforeTheLastArrives() {
        var decoder = WebSocketDecoder(role: .server, maxMessageSize: 1000)
        decoder.feed(rawFrame(0x01, [0x61, 0xF8, 0x61]))
        #expect(throws: WebSocketError(closeCode: 1007, reason: "text message is not valid UTF-8")) {
            try decoder.nextEvent()
        }
    }

    @Test func invalidByteFailsBeforeTheRestOfTheFrameArrives() {
        let frame = rawFrame(0x81, [0x61, 0x62, 0xC3, 0x28] + [UInt8](repeating: 0x61, count: 200))
        // Header (4 bytes for a 16-bit length) + mask (4) + the first 4 payload bytes.
        #expect(decode([Array(frame.prefix(12))]).errorCode == 1007)
        // A truncated sequence whose second byte is already impossible fails too (E0 must be followed by A0–BF).
        let overlong = rawFrame(0x81, [0xE0, 0x80] + [UInt8](repeating: 0x61, count: 200))
        #expect(decode([Array(overlong.prefix(10))]).errorCode == 1007)
    }
}

@Suite("Close frames")
struct CloseFrameTests {
    static let validCodes: [UInt16] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]
    static let invalidCodes: [UInt16] = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]

    @Test func emptyCloseHasNoCode() {
        verifyDecoding([rawFrame(0x88, [])], expect: [.close(code: nil, reason: "")])
    }

    @Test func closeWithCodeAndReason() {
        verifyDecoding([rawFrame(0x88, [0x03, 0xE8] + bytes("bye ✓"))], expect: [.close(code: 1000, reason: "bye ✓")])
    }

    @Test func closeWithOneBytePayloadIsProtocolError() {
        verifyDecoding([rawFrame(0x88, [0x03])], expect: [], error: 1002)
    }

    @Test(arguments: validCodes)
    func validCloseCodeIsDelivered(code: UInt16) {
        verifyDecoding(
            [rawFrame(0x88, [UInt8(code >> 8), UInt8(code & 0xFF)])], expect: [.close(code: code, reason: "")])
        #expect(WebSocketCloseCodes.isValidOnWire(code))
    }

    @Test(arguments: invalidCodes)
    func invalidCloseCodeIsProtocolError(code: UInt16) {
        verifyDecoding([rawFrame(0x88, [UInt8(code >> 8), UInt8(code & 0xFF)])], expect: [], error: 1002)
        #expect(!WebSocketCloseCodes.isValidOnWire(code))
    }

    @Test func everyCodeMatchesTheValidRanges() {
        for code in UInt16.min...UInt16.max {
            let expected = (1000...1003).contains(code) || (1007...1014).contains(code) || (3000...4999).contains(code)
            if WebSocketCloseCodes.isValidOnWire(code) != expected { Issue.record("code \(code)") }
        }
    }

    @Test func closeReasonWithInvalidUTF8IsInvalidPayload() {
        verifyDecoding([rawFrame(0x88, [0x03, 0xE8, 0x61, 0xFF])], expect: [], error: 1007)
        verifyDecoding([rawFrame(0x88, [0x03, 0xE8, 0xE2, 0x82])], expect: [], error: 1007)
    }

    @Test func nothingIsDeliveredAfterClose() {
        verifyDecoding(
            [rawFrame(0x81, bytes("a")), rawFrame(0x88, [0x03, 0xE8]), rawFrame(0x81, bytes("b")), [0x83, 0x00]],
            expect: [.text(bytes("a")), .close(code: 1000, reason: "")])
    }

    @Test func closeInsideFragmentedMessageEndsIt() {
        verifyDecoding(
            [rawFrame(0x01, bytes("Hel")), rawFrame(0x88, []), rawFrame(0x80, bytes("lo"))],
            expect: [.close(code: nil, reason: "")])
    }
}

@Suite("Decoder memory")
struct DecoderMemoryTests {
    @Test func idleAfterCompleteMessagesOnly() throws {
        var decoder = WebSocketDecoder(role: .server, maxMessageSize: 1 << 20)
        #expect(decoder.isIdle)
        let frame = rawFrame(0x82, [UInt8](repeating: 7, count: 300_000))
        decoder.feed(Array(frame.prefix(1000)))
        #expect(try decoder.nextEvent() == nil)
        #expect(!decoder.isIdle)
        decoder.feed(Array(frame.dropFirst(1000)))
        #expect(try decoder.nextEvent() == .binary([UInt8](repeating: 7, count: 300_000)))
        #expect(decoder.isIdle)
        decoder.releaseIdleBuffers()
        #expect(decoder.isIdle)
        decoder.feed(rawFrame(0x81, bytes("after")))
        #expect(try decoder.nextEvent() == .text(bytes("after")))
    }

    @Test func partialHeaderIsNotIdleAndSurvivesRelease() throws {
        var decoder = WebSocketDecoder(role: .server, maxMessageSize: 100)
        let frame = rawFrame(0x81, bytes("Hello"))
        decoder.feed(Array(frame.prefix(3)))
        #expect(try decoder.nextEvent() == nil)
        #expect(!decoder.isIdle)
        decoder.releaseIdleBuffers()   // must not drop the partial header
        decoder.feed(Array(frame.dropFirst(3)))
        #expect(try decoder.nextEvent() == .text(bytes("Hello")))
    }
}

@Suite("Decoder robustness")
struct DecoderRobustnessTests {
    /// Valid traffic with random bytes changed, fed in random pieces: errors are fine, traps are not,
    /// and every error carries one of the close codes the decoder documents.
    @Test(arguments: [WebSocketRole.server, .client])
    func mutatedInputNeverTraps(role: WebSocketRole) {
        let key: (UInt8, UInt8, UInt8, UInt8)? = role == .server ? exampleKey : nil
        let traffic = rawFrame(0x01, bytes("Hel"), maskingKey: key) + rawFrame(0x89, bytes("p"), maskingKey: key)
            + rawFrame(0x80, bytes("lo ✓"), maskingKey: key) + rawFrame(0x82, [UInt8](repeating: 1, count: 300), maskingKey: key)
            + rawFrame(0x88, [0x03, 0xE8, 0x61], maskingKey: key)
        var generator = SplitMix64(seed: role == .server ? 1 : 2)
        for _ in 0..<3000 {
            var input = traffic
            for _ in 0..<(generator.next() % 4 + 1) {
                input[Int(generator.next() % UInt64(input.count))] = UInt8(truncatingIfNeeded: generator.next())
            }
            var pieces: [[UInt8]] = []
            var index = 0
            while index < input.count {
                let size = min(input.count - index, Int(generator.next() % 40) + 1)
                pieces.append(Array(input[index..<(index + size)]))
                index += size
            }
            let outcome = decode(pieces, role: role, maxMessageSize: 200, reservedBitsAllowed: generator.next() % 2 == 0 ? 0x40 : 0)
            if let code = outcome.errorCode { #expect([1002, 1007, 1009].contains(code)) }
        }
    }
}
