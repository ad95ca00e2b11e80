import HTTPCodec
import LeaseCore
import LeaseProtocol

/// `GET /` and `/static/*`: the lab at a glance.
///
/// The page is rendered on the server, so `curl` and text browsers see the current state; the
/// script (`Static/app.js`, embedded in the binary) then keeps the very same tables live through
/// `/v1/watch`, updating rows in place by key (`data-key`: resource name or lease id). Class names
/// and cell order here and in `app.js` must agree.
enum StatusPage {
    // MARK: static files

    struct Asset: Sendable {
        let contentType: String
        let bytes: [UInt8]
        /// Content hash: the ETag and the `?v=` that makes a URL cacheable for good.
        let version: String

        init(_ contentType: String, _ bytes: [UInt8]) {
            self.contentType = contentType
            self.bytes = bytes
            version = fnv1a(bytes)
        }
    }

    static let assets: [String: Asset] = [
        "/static/app.js": Asset("text/javascript; charset=utf-8", PackageResources.app_js),
        "/static/app.css": Asset("text/css; charset=utf-8", PackageResources.app_css),
        "/static/favicon.svg": Asset("image/svg+xml", PackageResources.favicon_svg),
        "/static/history.js": Asset("text/javascript; charset=utf-8", PackageResources.history_js),
    ]

    /// `/static/app.js?v=HASH`: a URL that changes whenever the file does.
    static func assetURL(_ path: String) -> String {
        assets[path].map { "\(path)?v=\($0.version)" } ?? path
    }

    static func assetResponse(path: String, query: String?, headers: HTTPHeaders) -> HTTPResponse {
        guard let asset = assets[path] else { return .text(404, "no such file: \(path)\n") }
        let etag = "\"\(asset.version)\""
        var response: HTTPResponse
        let presented = headers["If-None-Match"]?.split(separator: ",").map { String($0).trimmingSpaces() } ?? []
        if presented.contains(etag) || presented.contains("*") {
            response = HTTPResponse(status: 304)
        } else {
            response = HTTPResponse(status: 200, body: asset.bytes)
            response.headers.add(name: "Content-Type", value: asset.contentType)
        }
        response.headers.add(name: "ETag", value: etag)
        // Versioned URLs (what the page links) never change; anything else revalidates.
        response.headers.add(name: "Cache-Control",
                             value: query == "v=\(asset.version)" ? "public, max-age=31536000, immutable" : "no-cache")
        response.headers.add(name: "X-Content-Type-Options", value: "nosniff")
        return response
    }

    // MARK: the page

    /// No inline script or style anywhere: everything the page runs comes from `/static/`.
    /// `connect-src 'self'` covers the same-origin `ws:`/`wss:` of `/v1/watch`.
    static let contentSecurityPolicy = [
        "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self'",
        "connect-src 'self'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
    ].joined(separator: "; ")

    static func response(_ snapshot: Snapshot, clock: ServerClock, query: String?) -> HTTPResponse {
        let filter = formValue("q", in: query) ?? ""
        var response = HTTPResponse.text(200, render(snapshot, clock: clock, filter: filter),
                                         contentType: "text/html; charset=utf-8")
        response.headers.add(name: "Content-Security-Policy", value: contentSecurityPolicy)
        response.headers.add(name: "X-Content-Type-Options", value: "nosniff")
        response.headers.add(name: "X-Frame-Options", value: "DENY")
        response.headers.add(name: "Referrer-Policy", value: "no-referrer")
        response.headers.add(name: "Cache-Control", value: "no-store")
        return response
    }

