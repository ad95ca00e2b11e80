import ArgumentParser
import Dispatch
import LeaseholdClient
#if canImport(Glibc)
import Glibc
#endif

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show resources (state, holder, held for) and the queue.",
        discussion: "Exit status: 0, or 69 when the server cannot be reached (or, with --watch, goes away)."
    )

    @OptionGroup var connection: ConnectionOptions

    @Flag(name: .long, help: "Print the status document (PROTOCOL.md, \"Watching\") as JSON, one line per snapshot.")
    var json = false

    @Flag(name: .long, help: "Follow live changes until interrupted.")
    var watch = false

    func run() throws {
        let server = try connection.serverURL()
        var configuration = ClientConfiguration()
        configuration.connectTimeout = .seconds(fractional: connection.connectTimeout)
        if !watch {
            let snapshot: StatusSnapshot
            do {
                snapshot = try LeaseholdHTTP(server: server, timeout: configuration.connectTimeout).status()
            } catch {
                fail(error)
            }
            writeOut(json ? snapshot.json.serialized() + "\n" : snapshot.table(now: StatusSnapshot.unixNow()))
            return
        }
        let terminal = isatty(1) == 1 && !json
        let json = self.json
        StatusWatcher.watch(server, configuration: configuration, onSnapshot: { snapshot in
            if json {
                writeOut(snapshot.json.serialized() + "\n")
            } else if terminal {
                // Home, clear, redraw.
                writeOut("\u{1B}[H\u{1B}[2J\(server) — \(snapshot.resources.count) resources\n\n" + snapshot.table(now: StatusSnapshot.unixNow()))
            } else {
                writeOut(snapshot.table(now: StatusSnapshot.unixNow()) + "\n")
            }
        }, onEnd: { error in
            fail(error)
        })
        dispatchMain()
    }
}
