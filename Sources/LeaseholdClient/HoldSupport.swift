import LeaseProtocol

/// Builds the ordered `want` groups of `leasehold hold` from its arguments: each `--type` or
/// `--name` starts a group; `--label KEY=VALUE` and `--count N` apply to the `--type` group before
/// them. ArgumentParser does not keep the order between different options, so this reads the raw
/// arguments (up to `--`).
public enum WantArguments {
    public static func groups(from arguments: [String]) throws(LeaseholdError) -> [WantGroup] {
        struct Draft { var name: String?; var type: String?; var labels: [String: String] = [:]; var count: Int? }
        var drafts: [Draft] = []
        var index = 0
        func bad(_ text: String) -> LeaseholdError { .local(text) }
        while index < arguments.count {
            let argument = arguments[index]
            if argument == "--" { break }
            var option = argument
            var value: String?
            if argument.hasPrefix("--"), let equals = argument.firstIndex(of: "=") {
                option = String(argument[..<equals])
                value = String(argument[argument.index(after: equals)...])
            }
            guard ["--type", "--name", "--label", "--count"].contains(option) else {
                index += 1
                continue
            }
            if value == nil {
                guard index + 1 < arguments.count else { throw bad("\(option) needs a value") }
                value = arguments[index + 1]
                index += 1
            }
            index += 1
            let text = value ?? ""
            switch option {
            case "--type":
                guard !text.isEmpty else { throw bad("--type needs a non-empty type, e.g. --type array") }
                drafts.append(Draft(type: text))
            case "--name":
                guard !text.isEmpty else { throw bad("--name needs a resource name, e.g. --name switch-03") }
                drafts.append(Draft(name: text))
            case "--label":
                guard let last = drafts.indices.last, drafts[last].type != nil else {
                    throw bad("--label \(text) must follow the --type it narrows, e.g. --type array --label \(text)")
                }
                guard let equals = text.firstIndex(of: "="), equals != text.startIndex else {
                    throw bad("--label takes KEY=VALUE, e.g. --label proto=fc (got '\(text)')")
                }
                let key = String(text[..<equals])
                guard drafts[last].labels[key] == nil else { throw bad("--label \(key) is given twice for one --type") }
                drafts[last].labels[key] = String(text[text.index(after: equals)...])
            default:  // --count
                guard let last = drafts.indices.last, drafts[last].type != nil else {
                    throw bad("--count \(text) must follow the --type it counts, e.g. --type array --count \(text)")
                }
                guard let count = Int(text), count > 0 else { throw bad("--count takes a positive whole number (got '\(text)')") }
                guard drafts[last].count == nil else { throw bad("--count is given twice for one --type") }
                drafts[last].count = count
            }
        }
        guard !drafts.isEmpty else {
            throw bad("say what to hold: --type TYPE [--label KEY=VALUE] [--count N] or --name NAME (repeatable)")
        }
        guard drafts.count <= ProtocolLimits.maxGroups else {
            throw bad("at most \(ProtocolLimits.maxGroups) --type/--name groups per lease (got \(drafts.count))")
        }
        return drafts.map { draft in
            if let name = draft.name { return .name(name) }
            return .type(draft.type ?? "", labels: draft.labels, count: draft.count ?? 1)
        }
    }
}

/// The environment `leasehold hold` gives its command (see README, "CLI").
public enum LeaseEnvironment {
    /// Variables for `lease`, granted for `want` (resources come in the order of the groups).
    public static func variables(for lease: Lease, want: [WantGroup]) -> [(String, String)] {
        var variables: [(String, String)] = [
            ("LEASEHOLD_LEASE", lease.id),
            ("LEASEHOLD_RESOURCES", JSONValue.array(lease.resources.map(\.json)).serialized()),
            ("LEASEHOLD_NAMES", lease.resources.map(\.name).joined(separator: " ")),
        ]
        var next = 0
        for (groupIndex, group) in want.enumerated() {
            let count: Int
            switch group {
            case .name: count = 1
            case .type(_, _, let wanted): count = wanted
            }
            for number in 0..<count where next < lease.resources.count {
                let resource = lease.resources[next]
                next += 1
                let prefix = "LEASEHOLD_\(groupIndex)_\(number)_"
                var fixed: [(String, String)] = [
                    (prefix + "NAME", resource.name),
                    (prefix + "TYPE", resource.type),
                    (prefix + "EPOCH", String(resource.epoch)),
                ]
                var taken = Set(fixed.map(\.0))
                if case .object(let attributes) = resource.attributes {
                    for (key, value) in attributes {
                        let name = prefix + variableName(key)
                        guard !taken.contains(name) else { continue }  // NAME/TYPE/EPOCH win; all is in LEASEHOLD_RESOURCES
                        taken.insert(name)
                        fixed.append((name, value.stringValue ?? value.serialized()))
                    }
                }
                variables += fixed
            }
        }
        return variables
    }

    /// `mgmt` → `MGMT`, `api-url` → `API_URL` (see `AttributeVariables.name`).
    public static func variableName(_ key: String) -> String { AttributeVariables.name(key) }
}
