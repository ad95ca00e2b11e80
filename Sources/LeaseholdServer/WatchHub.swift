import Dispatch
import Transport

/// The `/v1/watch` subscribers. A snapshot goes out at once to a new watcher and after changes,
/// at most ten a second, rendered once for all of them. Lives on the lease service's queue; the
/// snapshots are rendered in order on a thread of their own (one at a time, at a lower priority),
/// so a big lab's JSON never holds up the lease table.
final class WatchHub: @unchecked Sendable {
    static let minimumInterval: UInt64 = 100_000_000

    private let queue: DispatchQueue
    private let clock: ServerClock
    private var watchers: [ObjectIdentifier: WatchSession] = [:]
    private var lastBroadcast: UInt64 = 0
    private var broadcastScheduled = false
    private var timer: LoopTimer?
    /// Takes the status document's snapshot (on the service queue) and returns its renderer; set
    /// by the service.
    var prepare: () -> @Sendable () -> [MessagePiece] = { { [MessagePiece(Array("{}".utf8))] } }
    private let renderQueue = DispatchQueue(label: "leasehold.watch-render")
    /// The latest snapshot waiting to be rendered for everyone; a render in progress takes it
    /// when done, so renders slower than the changes skip snapshots instead of queueing them.
    /// Every watcher gets snapshots in the order they were taken: there is only ever one to send.
    private struct Pending {
        var render: (@Sendable () -> [MessagePiece])?
        /// Everyone, after a change…
        var audience: [WatchSession] = []
        /// …and watchers that have not had their first snapshot yet.
        var newcomers: [WatchSession] = []
        var rendering = false
    }
    private let pending = Locked(Pending())

    init(queue: DispatchQueue, clock: ServerClock) {
        self.queue = queue
        self.clock = clock
    }

    /// Call on the service queue.
    func add(_ watcher: WatchSession) {
        #if DEBUG
        dispatchPrecondition(condition: .onQueue(queue))
        #endif
        watchers[ObjectIdentifier(watcher)] = watcher
        // A snapshot still waiting to be rendered is new enough for a newcomer (a change after it
        // is broadcast to everyone, newcomer included): a hundred watchers connecting at once
        // cost one snapshot of the table, not a hundred.
        post { pending in
            if pending.render == nil { pending.render = prepare() }
            pending.newcomers.append(watcher)
        }
    }

    func remove(_ watcher: WatchSession) {
        watchers[ObjectIdentifier(watcher)] = nil
    }

    /// The table changed. Call on the service queue.
    func changed() {
        #if DEBUG
        dispatchPrecondition(condition: .onQueue(queue))
        #endif
        guard !watchers.isEmpty, !broadcastScheduled else { return }
        broadcastScheduled = true
        let now = clock.source.now()
        let due = lastBroadcast &+ Self.minimumInterval
        if due <= now {
            // Let the rest of this burst of events land first.
            queue.async { [self] in broadcast() }
        } else {
            if timer == nil {
                timer = clock.source.makeTimer(queue: queue) { [weak self] in self?.broadcast() }
            }
            timer?.schedule(at: due)
        }
    }

    private func broadcast() {
        guard broadcastScheduled else { return }
        broadcastScheduled = false
        guard !watchers.isEmpty else { return }
        lastBroadcast = clock.source.now()
        // Rendered once, and compressed at most once per window size for every watcher that
        // negotiated permessage-deflate.
        let render = prepare()
        let audience = Array(watchers.values)
        post { pending in
            pending.render = render
            pending.audience = audience
            pending.newcomers = []
        }
    }

    /// Files a snapshot to render (on the service queue) and starts the renderer if it is idle.
    private func post(_ change: (inout Pending) -> Void) {
        let start = pending.withLock { pending in
            change(&pending)
            defer { pending.rendering = true }
            return !pending.rendering
        }
        // Below the loops' priority: where the server has one core, a big lab's render must not
        // keep a grant waiting for the CPU.
        if start, !BackgroundThread.run(nice: 5, { [self] in renderLatest() }) {
            renderQueue.async { [self] in renderLatest() }
        }
    }

