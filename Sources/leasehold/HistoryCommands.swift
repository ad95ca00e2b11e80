import ArgumentParser
import LeaseholdClient
import LeaseProtocol

struct HistoryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "history",
        abstract: "Show who had what, when, for how long, and why it ended (newest first).",
        discussion: """
            Reads GET /v1/history: the server needs an audit journal (--state-dir or --audit-file). \
            Times are RFC 3339 (2026-12-01T09:00:00Z) or an age: 30m, 24h, 7d, 2w. \
            Exit status: 0; 1 when the server refused the query or keeps no journal; 69 when it cannot be reached.
            """
    )

    @OptionGroup var connection: ConnectionOptions

    @Option(name: .long, help: "Only events about this resource.") var resource: String?
    @Option(name: .long, help: "Only events whose holder contains this text.") var holder: String?
    @Option(name: .long, help: "Only events about resources of this type.") var type: String?
    @Option(name: .long, help: ArgumentHelp("Only events at or after this time (or age: 24h, 7d).", valueName: "time")) var since: String?
    @Option(name: .long, help: ArgumentHelp("Only events at or before this time (or age).", valueName: "time")) var until: String?
    @Option(name: .long, help: "The most events shown.") var limit: Int = 100
    @Flag(name: .long, help: "Print the events as JSON, one per line.") var json = false

    func validate() throws {
        guard (1...100_000).contains(limit) else { throw ValidationError("--limit must be 1-100000 (got \(limit))") }
        for (flag, value) in [("--since", since), ("--until", until)] {
            if let value, HistoryTables.time(value, now: 0) == nil {
                throw ValidationError("\(flag) must be an RFC 3339 time like 2026-12-01T09:00:00Z or an age like 24h or 7d (got '\(value)')")
            }
        }
    }

    func run() throws {
        let server = try connection.serverURL()
        let now = StatusSnapshot.unixNow()
        var filter = LeaseholdHTTP.HistoryFilter()
        filter.resource = resource
        filter.holder = holder
        filter.type = type
        filter.since = since.flatMap { HistoryTables.time($0, now: now) }
        filter.until = until.flatMap { HistoryTables.time($0, now: now) }
        let events: [JSONValue]
        do {
            events = try LeaseholdHTTP(server: server, timeout: .seconds(fractional: connection.connectTimeout)).history(filter, limit: limit)
        } catch {
            fail(error)
        }
        writeOut(json ? events.map { $0.serialized() + "\n" }.joined() : HistoryTables.history(events))
    }
}

struct UsageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "usage",
        abstract: "Show how busy resources (or types) were: time held, share, leases, grant waits, abnormal ends.",
        discussion: """
            Reads GET /v1/usage (default window: the last 24 hours). Times are RFC 3339 or an age (7d). \
            Exit status: 0; 1 when the server refused the query or keeps no journal; 69 when it cannot be reached.
            """
    )

    @OptionGroup var connection: ConnectionOptions

    @Option(name: .long, help: ArgumentHelp("Start of the window (time or age: 7d).", valueName: "time")) var since: String?
    @Option(name: .long, help: ArgumentHelp("End of the window (default: now).", valueName: "time")) var until: String?
    @Option(name: .long, help: "resource or type.") var by: String = "resource"
    @Flag(name: .long, help: "Print the usage document as JSON.") var json = false

    func validate() throws {
        guard ["resource", "type"].contains(by) else { throw ValidationError("--by must be resource or type (got '\(by)')") }
        for (flag, value) in [("--since", since), ("--until", until)] {
            if let value, HistoryTables.time(value, now: 0) == nil {
                throw ValidationError("\(flag) must be an RFC 3339 time like 2026-12-01T09:00:00Z or an age like 24h or 7d (got '\(value)')")
            }
        }
    }

    func run() throws {
        let server = try connection.serverURL()
        let now = StatusSnapshot.unixNow()
        let document: JSONValue
        do {
            document = try LeaseholdHTTP(server: server, timeout: .seconds(fractional: connection.connectTimeout))
                .usage(since: since.flatMap { HistoryTables.time($0, now: now) }, until: until.flatMap { HistoryTables.time($0, now: now) }, by: by)
        } catch {
            fail(error)
        }
        writeOut(json ? document.serialized() + "\n" : HistoryTables.usage(document))
    }
}
