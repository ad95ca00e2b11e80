import Foundation
import LeaseCore
import LeaseProtocol
@testable import LeaseholdServer
import Testing

/// The page's rules (durations, labels, wants, the filter) exist twice: here for the page the server
/// renders, in `app.js` for the live page. Both are checked against one table,
/// `Tests/Fixtures/page-rules.json`; `tests/test_status_page.py` runs the same table in a browser.
@Suite struct PageRulesTests {
    static let rules: JSONValue = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fixtures/page-rules.json")
        guard let data = try? Data(contentsOf: url), let value = try? JSONValue.parse([UInt8](data)) else {
            return .null
        }
        return value
    }()

    static func cases(_ name: String) -> [JSONValue] {
        guard case .array(let list)? = rules[name] else { return [] }
        return list
    }

    static func strings(_ value: JSONValue?) -> [String] {
        guard case .array(let list)? = value else { return [] }
        return list.compactMap(\.stringValue)
    }

    static func labels(_ value: JSONValue?) -> [String: String] {
        guard case .object(let members)? = value else { return [:] }
        return Dictionary(members.map { ($0.0, $0.1.stringValue ?? "") }, uniquingKeysWith: { _, last in last })
    }

    @Test("the table is there and has cases of every kind")
    func tableLoads() {
        for kind in ["duration", "labelPairs", "wantsText", "filter"] {
            #expect(!Self.cases(kind).isEmpty, "no \(kind) cases in page-rules.json")
        }
    }

    @Test func durations() {
        for case .array(let pair) in Self.cases("duration") {
            guard pair.count == 2, case .int(let milliseconds) = pair[0], let text = pair[1].stringValue else {
                Issue.record("bad duration case \(pair)")
                continue
            }
            #expect(StatusPage.duration(milliseconds * 1_000_000) == text, "\(milliseconds) ms")
        }
    }

    @Test func labelPairs() {
        for case .array(let pair) in Self.cases("labelPairs") where pair.count == 2 {
            #expect(StatusPage.labelPairs(Self.labels(pair[0])) == Self.strings(pair[1]))
        }
    }

    @Test func wantsText() {
        for case .array(let pair) in Self.cases("wantsText") where pair.count == 2 {
            guard case .array(let groups) = pair[0] else { continue }
            let want: [Group] = groups.map { group in
                if let name = group["name"]?.stringValue { return .name(name) }
                let count = group["count"]?.numberValue.map { Int($0) } ?? 1
                return .type(group["type"]?.stringValue ?? "", labels: Self.labels(group["labels"]), count: count)
            }
            #expect(StatusPage.wantsText(want) == pair[1].stringValue)
        }
    }

    @Test func filter() {
        for example in Self.cases("filter") {
            let query = example["query"]?.stringValue ?? ""
            let given = example["fields"]
            let fields = StatusPage.Fields(
                name: Self.strings(given?["name"]), type: Self.strings(given?["type"]),
                state: Self.strings(given?["state"]), holder: Self.strings(given?["holder"]),
                label: Self.strings(given?["label"]), lease: Self.strings(given?["lease"]),
                other: Self.strings(given?["other"]))
            #expect(StatusPage.Filter(query).matches(fields) == (example["matches"] == .bool(true)),
                    "\"\(query)\" against \(given.map { $0.serialized() } ?? "")")
        }
    }
}
