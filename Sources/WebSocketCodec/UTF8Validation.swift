// Incremental UTF-8 validation (RFC 3629) for text messages that arrive in pieces.
//
// A shift-based DFA: the table row for a byte packs, for every state, the next state as a 6-bit
// shift amount, so one step is `state = row[byte] >> state`, with no branches. That makes the
// cost the same for every script. Long inputs run as two independent halves interleaved (the
// second half starts at a code point boundary), which doubles the work per cycle, and runs of
// ASCII are skipped a word at a time. The whole incremental state is one integer.

public enum UTF8Validation {
    public struct Validator: Sendable {
        private var state = DFA.accept

        public init() {}

        /// True when the bytes so far are valid and do not end in the middle of a code point.
        public var isComplete: Bool { state & DFA.stateMask == DFA.accept }

        /// Validates the next piece. Returns false as soon as the bytes seen so far cannot be a
        /// prefix of valid UTF-8; once false, it stays false.
        public mutating func feed(_ bytes: UnsafeRawBufferPointer) -> Bool {
            if let base = bytes.baseAddress, bytes.count > 0, state != DFA.error {
                state = DFA.run(from: state, base, count: bytes.count)
            }
            return state != DFA.error
        }

        public mutating func feed(_ bytes: [UInt8]) -> Bool {
            bytes.withUnsafeBytes { feed($0) }
        }
    }

    /// Whether `bytes` is complete, valid UTF-8.
    public static func isValid(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return true }
        return DFA.run(from: DFA.accept, base, count: bytes.count) == DFA.accept
    }

    public static func isValid(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { isValid($0) }
    }
}

/// States are shift amounts (multiples of 6) into a table row; the row for byte b holds
/// `next(state, b) << state` for every state.
enum DFA {
    static let accept: UInt64 = 0          // at a code point boundary
    static let error: UInt64 = 6           // sink
    static let needOne: UInt64 = 12        // one continuation byte (80–BF) to go
    static let needTwo: UInt64 = 18
    static let needThree: UInt64 = 24
    static let afterE0: UInt64 = 30        // next byte A0–BF (no overlongs)
    static let afterED: UInt64 = 36        // next byte 80–9F (no surrogates)
    static let afterF0: UInt64 = 42        // next byte 90–BF (no overlongs)
    static let afterF4: UInt64 = 48        // next byte 80–8F (nothing above U+10FFFF)
    static let stateMask: UInt64 = 63

    /// 256 rows, one per byte value, so any UInt8 is a valid index.
    static let rows: [UInt64] = {
        func next(_ state: UInt64, _ byte: UInt8) -> UInt64 {
            switch state {
            case accept:
                switch byte {
                case 0x00...0x7F: return accept
                case 0xC2...0xDF: return needOne
                case 0xE0: return afterE0
                case 0xE1...0xEC, 0xEE, 0xEF: return needTwo
                case 0xED: return afterED
                case 0xF0: return afterF0
                case 0xF1...0xF3: return needThree
                case 0xF4: return afterF4
                default: return error
                }
            case needOne: return (0x80...0xBF).contains(byte) ? accept : error
            case needTwo: return (0x80...0xBF).contains(byte) ? needOne : error
            case needThree: return (0x80...0xBF).contains(byte) ? needTwo : error
            case afterE0: return (0xA0...0xBF).contains(byte) ? needOne : error
            case afterED: return (0x80...0x9F).contains(byte) ? needOne : error
            case afterF0: return (0x90...0xBF).contains(byte) ? needTwo : error
            case afterF4: return (0x80...0x8F).contains(byte) ? needTwo : error
            default: return error
            }
        }
        let states = [accept, error, needOne, needTwo, needThree, afterE0, afterED, afterF0, afterF4]
        return (0...255).map { byte in
            states.reduce(UInt64(0)) { row, state in row | next(state, UInt8(byte)) << state }
        }
    }()

    private static let highBits: UInt64 = 0x8080_8080_8080_8080

    /// Runs the DFA over `count` bytes from `state`; returns the final state (masked).
    static func run(from state: UInt64, _ base: UnsafeRawPointer, count: Int) -> UInt64 {
        rows.withUnsafeBufferPointer { table in
            // `table` has 256 entries and is only indexed by a UInt8, so every access is in bounds.
            guard let rows = table.baseAddress, table.count == 256 else { return error }
            guard count >= 512 else { return single(rows, base, from: 0, to: count, state: state) }

            // Split at a code point boundary: a byte that is not a continuation byte. If three
            // steps do not find one, the input has 4+ continuation bytes in a row and the second
            // half fails by itself, as it should.
            var middle = count / 2
            for _ in 0..<3 where base.load(fromByteOffset: middle, as: UInt8.self) & 0xC0 == 0x80 { middle += 1 }

            var first = state & stateMask
            var second = accept
            var i = 0
            var j = middle
            let block = 64
            while middle - i >= block && count - j >= block {
                if (first | second) & stateMask == accept && isASCII(base, i, block) && isASCII(base, j, block) {
                    i += block
                    j += block
                    continue
                }
                for k in 0..<block {
                    first = rows[Int(base.load(fromByteOffset: i + k, as: UInt8.self))] &>> first
                    second = rows[Int(base.load(fromByteOffset: j + k, as: UInt8.self))] &>> second
                }
                i += block
                j += block
            }
            first = single(rows, base, from: i, to: middle, state: first)
            // The first half must end exactly on a boundary, since the second starts on one.
            guard first == accept else { return error }
            return single(rows, base, from: j, to: count, state: second)
        }
    }

    /// One DFA over `[from, to)`, skipping ASCII sixteen bytes at a time while at a boundary.
    @inline(__always)
    private static func single(
        _ rows: UnsafePointer<UInt64>, _ base: UnsafeRawPointer, from: Int, to end: Int, state: UInt64
    ) -> UInt64 {
        var state = state
        var i = from
        while i < end {
            if state & stateMask == accept {
                while end - i >= 16 && isASCII(base, i, 16) { i += 16 }
            }
            let blockEnd = min(end, i + 16)
            while i < blockEnd {
                state = rows[Int(base.load(fromByteOffset: i, as: UInt8.self))] &>> state
                i += 1
            }
            if state & stateMask == error { return error }
        }
        return state & stateMask
    }

    /// Whether `count` bytes (a multiple of 16) at `offset` are all below 0x80.
    @inline(__always)
    private static func isASCII(_ base: UnsafeRawPointer, _ offset: Int, _ count: Int) -> Bool {
        var combined: UInt64 = 0
        var k = 0
        while k < count {
            combined |= base.loadUnaligned(fromByteOffset: offset + k, as: UInt64.self)
                | base.loadUnaligned(fromByteOffset: offset + k + 8, as: UInt64.self)
            k += 16
        }
        return combined & highBits == 0
    }
}
