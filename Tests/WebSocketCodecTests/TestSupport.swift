import Testing
@testable import WebSocketCodec

/// What a decoder produced from some input: the events, then the error that stopped it (if any).
struct DecodeOutcome: Equatable, CustomStringConvertible {
    var events: [WebSocketEvent]
    var errorCode: UInt16?

    var description: String { "events: \(events), error: \(errorCode.map(String.init) ?? "none")" }
}

/// Feeds `chunks` one after another, draining events after each, as the transport does.
func decode(
    _ chunks: [[UInt8]], role: WebSocketRole = .server, maxMessageSize: Int = 1 << 20, reservedBitsAllowed: UInt8 = 0
) -> DecodeOutcome {
    var decoder = WebSocketDecoder(role: role, maxMessageSize: maxMessageSize, reservedBitsAllowed: reservedBitsAllowed)
    var events: [WebSocketEvent] = []
    for chunk in chunks {
        decoder.feed(chunk)
        do {
            while let event = try decoder.nextEvent() { events.append(event) }
        } catch {
            return DecodeOutcome(events: events, errorCode: error.closeCode)
        }
    }
    return DecodeOutcome(events: events, errorCode: nil)
}

/// Like swift-nio's ByteToMessageDecoderVerifier: the same input must decode identically when
/// fed all at once (several messages per feed), one message per feed, one byte at a time, and
/// in random-sized pieces.
func verifyDecoding(
    _ messages: [[UInt8]],
    expect events: [WebSocketEvent],
    error expectedError: UInt16? = nil,
    role: WebSocketRole = .server,
    maxMessageSize: Int = 1 << 20,
    reservedBitsAllowed: UInt8 = 0,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    let expected = DecodeOutcome(events: events, errorCode: expectedError)
    let all = messages.flatMap { $0 }
    var generator = SplitMix64(seed: UInt64(all.count))
    var randomPieces: [[UInt8]] = []
    var index = 0
    while index < all.count {
        let size = Int(generator.next() % 17) + 1
        randomPieces.append(Array(all[index..<min(all.count, index + size)]))
        index += size
    }
    let feedings: [(String, [[UInt8]])] = [
        ("all at once", [all]),
        ("one message per feed", messages),
        ("one byte at a time", all.map { [$0] }),
        ("random pieces", randomPieces),
    ]
    for (name, chunks) in feedings {
        let outcome = decode(chunks, role: role, maxMessageSize: maxMessageSize, reservedBitsAllowed: reservedBitsAllowed)
        #expect(outcome == expected, "fed \(name)", sourceLocation: sourceLocation)
    }
}

/// The RFC 6455 §5.7 example key.
let exampleKey: (UInt8, UInt8, UInt8, UInt8) = (0x37, 0xFA, 0x21, 0x3D)

enum LengthEncoding { case minimal, sixteen, sixtyFour }

/// Builds a frame by hand (independent of WebSocketEncoder). `first` is the whole first byte
/// (FIN | RSV | opcode); `maskingKey` nil writes an unmasked frame.
func rawFrame(
    _ first: UInt8, _ payload: [UInt8], maskingKey: (UInt8, UInt8, UInt8, UInt8)? = exampleKey,
    length: LengthEncoding = .minimal, declaredLength: UInt64? = nil
) -> [UInt8] {
    var bytes: [UInt8] = [first]
    let maskBit: UInt8 = maskingKey == nil ? 0 : 0x80
    let count = declaredLength ?? UInt64(payload.count)
    switch (length, count) {
    case (.minimal, 0...125):
        bytes.append(maskBit | UInt8(count))
    case (.minimal, 126...0xFFFF), (.sixteen, _):
        bytes.append(maskBit | 126)
        bytes += [UInt8(truncatingIfNeeded: count >> 8), UInt8(truncatingIfNeeded: count)]
    default:
        bytes.append(maskBit | 127)
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: count >> UInt64(shift))) }
    }
    if let key = maskingKey {
        let keyBytes = [key.0, key.1, key.2, key.3]
        bytes += keyBytes
        for (index, byte) in payload.enumerated() { bytes.append(byte ^ keyBytes[index % 4]) }
    } else {
        bytes += payload
    }
    return bytes
}

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

/// Deterministic, seedable generator so failures reproduce.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
