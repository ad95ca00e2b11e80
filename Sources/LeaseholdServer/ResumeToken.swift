import COpenSSL

/// Resume tokens (PROTOCOL.md "Surviving restarts and network blips"): 128 random bits, known
/// only to the client; the server keeps their SHA-256 alone.
enum ResumeToken {
    /// 32 hex digits from the system's CSPRNG (getrandom).
    static func make() -> String {
        var generator = SystemRandomNumberGenerator()
        let high: UInt64 = generator.next(), low: UInt64 = generator.next()
        return hex(high) + hex(low)
    }

    /// SHA-256 of the token's UTF-8, in hex.
    static func hash(_ token: String) -> String {
        var digest = [UInt8](repeating: 0, count: Int(SHA256_DIGEST_LENGTH))
        var text = token
        text.withUTF8 { bytes in
            digest.withUnsafeMutableBufferPointer { out in
                _ = SHA256(bytes.baseAddress, bytes.count, out.baseAddress)
            }
        }
        return digest.map { byte in
            let text = String(byte, radix: 16)
            return byte < 16 ? "0" + text : text
        }.joined()
    }

    private static func hex(_ value: UInt64) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: 16 - text.count) + text
    }
}
