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
        discussion: """
            Exit status: 0, or 69 when the server cannot be reached. With --watch, a server that goes \
            away after the first snapshot is reconnected to with backoff (0.5 s doubling to 15 s), \
            saying so; on a terminal the clocks tick between snapshots.
            """
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
        let follower = StatusFollower(server: server, configuration: configuration, json: json,
                                      terminal: isatty(1) == 1 && !json)
        DispatchQueue.main.async { follower.connect() }
        dispatchMain()
    }
}

/// `status --watch`: prints each snapshot; on a terminal redraws every second so the clocks run;
/// reconnects with backoff once it has seen the server. Everything runs on the main queue.
final class StatusFollower: @unchecked Sendable {
    private let server: ServerURL
    private let configuration: ClientConfiguration
    private let json: Bool
    private let terminal: Bool
    private var last: StatusSnapshot?
    private var banner = ""
    private var backoff = 0.5
    private var ticker: DispatchSourceTimer?

    init(server: ServerURL, configuration: ClientConfiguration, json: Bool, terminal: Bool) {
        self.server = server
        self.configuration = configuration
        self.json = json
        self.terminal = terminal
    }

    func connect() {
        StatusWatcher.watch(server, configuration: configuration, onSnapshot: { snapshot in
            DispatchQueue.main.async { self.show(snapshot) }
        }, onEnd: { error in
            DispatchQueue.main.async { self.lost(error) }
        })
    }

    private func show(_ snapshot: StatusSnapshot) {
        last = snapshot
        banner = ""
        backoff = 0.5
        if json {
            writeOut(snapshot.json.serialized() + "\n")
        } else if terminal {
            draw()
            startTicking()
        } else {
            writeOut(snapshot.table(now: StatusSnapshot.unixNow()) + "\n")
        }
    }

    private func draw() {
        guard let last else { return }
        // Home, clear, redraw.
        writeOut("\u{1B}[H\u{1B}[2J\(server) — \(last.resources.count) resources\(banner.isEmpty ? "" : " — " + banner)\n\n"
                 + last.table(now: StatusSnapshot.unixNow()))
    }

    private func startTicking() {
        guard ticker == nil else { return }
        let timer = DispatchSource.makeTimerSource(queue: .main)
        timer.schedule(deadline: .now() + 1, repeating: 1)
        // While disconnected the clocks stop: the last snapshot is no longer the truth.
        timer.setEventHandler { [self] in if banner.isEmpty { draw() } }
        timer.activate()
        ticker = timer
    }

    private func lost(_ error: LeaseholdError) {
        // Never reached: nothing to follow.
        guard last != nil else { fail(error) }
        let delay = backoff
        backoff = min(15, backoff * 2)
        banner = "connection lost (\(error.description)); reconnecting in \(delay) s"
        if terminal { draw() } else { writeStderr("leasehold: \(banner)\n") }
        DispatchQueue.main.asyncAfter(deadline: .now() + delay) { self.connect() }
    }
}
