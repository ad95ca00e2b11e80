/// The server's counters and gauges, owned by the lease service's queue, rendered in the
/// Prometheus text exposition format (version 0.0.4).
final class Metrics: @unchecked Sendable {
    var grants = 0
    var revokes = 0
    var releases: [ReleaseReason: Int] = [:]
    var leases = 0
    var waiters = 0
    var orphans = 0
    var resetsRunning = 0
    /// Resets by result: `ok`, `failed`.
    var resets: [String: Int] = [:]
    var resetDuration = Histogram(bounds: [1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600])
    /// Resumes by result: `ok`, `refused`, `expired` (an orphan nobody resumed in time).
    var resumes: [String: Int] = [:]
    /// (type, state) → count.
    var resourceCounts: [ResourceCountKey: Int] = [:]
    /// Per resource type (grant waits, lease durations, waiters…): see `TypeMetrics`.
    var byType = TypeMetrics()

    struct ResourceCountKey: Hashable {
        var type: String
        var state: String
    }

    struct Histogram {
        let bounds: [Double]
        var buckets: [Int]
        var sum = 0.0
        var count = 0

        init(bounds: [Double]) {
            self.bounds = bounds
            buckets = Array(repeating: 0, count: bounds.count)
        }

        /// The `_bucket` (cumulative), `_sum` and `_count` samples; `label`: `key="value"` or nil.
        func render(_ name: String, label: String? = nil, into out: inout String) {
            let prefix = label.map { $0 + "," } ?? ""
            let only = label.map { "{" + $0 + "}" } ?? ""
            var cumulative = 0
            for (index, bound) in bounds.enumerated() {
                cumulative += buckets[index]
                out += "\(name)_bucket{\(prefix)le=\"\(Metrics.number(bound))\"} \(cumulative)\n"
            }
            out += "\(name)_bucket{\(prefix)le=\"+Inf\"} \(count)\n"
            out += "\(name)_sum\(only) \(sum)\n"
            out += "\(name)_count\(only) \(count)\n"
        }

        mutating func observe(_ value: Double) {
            sum += value
            count += 1
            if let index = bounds.firstIndex(where: { value <= $0 }) { buckets[index] += 1 }
        }
    }

    /// Renders every series; `connections` comes from the transport.
    func render(connections: Int) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        family("leasehold_connections", "gauge", "Open TCP connections (HTTP and WebSocket).")
        out += "leasehold_connections \(connections)\n"
        family("leasehold_leases", "gauge", "Granted leases.")
        out += "leasehold_leases \(leases)\n"
        family("leasehold_waiters", "gauge", "Requests waiting in the queue.")
        out += "leasehold_waiters \(waiters)\n"
        family("leasehold_orphans", "gauge", "Leases and waiters kept for a client to resume them.")
        out += "leasehold_orphans \(orphans)\n"
        family("leasehold_resumes_total", "counter", "Resumes of kept leases and waiters, by result.")
        for result in ["ok", "refused", "expired"] {
            out += "leasehold_resumes_total{result=\"\(result)\"} \(resumes[result, default: 0])\n"
        }
        family("leasehold_resets_running", "gauge", "Reset commands running or waiting for a slot.")
        out += "leasehold_resets_running \(resetsRunning)\n"
        family("leasehold_resets_total", "counter", "Reset commands that ended, by result.")
        for result in ["ok", "failed"] {
            out += "leasehold_resets_total{result=\"\(result)\"} \(resets[result, default: 0])\n"
        }
        family("leasehold_reset_duration_seconds", "histogram", "How long reset commands ran.")
        resetDuration.render("leasehold_reset_duration_seconds", into: &out)
        family("leasehold_grants_total", "counter", "Leases granted.")
        out += "leasehold_grants_total \(grants)\n"
        family("leasehold_releases_total", "counter", "Granted leases that ended, by reason.")
        for reason in ReleaseReason.allCases {
            out += "leasehold_releases_total{reason=\"\(reason.rawValue)\"} \(releases[reason, default: 0])\n"
        }
        family("leasehold_revokes_total", "counter", "Leases revoked by an admin.")
        out += "leasehold_revokes_total \(revokes)\n"
        family("leasehold_resources", "gauge", "Resources by type and state.")
        for (key, count) in resourceCounts.sorted(by: { ($0.key.type, $0.key.state) < ($1.key.type, $1.key.state) }) {
            out += "leasehold_resources{type=\"\(Self.escape(key.type))\",state=\"\(key.state)\"} \(count)\n"
        }
        byType.render(into: &out)
        return out
    }

    static func number(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(value)
    }

    /// Label values escape backslash, quote and newline (by scalar: "\r\n" is one Character).
    static func escape(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out.append(contentsOf: "\\\\".unicodeScalars)
            case "\"": out.append(contentsOf: "\\\"".unicodeScalars)
            case "\n": out.append(contentsOf: "\\n".unicodeScalars)
            default: out.append(scalar)
            }
        }
        return String(out)
    }
}