    /// On the render queue.
    private func renderLatest() {
        while let (render, audience) = pending.withLock({ pending -> ((@Sendable () -> [MessagePiece]), [WatchSession])? in
            guard let render = pending.render else {
                pending.rendering = false
                return nil
            }
            pending.render = nil
            defer {
                pending.audience = []
                pending.newcomers = []
            }
            return (render, pending.audience + pending.newcomers)
        }) {
            let message = SharedMessage(textPieces: render())
            // Frame (and compress) it here for every kind of watcher, so their loops only write.
            var prepared: [SharedMessage.Compression?] = []
            for watcher in audience where !prepared.contains(watcher.compression) {
                prepared.append(watcher.compression)
                _ = message.serverFrame(watcher.compression)
            }
            var byLoop: [ObjectIdentifier: (EventLoop, [WatchSession])] = [:]
            for watcher in audience {
                guard let loop = watcher.loop else { continue }
                byLoop[ObjectIdentifier(loop), default: (loop, [])].1.append(watcher)
            }
            // A few watchers per loop turn: a grant waits for a handful of snapshot writes, not a hundred.
            for (loop, watchers) in byLoop.values {
                loop.forEach(watchers[...], perTurn: Self.offersPerTurn) { $0.offer(message) }
            }
        }
    }
}

extension WatchHub {
    /// Watchers a loop sends a snapshot to before it looks at its sockets again.
    static let offersPerTurn = 8
}

/// One `/v1/watch` WebSocket. Holds at most one unsent snapshot (the latest) when the peer reads
/// slowly, never a queue of them.
final class WatchSession: WebSocketHandler, @unchecked Sendable {
    private unowned let hub: WatchHub
    private let hubQueue: DispatchQueue
    private weak var socket: WebSocketConnection?
    private(set) var loop: EventLoop?
    /// How the socket takes shared messages; set at open, before the hub hears of it.
    private(set) var compression: SharedMessage.Compression?
    private var latest: SharedMessage?
    private var retryScheduled = false
    static let backlogLimit = 256 * 1024
    private let slots: ConnectionLimit
    /// The watcher slot this stream holds, by its address; nil when it holds none.
    private var slotAddress: String?

    init(hub: WatchHub, hubQueue: DispatchQueue, slots: ConnectionLimit) {
        self.hub = hub
        self.hubQueue = hubQueue
        self.slots = slots
    }

    func webSocketDidOpen(_ socket: WebSocketConnection) {
        if slots.tryAcquire(address: socket.peer.host) != nil {
            socket.close(code: 1013, reason: "too many watchers (at most \(slots.maximum)); try again later")
            return
        }
        slotAddress = socket.peer.host
        self.socket = socket
        loop = socket.loop
        compression = socket.sharedMessageCompression
        hubQueue.async { [hub, self] in hub.add(self) }
    }

    func webSocket(_ socket: WebSocketConnection, didReceiveText text: [UInt8]) {
        // Watchers only listen; messages from them are ignored.
    }

    func webSocketDidClose(_ socket: WebSocketConnection, code: UInt16, reason: String) {
        latest = nil
        guard let address = slotAddress else { return }
        slotAddress = nil
        slots.release(address: address)
        hubQueue.async { [hub, self] in hub.remove(self) }
    }

    /// On this watcher's loop.
    func offer(_ message: SharedMessage) {
        guard let socket, socket.isOpen else { return }
        if socket.pendingOutputBytes > Self.backlogLimit {
            latest = message
            scheduleRetry()
            return
        }
        latest = nil
        socket.send(message)
    }

    private func scheduleRetry() {
        guard !retryScheduled, let loop else { return }
        retryScheduled = true
        loop.queue.asyncAfter(deadline: .now() + .milliseconds(100)) { [self] in
            retryScheduled = false
            if let message = latest { offer(message) }
        }
    }
}