    static func render(_ snapshot: Snapshot, clock: ServerClock, filter text: String = "") -> String {
        let now = clock.now()
        let filter = Filter(text)
        let byName = Dictionary(snapshot.resources.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        var html = ""
        html.reserveCapacity(4096 + snapshot.resources.count * 700)

        html += """
            <!doctype html>
            <html lang="en">
            <head>
            <meta charset="utf-8">
            <title>\(escape(title(snapshot)))</title>
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <link rel="stylesheet" href="\(assetURL("/static/app.css"))">
            <link rel="icon" type="image/svg+xml" href="\(assetURL("/static/favicon.svg"))">
            <script src="\(assetURL("/static/app.js"))" defer></script>
            <script src="\(assetURL("/static/history.js"))" defer></script>
            <noscript><meta http-equiv="refresh" content="30"></noscript>
            </head>
            <body data-now-ms="\(clock.unixMilliseconds(now))">
            <header class="topbar">
            <a class="brand" href="/"><span class="logo" aria-hidden="true"></span>leasehold<span class="brand-sub">lab status</span></a>
            <div id="conn" class="conn conn-static" role="status"><span class="dot" aria-hidden="true"></span><span id="conn-text">Snapshot of \(clock.iso8601(now).replacingT()) UTC; reload for news</span></div>
            <div class="tools" id="tools"></div>
            </header>
            <main>

            """

        html += summary(snapshot)
        html += filterForm(text)
        html += resourcesSection(snapshot, filter, now: now, clock: clock)
        html += queueSection(snapshot, filter, byName, now: now, clock: clock)
        html += leasesSection(snapshot, filter, byName, now: now, clock: clock)
        html += usageSection()
        html += """
            </main>
            <footer class="footer">leasehold <span id="version">\(escape(leaseholdVersion))</span> · <a href="/v1/status">/v1/status</a> (JSON) · <code>/v1/watch</code> (live) · <a href="/metrics">/metrics</a></footer>
            </body>
            </html>

            """
        return html
    }

    // MARK: sections

    /// Counts per type, in inventory order, and overall.
    private static func summary(_ snapshot: Snapshot) -> String {
        var html = ""
        var types: [String] = []
        var counts: [String: [ResourceState: Int]] = [:]
        for resource in snapshot.resources {
            if counts[resource.type] == nil { types.append(resource.type) }
            counts[resource.type, default: [:]][resource.state, default: 0] += 1
        }
        var overall: [ResourceState: Int] = [:]
        for resource in snapshot.resources { overall[resource.state, default: 0] += 1 }
        html += "<section class=\"summary\" aria-label=\"Summary\">\n<div id=\"summary\" class=\"cards\">\n"
        for type in types {
            let c = counts[type] ?? [:]
            let total = c.values.reduce(0, +)
            html += "<div class=\"card\" data-key=\"\(escape(type))\">"
            html += "<a class=\"card-type\" href=\"\(queryLink("type:" + type))\">\(escape(type))</a>"
            html += "<span class=\"card-free\"><a class=\"n-free\" href=\"\(queryLink("type:\(type) state:free"))\">\(c[.free] ?? 0)</a> free <span class=\"muted\">of <span class=\"n-total\">\(total)</span></span></span>"
            html += "<span class=\"card-detail\"><span class=\"n-held\">\(c[.held] ?? 0)</span> held · <span class=\"n-reserved\">\(c[.reserved] ?? 0)</span> reserved · <span class=\"n-disabled\">\(c[.disabled] ?? 0)</span> disabled · <span class=\"n-resetting\">\(c[.resetting] ?? 0)</span> resetting</span>"
            html += "</div>\n"
        }
        html += "</div>\n<p id=\"overall\" class=\"overall\">"
        html += "<span class=\"n-resources\">\(snapshot.resources.count)</span> resources: "
        html += "<span class=\"n-free\">\(overall[.free] ?? 0)</span> free, <span class=\"n-held\">\(overall[.held] ?? 0)</span> held, "
        html += "<span class=\"n-reserved\">\(overall[.reserved] ?? 0)</span> reserved, <span class=\"n-disabled\">\(overall[.disabled] ?? 0)</span> disabled, <span class=\"n-resetting\">\(overall[.resetting] ?? 0)</span> resetting · "
        html += "<a href=\"#queue-section\">waiting: <span class=\"n-waiting\">\(snapshot.queue.count)</span></a> · "
        html += "<a href=\"#leases-section\">leases: <span class=\"n-leases\">\(snapshot.leases.count)</span></a></p>\n</section>\n"
        return html
    }

    /// A plain GET form, so the filter works without the script too.
    private static func filterForm(_ text: String) -> String {
        var html = ""
        html += """
            <form class="filter" method="get" action="/" role="search">
            <label for="filter">Filter</label>
            <input id="filter" name="q" type="search" value="\(escape(text))" placeholder="name, type, label, holder or lease id" autocomplete="off" spellcheck="false">
            <noscript><button type="submit">Apply</button></noscript>
            <span id="filter-help" class="muted">words must all match; <code>name:</code> <code>type:</code> <code>state:</code> <code>holder:</code> <code>label:</code> <code>lease:</code> narrow a word to one field</span>
            </form>

            """
        return html
    }

    /// Every resource, in inventory order.
    private static func resourcesSection(_ snapshot: Snapshot, _ filter: Filter, now: Tick, clock: ServerClock) -> String {
        var html = ""
        let shownResources = snapshot.resources.filter { filter.matches(resourceFields($0)) }
        let leaseByID = Dictionary(snapshot.leases.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        html += section("resources", "Resources", shown: shownResources.count, total: snapshot.resources.count)
        html += "<table id=\"resources\" class=\"grid\"><thead><tr>"
        html += "<th class=\"c-name\">Name</th><th class=\"c-type\">Type</th><th class=\"c-state\">State</th><th class=\"c-for\">For</th>"
        html += "<th class=\"c-holder\">Holder</th><th class=\"c-lease\">Lease</th><th class=\"c-labels\">Labels</th><th class=\"c-epoch\">Epoch</th>"
        html += "</tr></thead>\n<tbody>\n"
        for resource in shownResources {
            let state = resource.state.rawValue
            let showsLease = resource.state == .held || resource.state == .reserved
            let holder = showsLease ? resource.holder ?? "" : ""
            html += "<tr data-key=\"\(escape(resource.name))\" class=\"s-\(state)\">"
            html += "<td class=\"c-name\">\(escape(resource.name))</td>"
            html += "<td class=\"c-type\">\(escape(resource.type))</td>"
            html += "<td class=\"c-state\"\(resource.disabled.map { " title=\"disabled: \(escape($0.reason))\"" } ?? "")>"
            html += "<span class=\"state state-\(state)\">\(state)</span>"
            if let disabled = resource.disabled { html += "<span class=\"why\">\(escape(disabled.reason))</span>" }
            html += "</td>"
            html += "<td class=\"c-for\">\(resource.state == .free ? "" : timeElement(resource.since, now: now, clock: clock))</td>"
            let job = resource.state == .held ? resource.lease.flatMap { leaseByID[$0] }.flatMap { jobURL($0.meta) } : nil
            html += "<td class=\"c-holder\"\(holder.isEmpty ? "" : " title=\"\(escape(holder))\"")>"
            if let job {
                html += "<a class=\"holder-link\" href=\"\(escape(job))\" rel=\"noopener noreferrer\" target=\"_blank\">\(escape(holder))</a></td>"
            } else {
                html += "\(escape(holder))</td>"
            }
            html += "<td class=\"c-lease\">\(showsLease ? resource.lease.map { LeaseService.format($0) } ?? "" : "")</td>"
            html += chipsCell("labels", labelPairs(resource.labels))
            html += "<td class=\"c-epoch\">\(resource.epoch)</td></tr>\n"
        }
        html += "</tbody></table>\n"
        html += "<p class=\"empty\" id=\"resources-empty\"\(shownResources.isEmpty ? "" : " hidden")>\(snapshot.resources.isEmpty ? "The inventory is empty." : "No resource matches the filter.")</p>\n</section>\n"
        return html
    }

    /// The waiters, first in line first.
    private static func queueSection(_ snapshot: Snapshot, _ filter: Filter, _ byName: [String: ResourceView], now: Tick, clock: ServerClock) -> String {
        var html = ""
        let shownQueue = snapshot.queue.filter { filter.matches(waiterFields($0, byName)) }
        html += section("queue", "Queue", shown: shownQueue.count, total: snapshot.queue.count)
        html += "<table id=\"queue\" class=\"grid\"><thead><tr>"
        html += "<th class=\"c-pos\">#</th><th class=\"c-lease\">Lease</th><th class=\"c-holder\">Holder</th><th class=\"c-wants\">Wants</th>"
        html += "<th class=\"c-collected\">Collected</th><th class=\"c-for\">Waiting</th><th class=\"c-until\">Until</th>"
        html += "<th class=\"c-blocked\">Blocked by</th><th class=\"c-meta\">Details</th></tr></thead>\n<tbody>\n"
        let leaseByID = Dictionary(snapshot.leases.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        for waiter in shownQueue {
            let id = LeaseService.format(waiter.id)
            html += "<tr data-key=\"\(id)\">"
            html += "<td class=\"c-pos\">\(waiter.position)</td>"
            html += "<td class=\"c-lease\">\(id)</td>"
            html += "<td class=\"c-holder\" title=\"\(escape(waiter.holder))\">\(escape(waiter.holder))</td>"
            html += "<td class=\"c-wants\">\(escape(wantsText(waiter.want)))</td>"
            html += chipsCell("collected", waiter.reserved)
            html += "<td class=\"c-for\">\(timeElement(waiter.since, now: now, clock: clock))</td>"
            html += "<td class=\"c-until\">\(waiter.deadline.map { untilText(clock.iso8601($0)) } ?? "")</td>"
            html += chipsCell("blocked", waiter.blockedBy.map { blockerText(LeaseService.format($0), holder: leaseByID[$0]?.holder) })
            html += "<td class=\"c-meta\">\(metaChips(waiter.meta))</td></tr>\n"
        }
        html += "</tbody></table>\n"
        html += "<p class=\"empty\" id=\"queue-empty\"\(shownQueue.isEmpty ? "" : " hidden")>\(snapshot.queue.isEmpty ? "Nobody is waiting." : "No waiter matches the filter.")</p>\n</section>\n"
        return html
    }

    /// The granted leases, in the order their requests came.
    private static func leasesSection(_ snapshot: Snapshot, _ filter: Filter, _ byName: [String: ResourceView], now: Tick, clock: ServerClock) -> String {
        var html = ""
        let shownLeases = snapshot.leases.filter { filter.matches(leaseFields($0, byName)) }
        html += section("leases", "Leases", shown: shownLeases.count, total: snapshot.leases.count)
        html += "<table id=\"leases\" class=\"grid\"><thead><tr>"
        html += "<th class=\"c-lease\">Lease</th><th class=\"c-holder\">Holder</th><th class=\"c-resources\">Resources</th><th class=\"c-for\">Held for</th>"
        html += "<th class=\"c-peer\">Peer</th><th class=\"c-meta\">Details</th></tr></thead>\n<tbody>\n"
        for lease in shownLeases {
            let id = LeaseService.format(lease.id)
            html += "<tr data-key=\"\(id)\">"
            html += "<td class=\"c-lease\">\(id)</td>"
            html += "<td class=\"c-holder\" title=\"\(escape(lease.holder))\">\(escape(lease.holder))</td>"
            html += chipsCell("resources", lease.resources)
            html += "<td class=\"c-for\">\(timeElement(lease.since, now: now, clock: clock))</td>"
            html += "<td class=\"c-peer\">\(escape(lease.peer))</td>"
            html += "<td class=\"c-meta\">\(metaChips(lease.meta))</td></tr>\n"
        }
        html += "</tbody></table>\n"
        html += "<p class=\"empty\" id=\"leases-empty\"\(shownLeases.isEmpty ? "" : " hidden")>\(snapshot.leases.isEmpty ? "No leases: nothing is held." : "No lease matches the filter.")</p>\n</section>\n"
        return html
    }

    // MARK: pieces

    static func title(_ snapshot: Snapshot) -> String {
        let free = snapshot.resources.count(where: { $0.state == .free })
        return "leasehold · \(free) of \(snapshot.resources.count) free"
    }

    private static func section(_ id: String, _ heading: String, shown: Int, total: Int) -> String {
        let count = shown == total ? "\(total)" : "\(shown) of \(total)"
        return "<section id=\"\(id)-section\" class=\"block\">\n<h2>\(heading) <span class=\"count\" id=\"\(id)-count\">\(count)</span></h2>\n"
    }

    private static func timeElement(_ since: Tick, now: Tick, clock: ServerClock) -> String {
        let iso = clock.iso8601(since)
        return "<time datetime=\"\(iso)\" title=\"since \(iso.replacingT()) UTC\">\(duration(now.nanoseconds - since.nanoseconds))</time>"
    }

    /// The cell's contents and, when there are any, a title that lists them all (chips may be cut off).
    private static func chips(_ items: [String]) -> String {
        items.map { "<span class=\"chip\">\(escape($0))</span>" }.joined()
    }

    private static func chipsCell(_ column: String, _ items: [String]) -> String {
        let title = items.isEmpty ? "" : " title=\"\(escape(items.joined(separator: " ")))\""
        return "<td class=\"c-\(column)\"\(title)>\(chips(items))</td>"
    }

    /// Provenance chips; an http(s) value becomes a link (never any other scheme).
    private static func metaChips(_ meta: [String: String]) -> String {
        meta.sorted { $0.key < $1.key }.map { key, value in
            let shown = "\(escape(key))=\(escape(value))"
            if isWebURL(value) {
                return "<a class=\"chip chip-link\" href=\"\(escape(value))\" rel=\"noopener noreferrer\" target=\"_blank\">\(shown)</a>"
            }
            return "<span class=\"chip\">\(shown)</span>"
        }.joined()
    }

    /// The job a lease belongs to: the first of its `meta` values, in key order, that is a web
    /// URL (the holder cell links to it).
    static func jobURL(_ meta: [String: String]) -> String? {
        meta.sorted { $0.key < $1.key }.first { isWebURL($0.value) }?.value
    }

    /// `2026-12-07T12:00:00Z` → `12:00:00 UTC`: when a waiter gives up.
    static func untilText(_ iso: String) -> String {
        String(iso.dropFirst(11).prefix(8)) + " UTC"
    }

    /// A blocking lease as a chip: `L1a · ci/nightly`.
    static func blockerText(_ id: String, holder: String?) -> String {
        holder.map { "\(id) · \($0)" } ?? id
    }

    static func isWebURL(_ text: String) -> Bool {
        let lowered = text.prefix(8).lowercased()
        return (lowered.hasPrefix("https://") || lowered.hasPrefix("http://"))
            && !text.contains(where: { $0.isWhitespace || $0 == "\"" || $0 == "<" || $0 == ">" })
    }

    static func labelPairs(_ labels: [String: String]) -> [String] {
        labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
    }

    /// `2 × array (proto=fc), switch-03`
    static func wantsText(_ groups: [Group]) -> String {
        groups.map { group in
            switch group {
            case .name(let name): return name
            case .type(let type, let labels, let count):
                let pairs = labelPairs(labels)
                return (count == 1 ? "" : "\(count) × ") + type + (pairs.isEmpty ? "" : " (\(pairs.joined(separator: ", ")))")
            }
        }.joined(separator: ", ")
    }

    /// `42s`, `12m 05s`, `3h 07m`, `2d 4h` (the rule table `Tests/Fixtures/page-rules.json` holds
    /// `app.js` to the same).
    static func duration(_ nanoseconds: Int64) -> String {
        let s = max(0, nanoseconds / 1_000_000_000)
        func pad(_ n: Int64) -> String { n < 10 ? "0\(n)" : "\(n)" }
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m \(pad(s % 60))s" }
        if s < 86_400 { return "\(s / 3600)h \(pad(s / 60 % 60))m" }
        return "\(s / 86_400)d \(s / 3600 % 24)h"
    }

    private static func queryLink(_ query: String) -> String {
        "?q=" + escape(formEncode(query))
    }

    // MARK: filter (`app.js` has the same rules; both are tested against `Tests/Fixtures/page-rules.json`)

    /// What a row can be found by. Plain words match any field; `field:word` one field.
    struct Fields {
        var name: [String] = []
        var type: [String] = []
        var state: [String] = []
        var holder: [String] = []
        var label: [String] = []
        var lease: [String] = []
        var other: [String] = []

        func values(_ field: String?) -> [String] {
            switch field {
            case "name": return name
            case "type": return type
            case "state": return state
            case "holder": return holder
            case "label": return label
            case "lease": return lease
            default: return name + type + state + holder + label + lease + other
            }
        }
    }

    struct Filter {
        static let fields: Set<String> = ["name", "type", "state", "holder", "label", "lease"]
        let terms: [(field: String?, text: String)]

        init(_ text: String) {
            terms = text.lowercased().split(whereSeparator: { $0.isWhitespace }).compactMap { word in
                if let colon = word.firstIndex(of: ":"), Self.fields.contains(String(word[..<colon])) {
                    let rest = String(word[word.index(after: colon)...])
                    return rest.isEmpty ? nil : (String(word[..<colon]), rest)
                }
                return (nil, String(word))
            }
        }

        /// `type:` and `state:` name one value exactly (`type:switch` is not `fc-switch`); every
        /// other word matches any part of a value.
        func matches(_ fields: Fields) -> Bool {
            terms.allSatisfy { term in
                let exact = term.field == "type" || term.field == "state"
                return fields.values(term.field).contains { exact ? $0.lowercased() == term.text : $0.lowercased().contains(term.text) }
            }
        }
    }

    static func resourceFields(_ r: ResourceView) -> Fields {
        let showsLease = r.state == .held || r.state == .reserved
        return Fields(name: [r.name], type: [r.type], state: [r.state.rawValue],
                      holder: showsLease ? [r.holder ?? ""] : [],
                      label: labelPairs(r.labels),
                      lease: showsLease ? [r.lease.map { LeaseService.format($0) } ?? ""] : [])
    }

    static func leaseFields(_ lease: LeaseView, _ byName: [String: ResourceView]) -> Fields {
        let resources = lease.resources.compactMap { byName[$0] }
        return Fields(name: lease.resources, type: resources.map(\.type), state: ["held"],
                      holder: [lease.holder], label: resources.flatMap { labelPairs($0.labels) },
                      lease: [LeaseService.format(lease.id)],
                      other: [lease.peer] + lease.meta.values)
    }

    /// A named want counts with that resource's type and labels, as a lease's resources do.
    static func waiterFields(_ waiter: WaiterView, _ byName: [String: ResourceView]) -> Fields {
        var fields = Fields(state: ["waiting"], holder: [waiter.holder], lease: [LeaseService.format(waiter.id)],
                            other: [waiter.peer] + waiter.meta.values)
        for group in waiter.want {
            switch group {
            case .name(let name):
                fields.name.append(name)
                if let resource = byName[name] {
                    fields.type.append(resource.type)
                    fields.label += labelPairs(resource.labels)
                }
            case .type(let type, let labels, _):
                fields.type.append(type)
                fields.label += labelPairs(labels)
            }
        }
        fields.name += waiter.reserved
        return fields
    }

    // MARK: text

    /// Escapes text for HTML element content and quoted attribute values. Walks Unicode scalars,
    /// not Characters: a quote or bracket joined to a combining mark is one Character, and
    /// matching on Characters let it through unescaped.
    static func escape(_ text: String) -> String {
        var out = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            switch scalar {
            case "<": out.append(contentsOf: "&lt;".unicodeScalars)
            case ">": out.append(contentsOf: "&gt;".unicodeScalars)
            case "&": out.append(contentsOf: "&amp;".unicodeScalars)
            case "\"": out.append(contentsOf: "&quot;".unicodeScalars)
            case "'": out.append(contentsOf: "&#39;".unicodeScalars)
            default: out.append(scalar)
            }
        }
        return String(out)
    }

    /// The value of `name` in an `application/x-www-form-urlencoded` query, decoded.
    static func formValue(_ name: String, in query: String?) -> String? {
        guard let query else { return nil }
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, parts[0] == name else { continue }
            return percentDecode(parts[1].replacingOccurrences(of: "+", with: " "))
        }
        return nil
    }

    /// Percent-encodes everything but unreserved characters (RFC 3986), spaces as `+`.
    static func formEncode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
                 UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            case UInt8(ascii: " "):
                out += "+"
            default:
                let hex = String(byte, radix: 16, uppercase: true)
                out += byte < 16 ? "%0\(hex)" : "%\(hex)"
            }
        }
        return out
    }
}

/// 64-bit FNV-1a as 16 hex digits: a cache-busting version, not a security measure.
private func fnv1a(_ bytes: [UInt8]) -> String {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in bytes {
        hash ^= UInt64(byte)
        hash = hash &* 0x0000_0100_0000_01b3
    }
    let hex = String(hash, radix: 16)
    return String(repeating: "0", count: 16 - hex.count) + hex
}

private extension Substring {
    func replacingOccurrences(of target: Character, with replacement: Character) -> String {
        String(map { $0 == target ? replacement : $0 })
    }
}

private extension String {
    /// `2026-11-25T16:04:45Z` → `2026-11-25 16:04:45`
    func replacingT() -> String {
        String(map { $0 == "T" ? " " : $0 }.filter { $0 != "Z" })
    }
}
