import LeaseCore
import LeaseProtocol
import CYaml
import Yams
#if canImport(Glibc)
import Glibc
#endif

/// One resource as written in the inventory file.
public struct InventoryEntry: Equatable, Sendable {
    public var name: String
    public var type: String
    public var labels: [String: String]
    public var attributes: JSONValue
    public var line: Int
    /// The longest a lease may hold it, in seconds: the smaller of its own `max_hold` and its
    /// type's; nil: no limit.
    public var maxHold: Double?
    /// Its reset (its own keys over its type's, key by key); nil: none.
    public var reset: ResetPolicy?
}

/// What the inventory's `types:` section says about every resource of a type (PROTOCOL.md
/// "Lease time limits", "Resetting hardware"); a resource's own keys override or tighten it.
public struct TypePolicy: Equatable, Sendable {
    /// Seconds (positive); nil: no limit.
    public var maxHold: Double?
    public var reset: ResetKeys?
}

/// A `reset:` mapping as written (type or resource); a resource's keys override its type's.
public struct ResetKeys: Equatable, Sendable {
    public var command: [String]?
    public var after: ResetPolicy.After?
    public var timeout: Double?
    /// Where `command` was written, for the error when no command is given at all.
    var line: Int?

    /// `self` over `base`, key by key.
    func over(_ base: ResetKeys?) -> ResetKeys {
        ResetKeys(command: command ?? base?.command, after: after ?? base?.after, timeout: timeout ?? base?.timeout,
                  line: line ?? base?.line)
    }
}

public struct InventoryError: Error, Equatable, Sendable, CustomStringConvertible {
    public let line: Int?
    public let problem: String

    public var description: String {
        if let line { return "line \(line): \(problem)" }
        return problem
    }
}

/// Reads the YAML inventory format of PROTOCOL.md, naming the line and the problem on any error.
public enum InventoryFile {
    static let resourceKeys: Set<String> = ["name", "type", "labels", "attributes", "max_hold", "reset"]
    static let typeKeys: Set<String> = ["max_hold", "reset"]
    static let resetKeys: Set<String> = ["command", "after", "timeout"]

