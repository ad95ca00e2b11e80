import LeaseProtocol
import Testing

/// The protocol's JSON parser, by byte vectors: what RFC 8259 allows, what the protocol refuses,
/// and what each refusal says.
@Suite struct JSONTests {
    func parse(_ text: String) throws(JSONParseError) -> JSONValue { try JSONValue.parse(Array(text.utf8)) }

    @Test(arguments: [
        (#""a\"b\\c\/d\b\f\n\r\t""#, "a\"b\\c/d\u{8}\u{C}\n\r\t"),
        (#""\u00e9\u0301""#, "\u{E9}\u{301}"),
        (#""\ud83d\ude00""#, "\u{1F600}"),
        ("\"\u{1F600}\"", "\u{1F600}"),
    ])
    func escapesAndSurrogatesDecode(_ testCase: (String, String)) throws {
        let value = try parse(testCase.0)
        #expect(value.stringValue.map { Array($0.unicodeScalars) } == Array(testCase.1.unicodeScalars))
    }

    @Test(arguments: [
        (#""\ud83d""#, "unpaired surrogate"),
        (#""\ude00""#, "unpaired surrogate"),
        (#""\ud83d\u0041""#, "unpaired surrogate"),
        (#""\x""#, "invalid escape"),
        (#""\u12""#, "\\u"),
        ("\"a\u{1}b\"", "control character"),
        (#"{"a":1,"a":2}"#, "duplicate key"),
        (#"{"a":1,}"#, "expected a string key"),
        ("[1,2", "end of input"),
        ("01", ""),
        ("1 2", ""),
        ("", ""),
    ])
    func malformedInputIsRefusedWithAReason(_ testCase: (String, String)) {
        do {
            _ = try parse(testCase.0)
            Issue.record("accepted \(testCase.0)")
        } catch {
            #expect(error.problem.contains(testCase.1), "\(testCase.0): \(error.problem)")
            #expect(error.description.hasPrefix("invalid JSON at byte "))
        }
    }

    @Test func numbersKeepIntegersApartFromFractions() throws {
        #expect(try parse("42") == .int(42))
        #expect(try parse("-0") == .int(0))
        #expect(try parse("9223372036854775807") == .int(Int64.max))
        #expect(try parse("1.5") == .double(1.5))
        #expect(try parse("1e3") == .double(1000))
        if case .int = try parse("9223372036854775808") { Issue.record("an integer beyond Int64 must not wrap") }
    }

    @Test func nestingIsBoundedByDepth() throws {
        let deep = String(repeating: "[", count: 33) + String(repeating: "]", count: 33)
        #expect(throws: JSONParseError.self) { try parse(deep) }
        let fine = String(repeating: "[", count: 32) + String(repeating: "]", count: 32)
        _ = try parse(fine)
    }

    @Test func keysAreComparedByScalarsNotByCanonicalEquivalence() throws {
        // "é" precomposed and "e" + U+0301 are two keys to the protocol (it counts scalars).
        let value = try parse("{\"\u{E9}\":1,\"e\u{301}\":2}")
        #expect(value["\u{E9}"] == .int(1))
        #expect(value["e\u{301}"] == .int(2))
    }

    @Test func aDuplicateAmongThousandsOfKeysIsFound() throws {
        let members = (0..<6000).map { "\"k\($0)\":\($0)" }
        let unique = "{" + members.joined(separator: ",") + "}"
        #expect(try parse(unique)["k5999"] == .int(5999))
        let duplicated = "{" + (members + ["\"k17\":0"]).joined(separator: ",") + "}"
        #expect(throws: JSONParseError.self) { try parse(duplicated) }
    }

    @Test func serializationRoundTrips() throws {
        let text = #"{"a":[1,2.5,true,false,null,"x\"y\n"],"b":{"c":"\u0001é"}}"#
        let value = try parse(text)
        #expect(try parse(value.serialized()) == value)
    }

    @Test("serialized bytes, exactly: escapes, control characters, non-ASCII, numbers")
    func serializedBytesExactly() {
        let value = JSONValue.object([
            ("q\"b\\", .string("line\nret\rtab\t\u{1}\u{1F}é😀")),
            ("n", .array([.int(0), .int(9), .int(10), .int(-7), .int(.min), .double(2.5), .double(3), .double(.nan)])),
            ("z", .array([.null, .bool(true), .bool(false), .object([]), .array([])])),
        ])
        let expected = #"{"q\"b\\":"line\nret\rtab\t\u0001\u001fé😀","n":[0,9,10,-7,-9223372036854775808,2.5,3,null],"z":[null,true,false,{},[]]}"#
        #expect(value.serialized() == expected)
        #expect(value.serializedBytes() == Array(expected.utf8))
    }
}
