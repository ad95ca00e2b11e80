// Incremental UTF-8 validation (RFC 3629) for text messages that arrive in pieces.
//
// The hot loop skips ASCII eight or thirty-two bytes at a time and checks each multi-byte
// sequence with a couple of compares; a sequence cut by a buffer boundary is finished one byte
// at a time in the next `feed`. Rejects overlongs, surrogates (U+D800–DFFF) and code points
// above U+10FFFF at the first byte that makes the sequence impossible.

public enum UTF8Validation {
    public struct Validator: Sendable {
        /// Continuation bytes still owed by the code point in progress (0 = at a boundary).
        private var pendingContinuations: UInt8 = 0
        /// Allowed range of the next byte while a code point is in progress.
        private var nextLowest: UInt8 = 0x80
        private var nextHighest: UInt8 = 0xBF
        private var failed = false

        public init() {}

        /// True when the bytes so far do not end in the middle of a code point.
        public var isComplete: Bool { !failed && pendingContinuations == 0 }

        /// Validates the next piece. Returns false as soon as the bytes seen so far cannot be a
        /// prefix of valid UTF-8; once false, it stays false.
        public mutating func feed(_ bytes: UnsafeRawBufferPointer) -> Bool {
            guard !failed else { return false }
            guard let base = bytes.baseAddress, bytes.count > 0 else { return true }
            var index = 0
            let count = bytes.count
            // Finish a code point left open by the previous piece.
            while pendingContinuations > 0 && index < count {
                guard step(base.load(fromByteOffset: index, as: UInt8.self)) else { return fail() }
                index += 1
            }
            guard index < count else { return true }
            // Bulk: every sequence that fits entirely in the buffer.
            let boundary = UTF8Validation.validatePrefix(base, from: index, count: count)
            guard boundary >= 0 else { return fail() }
            // What is left is shorter than the sequence its lead byte announced: check what we have.
            index = boundary
            while index < count {
                guard step(base.load(fromByteOffset: index, as: UInt8.self)) else { return fail() }
                index += 1
            }
            return true
        }

        public mutating func feed(_ bytes: [UInt8]) -> Bool {
            bytes.withUnsafeBytes { feed($0) }
        }

        private mutating func fail() -> Bool {
            failed = true
            return false
        }

        /// Advances the byte-at-a-time state machine by one byte.
        private mutating func step(_ byte: UInt8) -> Bool {
            if pendingContinuations > 0 {
                guard byte >= nextLowest && byte <= nextHighest else { return false }
                pendingContinuations -= 1
                nextLowest = 0x80
                nextHighest = 0xBF
                return true
            }
            switch byte {
            case 0x00...0x7F: return true
            case 0xC2...0xDF: pendingContinuations = 1
            case 0xE0: pendingContinuations = 2; nextLowest = 0xA0              // no overlongs
            case 0xE1...0xEC, 0xEE, 0xEF: pendingContinuations = 2
            case 0xED: pendingContinuations = 2; nextHighest = 0x9F             // no surrogates
            case 0xF0: pendingContinuations = 3; nextLowest = 0x90              // no overlongs
            case 0xF1...0xF3: pendingContinuations = 3
            case 0xF4: pendingContinuations = 3; nextHighest = 0x8F             // ≤ U+10FFFF
            default: return false                                                // 80–C1, F5–FF
            }
            return true
        }
    }

    /// Whether `bytes` is complete, valid UTF-8.
    public static func isValid(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return true }
        return validatePrefix(base, from: 0, count: bytes.count) == bytes.count
    }

    public static func isValid(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { isValid($0) }
    }

    private static let highBits: UInt64 = 0x8080_8080_8080_8080

    /// Validates whole sequences starting at `start`. Returns the offset of the first sequence that
    /// does not fit in the buffer (== count when everything fit), or -1 on invalid input.
    /// Stops early only at the end of the buffer, so a returned boundary leaves fewer than four bytes.
    @inline(__always)
    static func validatePrefix(_ base: UnsafeRawPointer, from start: Int, count: Int) -> Int {
        var index = start
        while index < count {
            let lead = base.load(fromByteOffset: index, as: UInt8.self)
            if lead < 0x80 {
                // ASCII: skip whole words. Within a word, jump straight to the first non-ASCII byte.
                index += 1
                while count - index >= 32 {
                    let a = base.loadUnaligned(fromByteOffset: index, as: UInt64.self)
                    let b = base.loadUnaligned(fromByteOffset: index + 8, as: UInt64.self)
                    let c = base.loadUnaligned(fromByteOffset: index + 16, as: UInt64.self)
                    let d = base.loadUnaligned(fromByteOffset: index + 24, as: UInt64.self)
                    if (a | b | c | d) & highBits != 0 { break }
                    index += 32
                }
                if count - index >= 8 {
                    let word = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: index, as: UInt64.self))
                    let nonASCII = word & highBits
                    index += nonASCII == 0 ? 8 : nonASCII.trailingZeroBitCount &>> 3
                }
                continue
            }
            let remaining = count - index
            if lead < 0xE0 {
                // Two bytes: C2–DF then a continuation (C0, C1 would be overlong).
                guard lead >= 0xC2 else { return -1 }
                guard remaining >= 2 else { return index }
                let second = base.load(fromByteOffset: index + 1, as: UInt8.self)
                guard second & 0xC0 == 0x80 else { return -1 }
                index += 2
            } else if lead < 0xF0 {
                guard remaining >= 3 else { return boundaryAfterCheckingPrefix(base, index, count) }
                let second = base.load(fromByteOffset: index + 1, as: UInt8.self)
                let third = base.load(fromByteOffset: index + 2, as: UInt8.self)
                guard third & 0xC0 == 0x80, secondByteIsValid(lead: lead, second) else { return -1 }
                index += 3
            } else {
                guard lead <= 0xF4 else { return -1 }
                guard remaining >= 4 else { return boundaryAfterCheckingPrefix(base, index, count) }
                let second = base.load(fromByteOffset: index + 1, as: UInt8.self)
                let third = base.load(fromByteOffset: index + 2, as: UInt8.self)
                let fourth = base.load(fromByteOffset: index + 3, as: UInt8.self)
                guard (third & fourth) & 0xC0 == 0x80, (third | fourth) & 0x40 == 0,
                      secondByteIsValid(lead: lead, second) else { return -1 }
                index += 4
            }
        }
        return index
    }

    /// A truncated 3- or 4-byte sequence at the end of the buffer: hands it to the byte-wise state
    /// machine (by returning its offset) unless its second byte already rules it out.
    @inline(__always)
    private static func boundaryAfterCheckingPrefix(_ base: UnsafeRawPointer, _ index: Int, _ count: Int) -> Int {
        if count - index >= 2 {
            let lead = base.load(fromByteOffset: index, as: UInt8.self)
            if !secondByteIsValid(lead: lead, base.load(fromByteOffset: index + 1, as: UInt8.self)) { return -1 }
        }
        return index
    }

    /// The second byte of a 3- or 4-byte sequence, whose range depends on the lead byte
    /// (RFC 3629 §4: this is where overlongs, surrogates and values above U+10FFFF are excluded).
    @inline(__always)
    private static func secondByteIsValid(lead: UInt8, _ second: UInt8) -> Bool {
        switch lead {
        case 0xE0: return second >= 0xA0 && second <= 0xBF
        case 0xED: return second >= 0x80 && second <= 0x9F
        case 0xF0: return second >= 0x90 && second <= 0xBF
        case 0xF4: return second >= 0x80 && second <= 0x8F
        default: return second & 0xC0 == 0x80
        }
    }
}
