import Dispatch
import HTTPCodec
import LeaseProtocol
import Transport

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
        journal.whenDurable {
            Self.historyQueue.async {
            let reader = JournalReader(files: journal.openForReading())
            if let cursor = parsed.cursor, !reader.files.contains(where: { $0.inode == cursor.inode }) {
                return responder.respond(.jsonError(410, "the journal file this cursor points into has been rotated away; start again without 'cursor'"))
            }
            let page = History.history(parsed, reader: reader)
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
                let answer = History.usage(parsed, reader: reader, inventory: inventory, current: current, now: now)
                responder.respond(.json(200, bytes: answer.serializedBytes()))
            }
            }
        }
    }
}
