import COpenSSL

/// A resume token (PROTOCOL.md "Surviving restarts and network blips"): 128 random bits, known
/// only to the client; the store keeps its SHA-256 alone. Kept as two integers, not as text: a
/// held lease keeps its token, and a string of 32 digits would cost a heap block per lease.
struct ResumeToken: Equatable {
    let high: UInt64
    let low: UInt64

    /// From the system's CSPRNG (getrandom).
    static func random() -> ResumeToken {
        var generator = SystemRandomNumberGenerator()
        return ResumeToken(high: generator.next(), low: generator.next())
    }

    private init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// 32 lowercase hex digits, as `text` writes them; nil for anything else.
    init?(_ text: String) {
        guard text.utf8.count == 32, text.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }),
              let high = UInt64(text.prefix(16), radix: 16), let low = UInt64(text.suffix(16), radix: 16) else { return nil }
        self.init(high: high, low: low)
    }

    /// What the client is sent: 32 hex digits.
    var text: String { Self.hex(high) + Self.hex(low) }

    var digest: TokenDigest { TokenDigest(of: text) }

    /// SHA-256 of `token`'s UTF-8, in hex (what the store keeps).
    static func hash(_ token: String) -> String { TokenDigest(of: token).hex }

    private static func hex(_ value: UInt64) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: 16 - text.count) + text
    }
}

/// SHA-256 of a resume token's text, inline.
struct TokenDigest {
    private var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    init(of token: String) {
        var text = token
        withUnsafeMutableBytes(of: &words) { out in
            text.withUTF8 { bytes in
                _ = SHA256(bytes.baseAddress, bytes.count, out.baseAddress?.assumingMemoryBound(to: UInt8.self))
            }
        }
    }

    /// 64 hex digits (either case); nil for anything else.
    init?(hex: String) {
        let digits = Array(hex.utf8)
        guard digits.count == 64 else { return nil }
        var failed = false
        withUnsafeMutableBytes(of: &words) { out in
            for index in 0..<32 {
                guard let high = Self.nibble(digits[2 * index]), let low = Self.nibble(digits[2 * index + 1]) else {
                    failed = true
                    return
                }
                out[index] = high << 4 | low
            }
        }
        if failed { return nil }
    }

    private static func nibble(_ digit: UInt8) -> UInt8? {
        switch digit {
        case 0x30...0x39: digit - 0x30
        case 0x61...0x66: digit - 0x61 + 10
        case 0x41...0x46: digit - 0x41 + 10
        default: nil
        }
    }

    /// 64 lowercase hex digits.
    var hex: String {
        withUnsafeBytes(of: words) { bytes in
            bytes.map { byte in
                let text = String(byte, radix: 16)
                return byte < 16 ? "0" + text : text
            }.joined()
        }
    }

    /// Compares without an early exit, so timing does not reveal how much of a guess was right.
    func matches(_ other: TokenDigest) -> Bool {
        (words.0 ^ other.words.0) | (words.1 ^ other.words.1) | (words.2 ^ other.words.2) | (words.3 ^ other.words.3) == 0
    }
}

/// What the server keeps of a lease's resume token: the token while this process knows it (it
/// made it, or heard it in `resume`), else only its digest (a lease kept over a restart).
enum ResumeSecret {
    case token(ResumeToken)
    case digest(TokenDigest)
    /// The store's hash was not a SHA-256 in hex: no token resumes the lease.
    case none

    /// The token's text, to repeat in `queued` and `granted`; nil when only its digest is known.
    var tokenText: String? {
        if case .token(let token) = self { token.text } else { nil }
    }

    /// The digest, as the store keeps it.
    var digest: TokenDigest? {
        switch self {
        case .token(let token): token.digest
        case .digest(let digest): digest
        case .none: nil
        }
    }

    /// Whether `presented` (the digest of the client's token) is this lease's.
    func accepts(_ presented: TokenDigest) -> Bool {
        digest?.matches(presented) ?? false
    }
}
