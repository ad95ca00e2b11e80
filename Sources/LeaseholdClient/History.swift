import LeaseProtocol
#if canImport(Glibc)
import Glibc
#endif

/// `GET /v1/history` and `GET /v1/usage` (PROTOCOL.md, "History and usage"), and their tables.
extension LeaseholdHTTP {
    public struct HistoryFilter: Sendable {
        public var resource: String?
        public var holder: String?
        public var type: String?
        public var since: String?
        public var until: String?
        public init() {}
    }

    /// Up to `limit` events newest first, following `next` across pages.
    public func history(_ filter: HistoryFilter, limit: Int) throws(LeaseholdError) -> [JSONValue] {
        var events: [JSONValue] = []
        var cursor: String?
        repeat {
            var query: [(String, String?)] = [("resource", filter.resource), ("holder", filter.holder), ("type", filter.type),
                                              ("since", filter.since), ("until", filter.until)]
            query.append(("limit", String(min(1000, limit - events.count))))
            query.append(("cursor", cursor))
            let response = try http.request("GET", "/v1/history?" + Self.queryString(query))
            guard response.status == 200 else { throw Self.failure(server, response) }
            guard let page = try? JSONValue.parse(response.body, maxDepth: 64), case .array(let items)? = page["events"] else {
                throw .protocolViolation("GET /v1/history answered something that is not {\"events\": [...]}")
            }
            events += items
            cursor = page["next"]?.stringValue
        } while cursor != nil && events.count < limit
        return Array(events.prefix(limit))
    }

    /// The usage document.
    public func usage(since: String?, until: String?, by: String?) throws(LeaseholdError) -> JSONValue {
        let response = try http.request("GET", "/v1/usage?" + Self.queryString([("since", since), ("until", until), ("by", by)]))
        guard response.status == 200 else { throw Self.failure(server, response) }
        guard let document = try? JSONValue.parse(response.body, maxDepth: 64), case .array? = document["rows"] else {
            throw .protocolViolation("GET /v1/usage answered something that is not {\"rows\": [...]}")
        }
        return document
    }

    static func queryString(_ pairs: [(String, String?)]) -> String {
        pairs.compactMap { key, value in value.map { "\(key)=\(percentEncode($0))" } }.joined(separator: "&")
    }
}

public enum HistoryTables {
    /// `24h`, `7d`, `90m`, `30s` before `now` (Unix seconds), or an RFC 3339 time as it is; nil
    /// for anything else.
    public static func time(_ text: String, now: Double) -> String? {
        if StatusSnapshot.parseTimestamp(text) != nil { return text }
        guard let unit = text.last, let amount = Double(text.dropLast()), amount >= 0, amount.isFinite else { return nil }
        let seconds: Double
        switch unit {
        case "s": seconds = amount
        case "m": seconds = amount * 60
        case "h": seconds = amount * 3600
        case "d": seconds = amount * 86_400
        case "w": seconds = amount * 604_800
        default: return nil
        }
        guard seconds < 1e10 else { return nil }
        return StatusSnapshot.timestamp(unixSeconds: now - seconds)
    }

    /// One line per event, newest first: when, what, which resources, who, and the details
    /// (reason, how long it was held or waited, who revoked it).
    public static func history(_ events: [JSONValue]) -> String {
        var rows: [[String]] = [["AT", "EVENT", "RESOURCES", "HOLDER", "LEASE", "DETAILS"]]
        for event in events {
            var resources: [String] = []
            if case .array(let items)? = event["resources"] {
                resources = items.compactMap { $0.stringValue ?? $0["name"]?.stringValue }
            }
            if let name = event["resource"]?.stringValue { resources.append(name) }
            var details: [String] = []
            if let reason = event["reason"]?.stringValue, !reason.isEmpty { details.append(reason) }
            if let code = event["code"]?.stringValue { details.append(code) }
            if let held = event["held_seconds"]?.numberValue { details.append("held \(StatusSnapshot.age(held))") }
            if let waited = event["waited_seconds"]?.numberValue { details.append("waited \(StatusSnapshot.age(waited))") }
            if let by = event["by"]?.stringValue { details.append("by \(by)") }
            if let version = event["version"]?.stringValue { details.append("version \(version)") }
            rows.append([event["at"]?.stringValue ?? "?", event["event"]?.stringValue ?? "?",
                         resources.isEmpty ? "-" : resources.joined(separator: ","),
                         event["holder"]?.stringValue ?? "-", event["lease"]?.stringValue ?? "-",
                         details.isEmpty ? "-" : details.joined(separator: "; ")].map(StatusSnapshot.printable))
        }
        return events.isEmpty ? "no events\n" : StatusSnapshot.render(rows)
    }

    public static func usage(_ document: JSONValue) -> String {
        let by = document["by"]?.stringValue ?? "resource"
        var rows: [[String]] = [[by.uppercased(), "HELD", "SHARE", "LEASES", "WAIT P50", "WAIT P95", "ABNORMAL ENDS", "FAILED RESETS"]]
        var items: [JSONValue] = []
        if case .array(let rows)? = document["rows"] { items = rows }
        for row in items {
            func wait(_ key: String) -> String { row[key]?.numberValue.map { StatusSnapshot.age($0) } ?? "-" }
            func count(_ key: String) -> String { row[key]?.numberValue.map { String(Int($0)) } ?? "0" }
            let share = row["share"]?.numberValue ?? 0
            rows.append([row["name"]?.stringValue ?? "?", StatusSnapshot.age(row["held_seconds"]?.numberValue ?? 0),
                         String(format1: share * 100) + "%", count("leases"), wait("grant_wait_p50"), wait("grant_wait_p95"),
                         count("abnormal_ends"), count("failed_resets")].map(StatusSnapshot.printable))
        }
        return "usage from \(document["since"]?.stringValue ?? "?") to \(document["until"]?.stringValue ?? "?")\n" + StatusSnapshot.render(rows)
    }
}

extension String {
    /// `12.5`: one decimal.
    init(format1 value: Double) {
        let tenths = Int((value * 10).rounded())
        self = "\(tenths / 10).\(abs(tenths % 10))"
    }
}

extension StatusSnapshot {
    /// Text for one table cell: control characters (a newline in a holder) shown escaped, so a
    /// value cannot start a line of its own.
    static func printable(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029 {
                out += "\\u{" + String(scalar.value, radix: 16) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// `2026-12-07T15:31:52Z` for Unix seconds (UTC).
    public static func timestamp(unixSeconds: Double) -> String {
        var seconds = time_t(unixSeconds.rounded(.down))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }

}
