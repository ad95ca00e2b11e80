import LeaseCore

/// `GET /`: the lab at a glance, rendered on the server so it reads without JavaScript.
enum StatusPage {
    static func render(_ snapshot: Snapshot, clock: ServerClock) -> String {
        var html = """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><title>leasehold</title>
            <meta name="viewport" content="width=device-width, initial-scale=1"></head>
            <body><h1>leasehold</h1>

            """
        html += "<h2>Resources</h2>\n<table id=\"resources\"><thead><tr><th>Name</th><th>Type</th><th>Labels</th><th>State</th><th>Holder</th><th>Lease</th><th>Since</th></tr></thead><tbody>\n"
        for resource in snapshot.resources {
            let labels = resource.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            let showsLease = resource.state == .held || resource.state == .reserved
            html += "<tr data-name=\"\(escape(resource.name))\"><td>\(escape(resource.name))</td><td>\(escape(resource.type))</td><td>\(escape(labels))</td>"
            html += "<td class=\"state-\(resource.state.rawValue)\">\(resource.state.rawValue)</td>"
            html += "<td>\(showsLease ? escape(resource.holder ?? "") : "")</td><td>\(showsLease ? resource.lease.map { LeaseService.format($0) } ?? "" : "")</td>"
            html += "<td>\(clock.iso8601(resource.since))</td></tr>\n"
        }
        html += "</tbody></table>\n<h2>Leases</h2>\n<table id=\"leases\"><thead><tr><th>Lease</th><th>Holder</th><th>Peer</th><th>Resources</th><th>Since</th></tr></thead><tbody>\n"
        for lease in snapshot.leases {
            html += "<tr><td>\(LeaseService.format(lease.id))</td><td>\(escape(lease.holder))</td><td>\(escape(lease.peer))</td>"
            html += "<td>\(escape(lease.resources.joined(separator: ", ")))</td><td>\(clock.iso8601(lease.since))</td></tr>\n"
        }
        html += "</tbody></table>\n<h2>Queue</h2>\n<table id=\"queue\"><thead><tr><th>Position</th><th>Lease</th><th>Holder</th><th>Wants</th><th>Waiting since</th></tr></thead><tbody>\n"
        for waiter in snapshot.queue {
            let wants = waiter.want.map { LeaseService.wireGroup($0).json.serialized() }.joined(separator: " ")
            html += "<tr><td>\(waiter.position)</td><td>\(LeaseService.format(waiter.id))</td><td>\(escape(waiter.holder))</td>"
            html += "<td>\(escape(wants))</td><td>\(clock.iso8601(waiter.since))</td></tr>\n"
        }
        html += "</tbody></table>\n</body></html>\n"
        return html
    }

    /// Escapes text for HTML element content and quoted attribute values.
    static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for character in text {
            switch character {
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "&": out += "&amp;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(character)
            }
        }
        return out
    }
}
