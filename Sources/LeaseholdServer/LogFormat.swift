import Logging
import LeaseProtocol
import Transport
#if canImport(Glibc)
import Glibc
#endif

/// The server's log lines, one per event, on stderr: `text` (`TIME LEVEL message key=value…`, a
/// value quoted when it has spaces, quotes or `=`, control characters escaped) or `json` (one
/// object per line). Either way a line is one line: a holder (or any value) with a newline or
/// control characters cannot forge a line of its own. Lease id, holder and peer are fields of
/// their own (`lease.id`, `lease.holder`, `connection.peer`).
public struct LeaseholdLogHandler: LogHandler {
    public enum Format: String, Sendable, CaseIterable {
        case text, json
    }

    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let format: Format
    private let label: String
    private let output: @Sendable (String) -> Void

    /// `output`: where finished lines go (stderr by default; tests capture them).
    public init(label: String, format: Format, output: @escaping @Sendable (String) -> Void = LeaseholdLogHandler.standardError) {
        self.label = label
        self.format = format
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        output(Self.line(time: Self.now(), level: event.level, message: event.message.description, metadata: all,
                         source: event.source, format: format))
    }

    /// One finished line, with its newline.
    public static func line(time: String, level: Logger.Level, message: String, metadata: Logger.Metadata,
                            source: String, format: Format) -> String {
        let keys = metadata.keys.sorted()
        switch format {
        case .json:
            var members: [(String, JSONValue)] = [("time", .string(time)), ("level", .string(level.rawValue)), ("message", .string(message))]
            for key in keys where !["time", "level", "message"].contains(key) {
                if let value = metadata[key] { members.append((key, json(value))) }
            }
            members.append(("source", .string(source)))
            return JSONValue.object(members).serialized() + "\n"
        case .text:
            var text = "\(time) \(level.rawValue) \(quoted(message, always: false))"
            for key in keys {
                guard let value = metadata[key] else { continue }
                text += " \(quoted(key, always: false))=\(quoted(flat(value), always: false))"
            }
            return text + "\n"
        }
    }

    static func json(_ value: Logger.Metadata.Value) -> JSONValue {
        switch value {
        case .string(let text): return .string(text)
        case .stringConvertible(let convertible): return .string(convertible.description)
        case .array(let items): return .array(items.map(json))
        case .dictionary(let entries): return .object(entries.keys.sorted().compactMap { key in entries[key].map { (key, json($0)) } })
        }
    }

    static func flat(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): return text
        case .stringConvertible(let convertible): return convertible.description
        case .array, .dictionary: return json(value).serialized()
        }
    }

    /// The text as it is when it is a plain word; else in quotes with `\"`, `\\` and every
    /// control character (C0, DEL, C1, line and paragraph separators) escaped.
    static func quoted(_ text: String, always: Bool) -> String {
        var plain = !text.isEmpty
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"; plain = false
            case "\"": out += "\\\""; plain = false
            case "\n": out += "\\n"; plain = false
            case "\r": out += "\\r"; plain = false
            case "\t": out += "\\t"; plain = false
            case " ", "=": out.unicodeScalars.append(scalar); plain = false
            default:
                if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029 {
                    out += "\\u{" + String(scalar.value, radix: 16) + "}"
                    plain = false
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return plain && !always ? out : "\"" + out + "\""
    }

    static func now() -> String {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return RFC3339.format(milliseconds: Int64(spec.tv_sec) * 1000 + Int64(spec.tv_nsec) / 1_000_000)
    }

    private static let writeLock = Locked(())

    /// Writes the line to stderr in one piece (lines from several threads never interleave).
    public static let standardError: @Sendable (String) -> Void = { line in
        var line = line
        writeLock.withLock { _ in
            line.withUTF8 { buffer in
                var offset = 0
                while offset < buffer.count, let base = buffer.baseAddress {
                    let written = write(2, base + offset, buffer.count - offset)
                    if written < 0 { if errno == EINTR { continue }; return }
                    offset += written
                }
            }
        }
    }
}
