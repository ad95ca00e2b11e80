import ArgumentParser
import LeaseholdServer

@main
struct Leasehold: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "leasehold",
        abstract: "Share lab hardware between test suites: the WebSocket connection is the lease.",
        version: leaseholdVersion,
        subcommands: [Serve.self, Hold.self, StatusCommand.self, HistoryCommand.self, UsageCommand.self, Free.self, Disable.self, Enable.self, Reset.self, Reload.self]
    )
}
