/// How a resource's attributes become environment variables, the same for `leasehold hold`'s
/// command and for the server's reset commands.
public enum AttributeVariables {
    /// `mgmt` → `MGMT`, `api-url` → `API_URL`: upper case, anything but ASCII letters and digits → `_`.
    public static func name(_ key: String) -> String {
        var out = ""
        for scalar in key.unicodeScalars {
            switch scalar.value {
            case 0x61...0x7A: out.unicodeScalars.append(UnicodeScalar(scalar.value - 32) ?? "_")
            case 0x41...0x5A, 0x30...0x39: out.unicodeScalars.append(scalar)
            default: out += "_"
            }
        }
        return out.isEmpty ? "_" : out
    }

    /// An attribute's value as a variable: strings as they are, anything else as JSON.
    public static func value(_ value: JSONValue) -> String {
        value.stringValue ?? value.serialized()
    }
}
