import CPosix
import Dispatch
import HTTPCodec
import LeaseProtocol
import Transport
#if canImport(Glibc)
import Glibc
#endif

/// `GET /v1/history` and `GET /v1/usage`: read from the journal's files on a queue of their own
/// (one query at a time, so a burst of them cannot take both cores from the leases).
extension LeaseServer {
    static let historyQueue = DispatchQueue(label: "leasehold.history", qos: .utility)

    static func noJournal() -> HTTPResponse {
        .jsonError(404, "this server keeps no audit journal, so it has no history: start it with --state-dir DIR (the journal is DIR/audit.jsonl) or --audit-file FILE")
    }

    func answerHistory(query: String?, responder: HTTPResponder) {
        guard let journal = service.journal else { return responder.respond(Self.noJournal()) }
        let parsed: History.HistoryQuery
        do { parsed = try History.HistoryQuery(query: query) } catch { return responder.respond(.jsonError(400, error.message)) }
        // What was recorded so far is read too (the journal writes it now rather than within 100 ms).
        let usageIndexer = self.usageIndexer
        journal.whenDurable {
            Self.historyQueue.async {
            let reader = JournalReader(files: journal.openForReading())
            if let cursor = parsed.cursor, !reader.files.contains(where: { $0.inode == cursor.inode }) {
                return responder.respond(.jsonError(410, "the journal file this cursor points into has been rotated away; start again without 'cursor'"))
            }
            let page = UsageIndexer.querying(usageIndexer) { History.history(parsed, reader: reader) }
            responder.respond(.json(200, bytes: page.json.serializedBytes()))
            }
        }
    }

    func answerUsage(query: String?, responder: HTTPResponder) {
        guard let journal = service.journal else { return responder.respond(Self.noJournal()) }
        let clock = self.clock
        let parsed: History.UsageQuery
        do {
            parsed = try History.UsageQuery(query: query, now: clock.unixMilliseconds(clock.now()))
        } catch {
            return responder.respond(.jsonError(400, error.message))
        }
        let usageIndexer = self.usageIndexer
        service.queue.async { [service] in
            let snapshot = service.snapshot()
            let now = clock.unixMilliseconds(clock.now())
            journal.whenDurable {
            Self.historyQueue.async {
                let inventory = snapshot.resources.map { (name: $0.name, type: $0.type) }
                let current = snapshot.leases.map {
                    History.CurrentLease(id: LeaseService.format($0.id), grantedAt: clock.unixMilliseconds($0.since), resources: $0.resources)
                }
                let reader = JournalReader(files: journal.openForReading())
                let answer = UsageIndexer.querying(usageIndexer) {
                    History.usage(parsed, reader: reader, index: usageIndexer?.store, inventory: inventory, current: current, now: now)
                }
                // The live file's new lines (and any file still without summaries) get theirs.
                usageIndexer?.refresh()
                responder.respond(.json(200, bytes: answer.serializedBytes()))
            }
            }
        }
    }
}

/// Keeps the journal's usage summaries (`UsageIndex`) up to date, on a thread of its own at a
/// low priority (a journal without summaries takes seconds a GiB to summarise): queries never
/// wait for it, they read what it has not summarised yet.
final class UsageIndexer: Sendable {
    let store: UsageIndex.Store
    private let journal: AuditJournal
    private let clock: ServerClock
    /// The live file's unsummarised bytes worth summarising (fewer are cheap to read).
    private let minimumTail: Int64

    private struct State {
        var running = false
        /// Asked again while running: one more pass.
        var again = false
        var idle: [@Sendable () -> Void] = []
    }
    private let state = Locked(State())
    /// Queries reading the journal: the builder waits for them between buckets (on two cores
    /// it would otherwise slow the very queries it is for).
    private let queries = DispatchGroup()

    init(journal: AuditJournal, clock: ServerClock, minimumTail: Int64 = 1 << 20) {
        store = UsageIndex.Store(directory: journal.path + ".index")
        self.journal = journal
        self.clock = clock
        self.minimumTail = minimumTail
    }

    /// Summarises what needs it, soon (once, however often it is asked meanwhile).
    func refresh() {
        let start = state.withLock { state in
            if state.running { state.again = true }
            defer { state.running = true }
            return !state.running
        }
        if start, !BackgroundThread.run(nice: 10, { [self] in run() }) {
            // No thread to be had: the queries read the lines, as without summaries.
            finish()
        }
    }

    /// Runs `body` (a query reading the journal) with `indexer`'s builder paused.
    static func querying<T>(_ indexer: UsageIndexer?, _ body: () -> T) -> T {
        indexer?.queries.enter()
        defer { indexer?.queries.leave() }
        return body()
    }

    /// Calls `completion` once no pass is running or asked for (tests).
    func whenIdle(_ completion: @escaping @Sendable () -> Void) {
        let now = state.withLock { state in
            if state.running { state.idle.append(completion) }
            return !state.running
        }
        if now { completion() }
    }

    private func run() {
        repeat {
            state.withLock { $0.again = false }
            let reader = JournalReader(files: journal.openForReading())
            store.refresh(reader: reader, now: clock.unixMilliseconds(clock.now()), minimumTail: minimumTail) { queries.wait() }
        } while state.withLock({ $0.again })
        finish()
    }

    private func finish() {
        let waiters = state.withLock { state in
            defer {
                state.running = false
                state.idle = []
            }
            return state.idle
        }
        for waiter in waiters { waiter() }
    }
}
