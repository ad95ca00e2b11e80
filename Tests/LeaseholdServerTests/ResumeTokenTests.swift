@testable import LeaseholdServer
import Testing

/// What a lease keeps of its resume token (inline, no strings): the token, its digest, and what the
/// store writes, as byte-exact values.
@Suite("Resume tokens and their digests")
struct ResumeTokenTests {
    @Test("a token's text parses back to it, and its digest is SHA-256 of that text")
    func roundTrip() throws {
        let token = ResumeToken.random()
        #expect(token.text.utf8.count == 32)
        #expect(ResumeToken(token.text) == token)
        // SHA-256("abc"), FIPS 180-2.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        #expect(TokenDigest(of: "abc").hex == abc)
        #expect(ResumeToken.hash("abc") == abc)
        let parsed = try #require(TokenDigest(hex: abc.uppercased()))
        #expect(parsed.matches(TokenDigest(of: "abc")) && parsed.hex == abc)
        #expect(token.digest.hex == ResumeToken.hash(token.text))
        #expect(TokenDigest(hex: String(repeating: "0", count: 63) + "g") == nil)
    }

    @Test("anything but 32 lowercase hex digits is no token; anything but 64 hex digits is no digest",
          arguments: ["", "0123", String(repeating: "A", count: 32), String(repeating: "0", count: 31) + "g",
                      String(repeating: "0", count: 33)])
    func rejected(_ text: String) {
        #expect(ResumeToken(text) == nil)
        #expect(TokenDigest(hex: text) == nil)
    }

    @Test("a lease known by its digest alone takes the right token and no other; one with no digest takes none")
    func secrets() {
        let token = ResumeToken.random()
        let presented = TokenDigest(of: token.text)
        #expect(ResumeSecret.token(token).accepts(presented) && ResumeSecret.token(token).tokenText == token.text)
        #expect(ResumeSecret.digest(token.digest).accepts(presented) && ResumeSecret.digest(token.digest).tokenText == nil)
        #expect(!ResumeSecret.digest(token.digest).accepts(TokenDigest(of: token.text + "0")))
        #expect(!ResumeSecret.none.accepts(presented))
    }
}