    public static func parse(_ text: String) throws(InventoryError) -> [InventoryEntry] {
        if let anchor = firstAnchor(in: text) { throw anchor }
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw InventoryError(line: error.line, problem: "not valid YAML: \(error.problemText)")
        } catch {
            throw InventoryError(line: nil, problem: "not valid YAML: \(error)")
        }
        guard let root, case .mapping(let top) = root else {
            throw InventoryError(line: root?.mark?.line, problem: "the file must be a mapping with a 'resources' list")
        }
        try checkDuplicateKeys(top)
        for (key, value) in top where key.string != "resources" && key.string != "types" {
            throw InventoryError(line: value.mark?.line ?? key.mark?.line, problem: "unknown top-level key '\(key.string ?? "?")' (expected 'resources' and optionally 'types')")
        }
        let types = try top["types"].map { node throws(InventoryError) in try parseTypes(node) } ?? [:]
        guard let list = top["resources"] else {
            throw InventoryError(line: root.mark?.line, problem: "missing 'resources' list")
        }
        if case .scalar = list, list.tag.rawValue == Tag.Name.null.rawValue { return [] }
        guard case .sequence(let items) = list else {
            throw InventoryError(line: list.mark?.line, problem: "'resources' must be a list")
        }
        var entries: [InventoryEntry] = []
        // By scalars: "é" and "e" + U+0301 are two names to the protocol.
        var seen: [[UInt8]: Int] = [:]
        for item in items {
            var (entry, ownReset) = try parseResource(item)
            if let typeLimit = types[entry.type]?.maxHold {
                entry.maxHold = min(entry.maxHold ?? typeLimit, typeLimit)
            }
            if ownReset != nil || types[entry.type]?.reset != nil {
                let keys = (ownReset ?? ResetKeys()).over(types[entry.type]?.reset)
                guard let command = keys.command else {
                    throw InventoryError(line: keys.line ?? entry.line, problem: "the reset of '\(entry.name)' has no 'command'")
                }
                entry.reset = ResetPolicy(command: command, after: keys.after ?? .abnormal,
                                          timeout: LeaseService.duration(keys.timeout ?? 300))
            }
            if let first = seen[Array(entry.name.utf8)] {
                throw InventoryError(line: entry.line, problem: "duplicate resource name '\(entry.name)' (first defined on line \(first))")
            }
            seen[Array(entry.name.utf8)] = entry.line
            entries.append(entry)
        }
        return entries
    }

    /// `types: {array: {max_hold: 28800}}`.
    static func parseTypes(_ node: Node) throws(InventoryError) -> [String: TypePolicy] {
        if isNull(node) { return [:] }
        guard case .mapping(let mapping) = node else {
            throw InventoryError(line: node.mark?.line, problem: "'types' must be a mapping of type names to settings (max_hold)")
        }
        try checkDuplicateKeys(mapping)
        var policies: [String: TypePolicy] = [:]
        for (key, value) in mapping {
            let type = try string(key, what: "a type name under 'types'")
            var policy = TypePolicy()
            if !isNull(value) {
                guard case .mapping(let settings) = value else {
                    throw InventoryError(line: value.mark?.line ?? key.mark?.line, problem: "the settings of type '\(type)' must be a mapping (max_hold)")
                }
                try checkDuplicateKeys(settings)
                for (settingKey, settingValue) in settings {
                    guard let setting = settingKey.string, typeKeys.contains(setting) else {
                        throw InventoryError(line: settingKey.mark?.line ?? settingValue.mark?.line,
                                             problem: "unknown key '\(settingKey.string ?? "?")' in the settings of type '\(type)' (a type has max_hold and reset)")
                    }
                }
                policy.maxHold = try settings["max_hold"].map { node throws(InventoryError) in try seconds(node, what: "'max_hold' of type '\(type)'") }
                policy.reset = try settings["reset"].map { node throws(InventoryError) in try parseReset(node, of: "type '\(type)'") }
            }
            policies[type] = policy
        }
        return policies
    }

    /// `reset: {command: [...], after: abnormal|always, timeout: S}`, any key optional here (a
    /// resource's keys fill in its type's). The command: a list of strings, the first an absolute
    /// path to an executable file.
    static func parseReset(_ node: Node, of owner: String) throws(InventoryError) -> ResetKeys {
        guard case .mapping(let mapping) = node else {
            throw InventoryError(line: node.mark?.line, problem: "the reset of \(owner) must be a mapping (command, after, timeout)")
        }
        try checkDuplicateKeys(mapping)
        for (key, value) in mapping {
            guard let name = key.string, resetKeys.contains(name) else {
                throw InventoryError(line: key.mark?.line ?? value.mark?.line,
                                     problem: "unknown key '\(key.string ?? "?")' in the reset of \(owner) (a reset has command, after, timeout)")
            }
        }
        var keys = ResetKeys()
        if let commandNode = mapping["command"] {
            let line = commandNode.mark?.line
            guard case .sequence(let items) = commandNode else {
                throw InventoryError(line: line, problem: "the reset command of \(owner) must be a list: [\"/path/to/program\", \"argument\", ...]")
            }
            var argv: [String] = []
            for item in items { argv.append(try string(item, what: "an argument of the reset command of \(owner)")) }
            guard let program = argv.first else {
                throw InventoryError(line: line, problem: "the reset command of \(owner) is empty: give the program and its arguments")
            }
            guard program.hasPrefix("/") else {
                throw InventoryError(line: line, problem: "the reset command of \(owner) must start with an absolute path (got '\(program)'): it runs without a shell or PATH")
            }
            var info = stat()
            guard stat(program, &info) == 0, info.st_mode & S_IFMT == S_IFREG, access(program, X_OK) == 0 else {
                throw InventoryError(line: line, problem: "the reset command of \(owner), \(program), is not an executable file")
            }
            keys.command = argv
            keys.line = line
        }
        if let afterNode = mapping["after"] {
            let text = try string(afterNode, what: "'after' of the reset of \(owner)")
            guard let after = ResetPolicy.After(rawValue: text) else {
                throw InventoryError(line: afterNode.mark?.line, problem: "'after' of the reset of \(owner) must be abnormal or always (got '\(text)')")
            }
            keys.after = after
        }
        keys.timeout = try mapping["timeout"].map { node throws(InventoryError) in try seconds(node, what: "'timeout' of the reset of \(owner)") }
        return keys
    }

    /// A positive, finite number of seconds.
    static func seconds(_ node: Node, what: String) throws(InventoryError) -> Double {
        guard case .scalar(let scalar) = node,
              [Tag.Name.int.rawValue, Tag.Name.float.rawValue].contains(node.tag.rawValue),
              let value = Double(scalar.string.replacingUnderscores), value.isFinite, value > 0, value <= 1e9 else {
            throw InventoryError(line: node.mark?.line, problem: "\(what) must be a positive number of seconds (at most 10^9)")
        }
        return value
    }

    static func parseResource(_ node: Node) throws(InventoryError) -> (InventoryEntry, ResetKeys?) {
        let line = node.mark?.line ?? 0
        guard case .mapping(let mapping) = node else {
            throw InventoryError(line: line, problem: "a resource must be a mapping with 'name' and 'type'")
        }
        try checkDuplicateKeys(mapping)
        for (key, value) in mapping {
            guard let name = key.string, resourceKeys.contains(name) else {
                throw InventoryError(line: key.mark?.line ?? value.mark?.line ?? line,
                                     problem: "unknown key '\(key.string ?? "?")' (a resource has name, type, labels, attributes, max_hold, reset)")
            }
        }
        guard let nameNode = mapping["name"] else { throw InventoryError(line: line, problem: "resource without 'name'") }
        let name = try string(nameNode, what: "'name'")
        guard !name.isEmpty else { throw InventoryError(line: nameNode.mark?.line ?? line, problem: "'name' must not be empty") }
        guard let typeNode = mapping["type"] else {
            throw InventoryError(line: line, problem: "resource '\(name)' has no 'type'")
        }
        let type = try string(typeNode, what: "'type' of '\(name)'")
        guard !type.isEmpty else { throw InventoryError(line: typeNode.mark?.line ?? line, problem: "'type' of '\(name)' must not be empty") }

        var labels: [String: String] = [:]
        if let labelsNode = mapping["labels"], !isNull(labelsNode) {
            guard case .mapping(let pairs) = labelsNode else {
                throw InventoryError(line: labelsNode.mark?.line ?? line, problem: "'labels' of '\(name)' must be a mapping of strings")
            }
            try checkDuplicateKeys(pairs)
            for (key, value) in pairs {
                let labelName = try string(key, what: "a label name of '\(name)'")
                labels[labelName] = try string(value, what: "label '\(labelName)' of '\(name)'")
            }
        }
        var attributes = JSONValue.object([])
        if let attributesNode = mapping["attributes"], !isNull(attributesNode) {
            guard case .mapping = attributesNode else {
                throw InventoryError(line: attributesNode.mark?.line ?? line, problem: "'attributes' of '\(name)' must be a mapping")
            }
            attributes = try json(attributesNode, depth: 0)
        }
        let maxHold = try mapping["max_hold"].map { node throws(InventoryError) in try seconds(node, what: "'max_hold' of '\(name)'") }
        let reset = try mapping["reset"].map { node throws(InventoryError) in try parseReset(node, of: "'\(name)'") }
        return (InventoryEntry(name: name, type: type, labels: labels, attributes: attributes, line: line, maxHold: maxHold), reset)
    }

    /// The first anchor or alias in `text`, as an error; nil when there is none (or the text is
    /// not YAML, which the composer then reports). Read from libyaml's events, before composing:
    /// the composer shares an aliased node wherever it is used, so a dozen lines of nested
    /// aliases ("billion laughs") stand for billions of nodes to anything that walks the tree.
    static func firstAnchor(in text: String) -> InventoryError? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { return InventoryError(line: nil, problem: "cannot start the YAML parser") }
        defer { yaml_parser_delete(&parser) }
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBufferPointer { buffer -> InventoryError? in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            while true {
                var event = yaml_event_t()
                guard yaml_parser_parse(&parser, &event) == 1 else { return nil }
                defer { yaml_event_delete(&event) }
                let line = Int(event.start_mark.line) + 1
                let anchored: Bool
                switch event.type {
                case YAML_STREAM_END_EVENT: return nil
                case YAML_ALIAS_EVENT: anchored = true
                case YAML_SCALAR_EVENT: anchored = event.data.scalar.anchor != nil
                case YAML_SEQUENCE_START_EVENT: anchored = event.data.sequence_start.anchor != nil
                case YAML_MAPPING_START_EVENT: anchored = event.data.mapping_start.anchor != nil
                default: anchored = false
                }
                if anchored {
                    return InventoryError(line: line, problem: "YAML anchors and aliases (& and *) are not supported: write each value out")
                }
            }
        }
    }

    static func isNull(_ node: Node) -> Bool {
        if case .scalar = node { return node.tag.rawValue == Tag.Name.null.rawValue }
        return false
    }

    /// A string scalar. Plain scalars that YAML reads as numbers or booleans (`8`, `true`) are
    /// refused: write them quoted, so nobody is surprised by `on` meaning true.
    static func string(_ node: Node, what: String) throws(InventoryError) -> String {
        guard case .scalar(let scalar) = node else {
            throw InventoryError(line: node.mark?.line, problem: "\(what) must be a string")
        }
        guard node.tag.rawValue == Tag.Name.str.rawValue else {
            throw InventoryError(line: node.mark?.line, problem: "\(what) must be a string, not \(typeName(Tag.Name(rawValue: node.tag.rawValue))) '\(scalar.string)' (quote it)")
        }
        return scalar.string
    }

    static func typeName(_ tag: Tag.Name) -> String {
        switch tag {
        case .int: return "the number"
        case .float: return "the number"
        case .bool: return "the boolean"
        case .null: return "null"
        default: return tag.rawValue
        }
    }

    static func checkDuplicateKeys(_ mapping: Node.Mapping) throws(InventoryError) {
        var seen = Set<String>()
        var seenExactly = Set<[UInt8]>()
        for (key, _) in mapping {
            let text = key.string ?? "?"
            if !seenExactly.insert(Array(text.utf8)).inserted {
                throw InventoryError(line: key.mark?.line, problem: "duplicate key '\(text)'")
            }
            // Distinct by scalars but one key to a Swift dictionary ("é" and "e" + U+0301).
            if !seen.insert(text).inserted {
                throw InventoryError(line: key.mark?.line, problem: "key '\(text)' and an earlier one differ only in Unicode normalization; use one spelling")
            }
        }
    }

    static func json(_ node: Node, depth: Int) throws(InventoryError) -> JSONValue {
        guard depth < 16 else { throw InventoryError(line: node.mark?.line, problem: "attributes nested too deeply") }
        switch node {
        case .scalar(let scalar):
            switch Tag.Name(rawValue: node.tag.rawValue) {
            case .null: return .null
            case .bool: return .bool(Bool.construct(from: scalar) ?? false)
            case .int:
                if let value = Int.construct(from: scalar) { return .int(Int64(value)) }
                return .string(scalar.string)
            case .float:
                if let value = Double.construct(from: scalar), value.isFinite { return .double(value) }
                return .string(scalar.string)
            default: return .string(scalar.string)
            }
        case .mapping(let mapping):
            try checkDuplicateKeys(mapping)
            var members: [(String, JSONValue)] = []
            for (key, value) in mapping {
                members.append((key.string ?? "?", try json(value, depth: depth + 1)))
            }
            return .object(members)
        case .sequence(let sequence):
            var elements: [JSONValue] = []
            for element in sequence { elements.append(try json(element, depth: depth + 1)) }
            return .array(elements)
        case .alias:
            throw InventoryError(line: node.mark?.line, problem: "YAML aliases are not supported in attributes")
        }
    }
}

extension String {
    /// YAML 1.1 allows `28_800`.
    var replacingUnderscores: String { String(filter { $0 != "_" }) }
}

extension YamlError {
    var line: Int? {
        switch self {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _):
            return mark.line
        case .duplicatedKeysInMapping(_, let context):
            return context.mark.line
        default:
            return nil
        }
    }

    /// The problem alone: the errors' own descriptions quote the whole file, which must not end
    /// up in a 400 body or the log.
    var problemText: String {
        switch self {
        case .scanner(_, let problem, _, _), .parser(_, let problem, _, _), .composer(_, let problem, _, _):
            return problem
        case .reader(let problem, _, _, _):
            return problem
        case .duplicatedKeysInMapping(let duplicates, _):
            return "duplicate key '\(duplicates.joined(separator: "', '"))'"
        case .memory:
            return "out of memory"
        default:
            return "unreadable YAML"
        }
    }
}
