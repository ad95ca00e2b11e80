import Testing
@testable import WebSocketCodec

@Suite("Masking")
struct MaskingTests {
    static func naiveMask(_ bytes: [UInt8], key: [UInt8], offset: Int) -> [UInt8] {
        bytes.enumerated().map { $0.element ^ key[($0.offset + offset) % 4] }
    }

    @Test func matchesNaiveMaskingForEveryOffsetAndSmallLength() {
        let key: [UInt8] = [0x37, 0xFA, 0x21, 0x3D]
        var generator = SplitMix64(seed: 42)
        for offset in 0..<8 {
            for length in 0...100 {
                let input = (0..<length).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
                // Mask a slice that starts at an odd address too, to exercise unaligned loads.
                var padded = [0xEE] + input
                padded.withUnsafeMutableBytes {
                    WebSocketMasking.apply(key: exampleKey, offset: offset, to: UnsafeMutableRawBufferPointer(rebasing: $0[1...]))
                }
                #expect(padded[0] == 0xEE)
                if Array(padded.dropFirst()) != Self.naiveMask(input, key: key, offset: offset) {
                    Issue.record("offset \(offset) length \(length)")
                }
            }
        }
    }

    @Test func largeBufferMaskedInPiecesMatchesNaive() {
        let key: [UInt8] = [0x01, 0x80, 0xFF, 0x5A]
        var generator = SplitMix64(seed: 7)
        let input = (0..<(1 << 20) + 3).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        let expected = Self.naiveMask(input, key: key, offset: 0)

        var whole = input
        whole.withUnsafeMutableBytes { WebSocketMasking.apply(key: (0x01, 0x80, 0xFF, 0x5A), offset: 0, to: $0) }
        #expect(whole == expected)

        // The running offset continues the key across buffers of odd sizes.
        var pieces = input
        pieces.withUnsafeMutableBytes { buffer in
            var position = 0
            while position < buffer.count {
                let size = min(buffer.count - position, Int(generator.next() % 5000) + 1)
                WebSocketMasking.apply(
                    key: (0x01, 0x80, 0xFF, 0x5A), offset: position,
                    to: UnsafeMutableRawBufferPointer(rebasing: buffer[position..<(position + size)]))
                position += size
            }
        }
        #expect(pieces == expected)
    }

    @Test func maskingTwiceRestoresTheInput() {
        let input = bytes("The quick brown fox jumps over the lazy dog")
        var buffer = input
        buffer.withUnsafeMutableBytes { WebSocketMasking.apply(key: exampleKey, offset: 3, to: $0) }
        #expect(buffer != input)
        buffer.withUnsafeMutableBytes { WebSocketMasking.apply(key: exampleKey, offset: 3, to: $0) }
        #expect(buffer == input)
    }
}

@Suite("UTF-8 validation")
struct UTF8ValidationTests {
    static func reference(_ bytes: [UInt8]) -> Bool {
        String(validating: bytes, as: UTF8.self) != nil
    }

    static let edgeCases: [[UInt8]] = [
        [], [0x00], [0x7F], [0x80], [0xBF], [0xC0, 0x80], [0xC1, 0xBF], [0xC2, 0x80], [0xDF, 0xBF],
        [0xE0, 0x80, 0x80], [0xE0, 0x9F, 0xBF], [0xE0, 0xA0, 0x80], [0xEF, 0xBF, 0xBF],
        [0xED, 0x9F, 0xBF], [0xED, 0xA0, 0x80], [0xED, 0xBF, 0xBF], [0xEE, 0x80, 0x80],   // around surrogates
        [0xF0, 0x8F, 0xBF, 0xBF], [0xF0, 0x90, 0x80, 0x80], [0xF4, 0x8F, 0xBF, 0xBF], [0xF4, 0x90, 0x80, 0x80],
        [0xF5, 0x80, 0x80, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80], [0xFE], [0xFF],
        [0xC2], [0xE2, 0x82], [0xF0, 0x9F, 0x98], [0xE2, 0x82, 0x41], [0xF0, 0x9F, 0x41, 0x81],
        [0xF0, 0x9F, 0x98, 0x41], [0xC2, 0xC2, 0x80], [0x41, 0x80, 0x41],
        Array("κόσμε".utf8), Array("Hello-µ@ßöäüàá-UTF-8!!".utf8), Array("🎉 日本語 ✓ ok".utf8),
        Array(repeating: 0x61, count: 100) + [0x80] + Array(repeating: 0x61, count: 10),
        Array(repeating: 0x61, count: 33) + [0xE2, 0x82, 0xAC] + Array(repeating: 0x61, count: 40),
        Array(repeating: 0x61, count: 31) + [0xF4, 0x90, 0x80, 0x80],
    ]

    @Test(arguments: edgeCases)
    func edgeCaseAgreesWithStandardLibrary(input: [UInt8]) {
        let expected = Self.reference(input)
        #expect(UTF8Validation.isValid(input) == expected)
        // Fed in two pieces at every split point, the verdict must not change.
        for split in 0...input.count {
            var validator = UTF8Validation.Validator()
            let first = validator.feed(Array(input[..<split]))
            let second = first && validator.feed(Array(input[split...]))
            #expect((second && validator.isComplete) == expected, "split at \(split)")
        }
        // And one byte at a time.
        var validator = UTF8Validation.Validator()
        let allFed = input.allSatisfy { validator.feed([$0]) }
        #expect((allFed && validator.isComplete) == expected)
    }

