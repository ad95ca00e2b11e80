import Foundation

/// A strict reader of the Prometheus text exposition format (0.0.4): `# HELP`/`# TYPE` lines and
/// samples `name{label="value",…} number`. Throws on any line it cannot read.
struct PrometheusText {
    struct Sample {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    var samples: [Sample] = []
    var types: [String: String] = [:]

    init(parsing text: String) throws {
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let line = String(rawLine)
            if line.hasPrefix("#") {
                let parts = line.split(separator: " ", maxSplits: 3).map(String.init)
                if parts.count >= 4, parts[1] == "TYPE" {
                    guard ["counter", "gauge", "histogram", "summary", "untyped"].contains(parts[3]) else {
                        throw TestFailure("unknown metric type in: \(line)")
                    }
                    types[parts[2]] = parts[3]
                }
                continue
            }
            samples.append(try Self.sample(line))
        }
    }

    static func sample(_ line: String) throws -> Sample {
        var chars = Array(line.unicodeScalars)
        var index = 0
        var name = ""
        while index < chars.count, chars[index] == "_" || chars[index] == ":" || chars[index].properties.isAlphabetic
                || ("0"..."9").contains(chars[index]) {
            name.unicodeScalars.append(chars[index])
            index += 1
        }
        guard !name.isEmpty else { throw TestFailure("no metric name in: \(line)") }
        var labels: [String: String] = [:]
        if index < chars.count, chars[index] == "{" {
            index += 1
            while index < chars.count, chars[index] != "}" {
                var key = ""
                while index < chars.count, chars[index] != "=" { key.unicodeScalars.append(chars[index]); index += 1 }
                guard index + 1 < chars.count, chars[index + 1] == "\"" else { throw TestFailure("bad label in: \(line)") }
                index += 2
                var value = ""
                while index < chars.count, chars[index] != "\"" {
                    if chars[index] == "\\", index + 1 < chars.count {
                        index += 1
                        value.unicodeScalars.append(chars[index] == "n" ? "\n" : chars[index])
                    } else {
                        value.unicodeScalars.append(chars[index])
                    }
                    index += 1
                }
                guard index < chars.count else { throw TestFailure("unterminated label value in: \(line)") }
                index += 1
                labels[key.trimmingCharacters(in: .whitespaces)] = value
                if index < chars.count, chars[index] == "," { index += 1 }
            }
            guard index < chars.count else { throw TestFailure("unterminated labels in: \(line)") }
            index += 1
        }
        chars = Array(chars[index...])
        let rest = String(String.UnicodeScalarView(chars)).trimmingCharacters(in: .whitespaces)
        let valueText = rest.split(separator: " ").first.map(String.init) ?? ""
        let value: Double?
        switch valueText {
        case "+Inf": value = .infinity
        case "-Inf": value = -.infinity
        case "NaN": value = .nan
        default: value = Double(valueText)
        }
        guard let value else { throw TestFailure("bad sample value in: \(line)") }
        return Sample(name: name, labels: labels, value: value)
    }

    /// The value of the one sample with this name and exactly these labels.
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }
}
