import LeaseProtocol
#if canImport(Glibc)
import Glibc
#endif

/// A journal line read without building a JSON tree: one pass over its top-level members, for
/// the few fields usage needs. Only for lines without a backslash (no escapes: a string ends at
/// the next quote); others are parsed in full.
struct JournalLine {
    let bytes: UnsafeRawBufferPointer

    /// nil when the line has an escape or is not an object.
    init?(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count >= 2, bytes[0] == UInt8(ascii: "{"),
              memchr(base, 0x5C, bytes.count) == nil else { return nil }
        self.bytes = bytes
    }

    /// Calls `visit(key, value)` for each member of the object at `range` (byte ranges; a string
    /// key without its quotes); false when the object is malformed.
    @discardableResult
    func members(_ range: Range<Int>, _ visit: (Range<Int>, Range<Int>) -> Void) -> Bool {
        var index = range.lowerBound
        guard index < range.upperBound, bytes[index] == UInt8(ascii: "{") else { return false }
        index += 1
        if index < range.upperBound, bytes[index] == UInt8(ascii: "}") { return true }
        while index < range.upperBound {
            guard bytes[index] == UInt8(ascii: "\""), let keyEnd = quote(after: index, limit: range.upperBound) else { return false }
            let key = (index + 1)..<keyEnd
            index = keyEnd + 1
            guard index < range.upperBound, bytes[index] == UInt8(ascii: ":") else { return false }
            index += 1
            guard let valueEnd = skipValue(at: index, limit: range.upperBound) else { return false }
            visit(key, index..<valueEnd)
            index = valueEnd
            guard index < range.upperBound else { return false }
            if bytes[index] == UInt8(ascii: "}") { return true }
            guard bytes[index] == UInt8(ascii: ",") else { return false }
            index += 1
        }
        return false
    }

    /// Calls `visit(value)` for each element of the array at `range`.
    @discardableResult
    func elements(_ range: Range<Int>, _ visit: (Range<Int>) -> Void) -> Bool {
        var index = range.lowerBound
        guard index < range.upperBound, bytes[index] == UInt8(ascii: "[") else { return false }
        index += 1
        if index < range.upperBound, bytes[index] == UInt8(ascii: "]") { return true }
        while index < range.upperBound {
            guard let end = skipValue(at: index, limit: range.upperBound) else { return false }
            visit(index..<end)
            index = end
            guard index < range.upperBound else { return false }
            if bytes[index] == UInt8(ascii: "]") { return true }
            guard bytes[index] == UInt8(ascii: ",") else { return false }
            index += 1
        }
        return false
    }

    private func quote(after index: Int, limit: Int) -> Int? {
        var position = index + 1
        while position < limit {
            if bytes[position] == UInt8(ascii: "\"") { return position }
            position += 1
        }
        return nil
    }

    /// The index just past the value that starts at `index`.
    private func skipValue(at index: Int, limit: Int) -> Int? {
        guard index < limit else { return nil }
        switch bytes[index] {
        case UInt8(ascii: "\""):
            return quote(after: index, limit: limit).map { $0 + 1 }
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            var depth = 0
            var position = index
            while position < limit {
                switch bytes[position] {
                case UInt8(ascii: "\""):
                    guard let end = quote(after: position, limit: limit) else { return nil }
                    position = end
                case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    depth -= 1
                    if depth == 0 { return position + 1 }
                default: break
                }
                position += 1
            }
            return nil
        default:
            var position = index
            while position < limit, bytes[position] != UInt8(ascii: ","), bytes[position] != UInt8(ascii: "}"),
                  bytes[position] != UInt8(ascii: "]") {
                position += 1
            }
            return position
        }
    }

    func equals(_ range: Range<Int>, _ text: StaticString) -> Bool {
        guard range.count == text.utf8CodeUnitCount else { return false }
        guard let base = bytes.baseAddress else { return false }
        return memcmp(base + range.lowerBound, text.utf8Start, range.count) == 0
    }

    /// The string at `range` (with its quotes), or nil for another kind of value.
    func string(_ range: Range<Int>) -> String? {
        guard range.count >= 2, bytes[range.lowerBound] == UInt8(ascii: "\"") else { return nil }
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[(range.lowerBound + 1)..<(range.upperBound - 1)]), as: UTF8.self)
    }

    func number(_ range: Range<Int>) -> Double? {
        guard !range.isEmpty, range.count < 40 else { return nil }
        return Double(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self))
    }
}

extension History {
    /// What usage needs from one journal line.
    struct UsageFields {
        var lease: String?
        var resources: [(name: String, type: String?)] = []
        var waited: Double?
        var held: Double?
        var reason: String?
        var result: String?
        var resource: String?
        var state: Bool?

        init?(_ raw: UnsafeRawBufferPointer) {
            if let line = JournalLine(raw) {
                var ok = true
                let wellFormed = line.members(0..<raw.count) { key, value in
                    if line.equals(key, "lease") { lease = line.string(value) }
                    else if line.equals(key, "resources") {
                        ok = line.elements(value) { element in
                            if let name = line.string(element) { resources.append((name, nil)); return }
                            var name: String?
                            var type: String?
                            line.members(element) { key, value in
                                if line.equals(key, "name") { name = line.string(value) }
                                else if line.equals(key, "type") { type = line.string(value) }
                            }
                            if let name { resources.append((name, type)) }
                        } && ok
                    }
                    else if line.equals(key, "waited_seconds") { waited = line.number(value) }
                    else if line.equals(key, "held_seconds") { held = line.number(value) }
                    else if line.equals(key, "reason") { reason = line.string(value) }
                    else if line.equals(key, "result") { result = line.string(value) }
                    else if line.equals(key, "resource") { resource = line.string(value) }
                    else if line.equals(key, "state") { state = line.equals(value, "true") ? true : line.equals(value, "false") ? false : nil }
                }
                guard wellFormed else { return nil }
                if ok { return }
                guard let parsed = UsageFields(parsedFrom: raw) else { return nil }
                self = parsed
                return
            }
            guard let parsed = UsageFields(parsedFrom: raw) else { return nil }
            self = parsed
        }

        /// The slow way, for lines with escapes.
        private init?(parsedFrom raw: UnsafeRawBufferPointer) {
            guard let value = try? JSONValue.parse(Array(raw), maxDepth: 8), case .object = value else { return nil }
            lease = value["lease"]?.stringValue
            if case .array(let items)? = value["resources"] {
                for item in items {
                    if let name = item.stringValue ?? item["name"]?.stringValue { resources.append((name, item["type"]?.stringValue)) }
                }
            }
            waited = value["waited_seconds"]?.numberValue
            held = value["held_seconds"]?.numberValue
            reason = value["reason"]?.stringValue
            result = value["result"]?.stringValue
            resource = value["resource"]?.stringValue
            if case .bool(let flag)? = value["state"] { state = flag }
        }
    }
}