    /// Random text made of valid scalars of every width, sometimes with one byte corrupted.
    static func randomSample(_ generator: inout SplitMix64) -> [UInt8] {
        var text: [UInt8] = []
        let scalarCount = Int(generator.next() % 40)
        for _ in 0..<scalarCount {
            let value: UInt32
            switch generator.next() % 5 {
            case 0, 1: value = UInt32(generator.next() % 0x80)
            case 2: value = 0x80 + UInt32(generator.next() % (0x800 - 0x80))
            case 3: value = 0x800 + UInt32(generator.next() % (0x10000 - 0x800))
            default: value = 0x10000 + UInt32(generator.next() % (0x110000 - 0x10000))
            }
            if let scalar = Unicode.Scalar(value) { text += Array(String(Character(scalar)).utf8) }
        }
        if !text.isEmpty && generator.next() % 2 == 0 {
            let position = Int(generator.next() % UInt64(text.count))
            text[position] = UInt8(truncatingIfNeeded: generator.next())
        }
        if !text.isEmpty && generator.next() % 8 == 0 { text.removeLast() }
        return text
    }

    @Test func randomInputsAgreeWithStandardLibrary() {
        var generator = SplitMix64(seed: 2024)
        var invalidSeen = 0
        for _ in 0..<20_000 {
            let sample = Self.randomSample(&generator)
            let expected = Self.reference(sample)
            if !expected { invalidSeen += 1 }
            if UTF8Validation.isValid(sample) != expected { Issue.record("whole: \(sample)") }
            let split = sample.isEmpty ? 0 : Int(generator.next() % UInt64(sample.count + 1))
            var validator = UTF8Validation.Validator()
            let ok = validator.feed(Array(sample[..<split])) && validator.feed(Array(sample[split...]))
            if (ok && validator.isComplete) != expected { Issue.record("split \(split): \(sample)") }
        }
        #expect(invalidSeen > 1000)
    }

    @Test func randomBytesAgreeWithStandardLibrary() {
        var generator = SplitMix64(seed: 99)
        for _ in 0..<20_000 {
            let sample = (0..<Int(generator.next() % 12)).map { _ in UInt8(truncatingIfNeeded: generator.next() | 0x80) }
            if UTF8Validation.isValid(sample) != Self.reference(sample) { Issue.record("\(sample)") }
        }
    }

    /// Long inputs are validated as two interleaved halves split near the middle: put every
    /// edge case at every position around the split, in ASCII and in multi-byte surroundings.
    @Test(arguments: [Array("a".utf8), Array("é".utf8), Array("€".utf8), Array("🎉".utf8)])
    func edgeCasesAroundTheMiddleOfLongInputs(filler: [UInt8]) {
        for length in [512, 515, 640, 1001] {
            var base: [UInt8] = []
            while base.count < length { base += filler }
            for pattern in Self.edgeCases where pattern.count <= 8 {
                for position in (base.count / 2 - 10)...(base.count / 2 + 10) {
                    // Keep the surroundings valid: insert at a scalar boundary of the filler.
                    let at = position - position % filler.count
                    let input = Array(base[..<at]) + pattern + Array(base[at...])
                    let expected = Self.reference(input)
                    if UTF8Validation.isValid(input) != expected { Issue.record("\(pattern) at \(at) of \(input.count)") }
                    var validator = UTF8Validation.Validator()
                    let ok = validator.feed(Array(input[..<(at + 1)])) && validator.feed(Array(input[(at + 1)...]))
                    if (ok && validator.isComplete) != expected { Issue.record("split: \(pattern) at \(at)") }
                }
            }
        }
    }

    @Test func longRandomInputsAgreeWithStandardLibrary() {
        var generator = SplitMix64(seed: 77)
        var validSeen = 0
        defer { #expect(validSeen > 100) }
        for _ in 0..<400 {
            var sample: [UInt8] = []
            let target = 600 + Int(generator.next() % 3000)
            while sample.count < target {
                let piece = Self.randomSample(&generator)
                if Self.reference(piece) { sample += piece }
            }
            // Half stay valid; the rest get one corrupted byte anywhere.
            if generator.next() % 2 == 0 {
                sample[Int(generator.next() % UInt64(sample.count))] = UInt8(truncatingIfNeeded: generator.next())
            }
            let expected = Self.reference(sample)
            if expected { validSeen += 1 }
            if UTF8Validation.isValid(sample) != expected { Issue.record("length \(sample.count)") }
            let split = Int(generator.next() % UInt64(sample.count))
            var validator = UTF8Validation.Validator()
            let ok = validator.feed(Array(sample[..<split])) && validator.feed(Array(sample[split...]))
            if (ok && validator.isComplete) != expected { Issue.record("split \(split) of \(sample.count)") }
        }
    }

    @Test func failureIsSticky() {
        var validator = UTF8Validation.Validator()
        let first = validator.feed([0xFF])
        let second = validator.feed(bytes("fine"))
        #expect(!first && !second)
        #expect(!validator.isComplete)
    }

    @Test func everyScalarIsValidAndEverySurrogateIsNot() {
        var text: [UInt8] = []
        for value in UInt32(0)...0x10FFFF {
            if let scalar = Unicode.Scalar(value) { text += Array(String(Character(scalar)).utf8) }
        }
        #expect(UTF8Validation.isValid(text))
        for value in UInt32(0xD800)...0xDFFF {
            let encoded: [UInt8] = [0xE0 | UInt8(value >> 12), 0x80 | UInt8((value >> 6) & 0x3F), 0x80 | UInt8(value & 0x3F)]
            if UTF8Validation.isValid(encoded) { Issue.record("surrogate \(value)") }
        }
    }
}
