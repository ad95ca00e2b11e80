// `Sec-WebSocket-Extensions` header grammar (RFC 6455 §9.1):
//   extension-list = 1#extension
//   extension      = extension-token *( ";" extension-param )
//   extension-param = token [ "=" (token | quoted-string) ]   ; unescaped quoted value must be a token

/// One offered (or accepted) extension with its parameters, in header order.
public struct WebSocketExtensionOffer: Equatable, Sendable, CustomStringConvertible {
    public var name: String
    /// Parameter names and values; nil for a parameter given without `=value`.
    public var parameters: [(String, String?)]

    public init(name: String, parameters: [(String, String?)] = []) {
        self.name = name
        self.parameters = parameters
    }

    public static func == (lhs: WebSocketExtensionOffer, rhs: WebSocketExtensionOffer) -> Bool {
        lhs.name == rhs.name
            && lhs.parameters.count == rhs.parameters.count
            && zip(lhs.parameters, rhs.parameters).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
    }

    /// The first parameter called `name` (ASCII case-insensitive): `.some(nil)` when present without value.
    public func parameter(named name: String) -> String?? {
        for (key, value) in parameters where HeaderToken.equalsIgnoringCase(key, name) { return .some(value) }
        return nil
    }

    /// The offer written back as a header element, e.g. `permessage-deflate; client_max_window_bits=10`.
    public var headerValue: String {
        var text = name
        for (key, value) in parameters {
            text += "; " + key
            if let value { text += "=" + (HeaderToken.isToken(value) ? value : HeaderToken.quoted(value)) }
        }
        return text
    }

    public var description: String { headerValue }
}

public enum WebSocketExtensions {
    /// Parses every `Sec-WebSocket-Extensions` header value, in order, into offers.
    /// Empty list elements (`a, , b`) are skipped as RFC 9110 §5.6.1 asks. Throws (close code 1002,
    /// which the HTTP layer turns into 400) on anything else that does not follow the grammar.
    public static func parse(_ headerValues: [String]) throws(WebSocketError) -> [WebSocketExtensionOffer] {
        var offers: [WebSocketExtensionOffer] = []
        for value in headerValues {
            var scanner = HeaderScanner(Array(value.utf8))
            try scanner.parseOffers(into: &offers)
        }
        return offers
    }

    /// Joins offers into one header value.
    public static func headerValue(_ offers: [WebSocketExtensionOffer]) -> String {
        offers.map(\.headerValue).joined(separator: ", ")
    }
}

private struct HeaderScanner {
    let bytes: [UInt8]
    var index = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var atEnd: Bool { index >= bytes.count }
    var peek: UInt8? { index < bytes.count ? bytes[index] : nil }

    mutating func skipWhitespace() {
        while let byte = peek, byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") { index += 1 }
    }

    func malformed(_ what: String) -> WebSocketError {
        .protocolError("Sec-WebSocket-Extensions: \(what) at offset \(index)")
    }

    mutating func token() -> String? {
        let start = index
        while let byte = peek, HeaderToken.isTokenByte(byte) { index += 1 }
        guard index > start else { return nil }
        return String(decoding: bytes[start..<index], as: UTF8.self)
    }

    mutating func quotedString() throws(WebSocketError) -> String {
        index += 1   // opening quote
        var value: [UInt8] = []
        while let byte = peek {
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(decoding: value, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard let escaped = peek else { throw malformed("unterminated escape") }
                value.append(escaped)
                index += 1
            default:
                value.append(byte)
            }
        }
        throw malformed("unterminated quoted string")
    }

    mutating func parseOffers(into offers: inout [WebSocketExtensionOffer]) throws(WebSocketError) {
        while true {
            skipWhitespace()
            guard let byte = peek else { return }
            if byte == UInt8(ascii: ",") { index += 1; continue }   // empty list element
            guard let name = token() else { throw malformed("expected an extension name") }
            var parameters: [(String, String?)] = []
            skipWhitespace()
            while peek == UInt8(ascii: ";") {
                index += 1
                skipWhitespace()
                guard let key = token() else { throw malformed("expected a parameter name") }
                skipWhitespace()
                if peek == UInt8(ascii: "=") {
                    index += 1
                    skipWhitespace()
                    let value: String
                    if peek == UInt8(ascii: "\"") {
                        value = try quotedString()
                        guard HeaderToken.isToken(value) else { throw malformed("quoted value is not a token") }
                    } else if let tokenValue = token() {
                        value = tokenValue
                    } else {
                        throw malformed("expected a parameter value")
                    }
                    parameters.append((key, value))
                } else {
                    parameters.append((key, nil))
                }
                skipWhitespace()
            }
            guard atEnd || peek == UInt8(ascii: ",") else { throw malformed("unexpected character") }
            offers.append(WebSocketExtensionOffer(name: name, parameters: parameters))
        }
    }
}

/// RFC 9110 §5.6.2 tokens.
enum HeaderToken {
    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
             UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
             UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    static func isToken(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy(isTokenByte)
    }

    static func quoted(_ text: String) -> String {
        var result = "\""
        for character in text.unicodeScalars {
            if character == "\"" || character == "\\" { result.unicodeScalars.append("\\") }
            result.unicodeScalars.append(character)
        }
        return result + "\""
    }

    static func equalsIgnoringCase(_ lhs: String, _ rhs: String) -> Bool {
        lhs.utf8.count == rhs.utf8.count && zip(lhs.utf8, rhs.utf8).allSatisfy { lowercased($0) == lowercased($1) }
    }

    @inline(__always)
    static func lowercased(_ byte: UInt8) -> UInt8 {
        byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
    }
}
