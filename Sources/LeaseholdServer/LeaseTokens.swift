/// Who may lease (`serve --lease-token-file`): each line `NAME TOKEN`; blank lines and lines
/// starting with `#` are skipped. With tokens configured, `/v1/lease` needs one of them
/// (`Authorization: Bearer TOKEN`, or `?token=TOKEN` for clients that cannot set headers), and
/// the lease's holder is prefixed by the token's name (`NAME/holder`).
public struct LeaseTokens: Sendable {
    public struct Problem: Error, CustomStringConvertible {
        public let description: String
    }

    private let entries: [(name: String, token: [UInt8])]

    public var names: [String] { entries.map(\.name) }

    public static let minimumTokenLength = 16

    public init(parsing text: String) throws(Problem) {
        var entries: [(name: String, token: [UInt8])] = []
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = index + 1
            let line = rawLine.hasSuffix("\r") ? rawLine.dropLast() : rawLine
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if words.isEmpty || words[0].hasPrefix("#") { continue }
            guard words.count == 2 else {
                throw Problem(description: "line \(number): expected NAME TOKEN, got \(words.count) word\(words.count == 1 ? "" : "s")")
            }
            let name = String(words[0]), token = String(words[1])
            guard name.unicodeScalars.allSatisfy(Self.isNameScalar) else {
                throw Problem(description: "line \(number): the name may hold letters, digits, '.', '_' and '-' only")
            }
            guard token.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }),
                  token.utf8.count >= Self.minimumTokenLength else {
                throw Problem(description: "line \(number): the token of \(name) must be at least \(Self.minimumTokenLength) visible ASCII characters")
            }
            guard !entries.contains(where: { $0.name.utf8.elementsEqual(name.utf8) }) else {
                throw Problem(description: "line \(number): \(name) is named twice")
            }
            guard !entries.contains(where: { $0.token == Array(token.utf8) }) else {
                throw Problem(description: "line \(number): the token of \(name) is another name's too")
            }
            entries.append((name, Array(token.utf8)))
        }
        guard !entries.isEmpty else { throw Problem(description: "no NAME TOKEN line: nobody could lease") }
        self.entries = entries
    }

    /// The name `presented` belongs to, nil for none. Every entry is compared in full, so the
    /// time taken does not tell how close a guess was.
    public func name(for presented: String) -> String? {
        let bytes = Array(presented.utf8)
        var found: String?
        for entry in entries where constantTimeEquals(entry.token, bytes) { found = entry.name }
        return found
    }

    private static func isNameScalar(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar {
        case "a"..."z", "A"..."Z", "0"..."9", ".", "_", "-": return true
        default: return false
        }
    }
}
