import CPosix
import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// What a connection tells the protocol layer above it. All calls arrive on the connection's loop.
protocol ConnectionDelegate: AnyObject, Sendable {
    /// Bytes read from the peer. The buffer is the loop's shared one: copy what must be kept.
    func connectionDidRead(_ bytes: UnsafeRawBufferPointer)
    /// The connection is done for the layer above (EOF, error, close, abort). Called exactly once.
    func connectionDidClose(_ reason: Connection.CloseReason)
    /// `connection.deadline` has come.
    func connectionDeadlineReached(now: UInt64)
    /// A client connection finished connecting.
    func connectionDidConnect()
}

/// One TCP socket on one event loop: non-blocking reads into the loop's buffer, a bounded output
/// buffer written with direct writes first and write readiness only while bytes remain, and a
/// close that always ends with the descriptor closed at the end of the loop's turn. Readiness
/// comes from the loop's epoll instance; the socket is registered only while it waits for
/// something (a paused, idle socket is not, so a reset peer cannot make it spin).
final class Connection: DeadlineOwner, @unchecked Sendable {
    enum CloseReason: Sendable, Equatable {
        case closedByUs
        case peerClosed
        case reset(errno: Int32)
        case outputOverflow
        case connectFailed(errno: Int32)
    }

    enum CloseMode { case graceful, abort }

    private enum State { case connecting, open, draining, closed }

    let fd: Int32
    unowned let loop: EventLoop
    let peer: SocketAddress
    var delegate: ConnectionDelegate?
    /// Released when the descriptor is closed.
    var limit: ConnectionLimit?
    /// TLS over the socket, when this is a TLS connection: reads and writes go through it.
    private(set) var tls: TLSSession?
    /// Told, once, why a TLS connection failed (handshake or later), with OpenSSL's reasons. A
    /// server shares one for all its connections (no closure context per connection).
    var onTLSFailure: ((_ connection: Connection, _ reason: String) -> Void)?
    /// OpenSSL needs the socket writable to go on reading (a handshake message to send).
    private var readWantsWrite = false
    /// OpenSSL needs the socket readable to go on writing (the handshake is not done).
    private var writeWantsRead = false
    /// Plain HTTP came to this TLS connection and got a plain 400.
    private var plainHTTPAnswered = false

    private var state: State
    /// The loop's registration of `fd`, while there is one, and the events it waits for.
    private var token: UInt64?
    private var watchedEvents: UInt32 = 0
    /// Reads are wanted (from the moment the socket is connected until it closes)…
    private var reading = false
    /// …except while paused.
    private var readPaused = false
    /// Output is waiting for the socket to become writable (or a connect for its end).
    private var wantsWritable = false

    /// Bytes waiting for the socket, as the writes gave them: a big message shared by many
    /// connections (a watch snapshot) is referenced, not copied. Small writes are joined.
    private var output: [[UInt8]] = []
    /// How much of `output[0]` has been sent.
    private var outputOffset = 0
    private var queuedBytes = 0
    /// The biggest chunk queued: the bound applies to the rest, so a message the server chose to
    /// send always goes out whole, however big.
    private var largestChunkBytes = 0
    private static let joinLimit = 16 * 1024
    /// The most one turn of the loop writes to one socket: a 4 MiB status document copied into
    /// a socket buffer in one call would hold up every other connection of the loop (and the
    /// lease queue, which runs on the first loop) for milliseconds.
    static let writeSlice = 64 * 1024
    private let maxOutputBytes: Int
    /// While the delegate handles a read, writes are gathered and sent once afterwards.
    private var corked = false
    private var shutdownAfterFlush = false
    private var closeNotified = false

    /// How long a graceful close waits for the peer's FIN before closing anyway.
    static let drainTimeout: UInt64 = 2_000_000_000
    /// How long a graceful close lets queued output drain before giving up on a peer that reads
    /// nothing.
    static let flushTimeout: UInt64 = 30_000_000_000

    /// Wraps an accepted, connected socket. Call on `loop`.
    init(acceptedFD fd: Int32, peer: SocketAddress, loop: EventLoop, maxOutputBytes: Int, tls: TLSSession? = nil) {
        self.fd = fd
        self.loop = loop
        self.peer = peer
        self.maxOutputBytes = maxOutputBytes
        self.tls = tls
        state = .open
        super.init()
        Posix.setNoDelay(fd)
        loop.connections[ObjectIdentifier(self)] = self
        reading = true
        updateInterest()
    }

    /// Wraps a socket with a connect in progress. Set the delegate, then call `finishConnecting()`;
    /// the delegate hears `connectionDidConnect`.
    init(connectingFD fd: Int32, peer: SocketAddress, loop: EventLoop, maxOutputBytes: Int, tls: TLSSession? = nil) {
        self.fd = fd
        self.loop = loop
        self.peer = peer
        self.maxOutputBytes = maxOutputBytes
        self.tls = tls
        state = .connecting
        super.init()
        loop.connections[ObjectIdentifier(self)] = self
    }

    func finishConnecting() {
        // Loopback connects are often done already: then no write readiness is needed at all.
        if Posix.isConnected(fd) {
            handleWritable()
        } else {
            armWritable()
        }
    }

    var isOpen: Bool { state == .open }
    var pendingOutputBytes: Int { queuedBytes }
    /// Every byte ever handed to `write`.
    private var bytesAccepted: UInt64 = 0

    /// Bytes the peer's TCP has acknowledged so far: grows while a slow but live peer reads, even
    /// when it sends nothing back.
    var bytesAcknowledged: UInt64 {
        let backlog = UInt64(outputBacklog)
        return bytesAccepted >= backlog ? bytesAccepted - backlog : 0
    }

    /// Bytes written by us and not yet acknowledged by the peer: queued here or in the kernel.
    var outputBacklog: Int {
        pendingOutputBytes + max(0, Int(leasehold_unacknowledged_bytes(fd)))
    }

    // MARK: readiness

    /// Registers, changes or ends the loop's watch of `fd` to match what the connection waits for.
    private func updateInterest() {
        guard state != .closed else { return }
        var wanted: UInt32 = 0
        if reading, !readPaused { wanted |= EPOLLIN.rawValue }
        if wantsWritable { wanted |= EPOLLOUT.rawValue }
        guard wanted != watchedEvents else { return }
        if wanted == 0, let token {
            loop.unwatch(fd, token: token)
            self.token = nil
        } else if let token {
            loop.rewatch(fd, events: wanted, token: token)
        } else {
            guard let registered = loop.watch(fd, events: wanted, by: self) else {
                terminate(.reset(errno: errno), abortive: true)
                return
            }
            token = registered
        }
        watchedEvents = wanted
    }

    func epollEvents(_ events: UInt32) {
        // Errors and hang-ups are reported whatever was asked for: the read or write that
        // follows finds out which.
        let trouble = events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0
        if reading, !readPaused, trouble || events & EPOLLIN.rawValue != 0 {
            handleReadable()
        }
        if wantsWritable, trouble || events & EPOLLOUT.rawValue != 0 {
            handleWritable()
        }
    }

    // MARK: reading

    private func handleReadable() {
        // Read until the socket is drained (a short read does not prove it: a reset may already be
        // queued behind the data), but at most 4 buffers a turn so one busy peer cannot starve the
        // loop's others; readiness reports the rest again in a later turn.
        for _ in 0..<4 {
            guard state == .open || state == .draining, !readPaused else { return }
            switch readSome() {
            case .bytes(let count):
                guard state == .open else { continue }  // draining: discard
                corked = true
                delegate?.connectionDidRead(UnsafeRawBufferPointer(rebasing: loop.readBuffer[0..<count]))
                loop.bytesRead &+= UInt64(count)
                corked = false
                if state == .open || shutdownAfterFlush { flush() }
            case .wouldBlock:
                if writeWantsRead, state == .open || state == .draining {
                    // The handshake moved on: output waiting for it may go now.
                    writeWantsRead = false
                    flush()
                }
                return
            case .endOfFile:
                peerClosed()
                return
            case .failed(let error):
                // A plain HTTP client was answered in plain text: let the answer arrive (FIN, not RST).
                terminate(.reset(errno: error.errno), abortive: !plainHTTPAnswered)
                return
            }
        }
        // Decrypted bytes OpenSSL already holds make no readiness event: read them in a later turn.
        if let tls, tls.hasPendingBytes { loop.queue.async { [self] in handleReadable() } }
    }

    /// One read: from the socket, or through TLS.
    private func readSome() -> Posix.IOResult {
        guard let tls else { return Posix.read(fd, into: loop.readBuffer) }
        switch tls.read(into: loop.readBuffer) {
        case .bytes(let count):
            return .bytes(count)
        case .wantRead:
            return .wouldBlock
        case .wantWrite:
            readWantsWrite = true
            armWritable()
            return .wouldBlock
        case .closed:
            return .endOfFile
        case .failed(let reason, let plainHTTP):
            tlsFailed(reason, plainHTTP: plainHTTP)
            return .failed(SocketError(call: "SSL_read", errno: EPROTO))
        }
    }

    /// How one write went: the count, or what to wait for.
    private enum SendOutcome { case bytes(Int), wouldBlock, waitForReadable, failed(SocketError) }

    private func sendSome(_ bytes: UnsafeRawBufferPointer) -> SendOutcome {
        guard let tls else {
            guard let base = bytes.baseAddress else { return .bytes(0) }
            var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: base), iov_len: min(bytes.count, Self.writeSlice))
            switch withUnsafePointer(to: &vector, { Posix.send(fd, UnsafeBufferPointer(start: $0, count: 1)) }) {
            case .bytes(let count): return .bytes(count)
            case .wouldBlock, .endOfFile: return .wouldBlock
            case .failed(let error): return .failed(error)
            }
        }
        switch tls.write(bytes) {
        case .bytes(let count): return .bytes(count)
        case .wantWrite: return .wouldBlock
        case .wantRead:
            writeWantsRead = true
            return .waitForReadable
        case .closed:
            return .failed(SocketError(call: "SSL_write", errno: EPIPE))
        case .failed(let reason, let plainHTTP):
            tlsFailed(reason, plainHTTP: plainHTTP)
            return .failed(SocketError(call: "SSL_write", errno: EPROTO))
        }
    }

    private func tlsFailed(_ reason: String, plainHTTP: Bool) {
        if plainHTTP {
            // Plain HTTP sent to a TLS port: a plain answer it can read, then the close. The rest
            // of the request is read first (a little of it, at most), or closing with unread
            // input would reset the connection before the client reads the answer.
            plainHTTPAnswered = true
            for _ in 0..<4 {
                guard case .bytes = Posix.read(fd, into: loop.readBuffer) else { break }
            }
            let body = "this port speaks HTTPS (TLS): use https:// or wss://\n"
            let answer = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
            Posix.sendOnce(fd, Array(answer.utf8))
            shutdown(fd, Int32(SHUT_WR))
        }
        if let report = onTLSFailure {
            onTLSFailure = nil
            report(self, plainHTTP ? "plain HTTP request on a TLS port" : reason)
        }
    }

    /// Stops reading until `resumeReading()`, e.g. while a request waits for its response.
    func pauseReading() {
        guard !readPaused else { return }
        readPaused = true
        updateInterest()
    }

    func resumeReading() {
        guard readPaused else { return }
        readPaused = false
        updateInterest()
        // Bytes OpenSSL already decrypted make no readiness event: read them now.
        if let tls, tls.hasPendingBytes { loop.queue.async { [self] in handleReadable() } }
    }

    // MARK: writing

    /// Queues bytes for the peer. Writes at once when nothing is queued; a peer that lets more than
    /// `maxOutputBytes` pile up (besides the newest message) is cut off.
    func write(_ bytes: [UInt8]) {
        loop.assertOnLoop()
        guard state == .open || state == .connecting, !bytes.isEmpty else { return }
        bytesAccepted &+= UInt64(bytes.count)
        if output.isEmpty, !corked, state == .open {
            guard let written = writeDirect(bytes), written < bytes.count else { return }
            output.append(bytes)
            outputOffset = written
            queuedBytes = bytes.count - written
            largestChunkBytes = bytes.count
        } else {
            if let last = output.indices.last, output[last].count < Self.joinLimit, bytes.count < Self.joinLimit {
                output[last].append(contentsOf: bytes)
                largestChunkBytes = max(largestChunkBytes, output[last].count)
            } else {
                output.append(bytes)
                largestChunkBytes = max(largestChunkBytes, bytes.count)
            }
            queuedBytes += bytes.count
        }
        // While corked the bytes have not been offered to the socket yet: flush() checks then.
        if !corked, overflowing {
            terminate(.outputOverflow, abortive: true)
            return
        }
        if !corked, state == .open { armWritable() }
    }

    private var overflowing: Bool { queuedBytes - largestChunkBytes > maxOutputBytes }

    /// Returns the count written, or nil when the connection failed.
    private func writeDirect(_ bytes: [UInt8]) -> Int? {
        let result = bytes.withUnsafeBytes { sendSome($0) }
        switch result {
        case .bytes(let count): return count
        case .wouldBlock, .waitForReadable: return 0
        case .failed(let error):
            terminate(.reset(errno: error.errno), abortive: true)
            return nil
        }
    }

    private func flush() {
        var budget = Self.writeSlice
        while let first = output.first {
            guard budget > 0 else {
                // More is queued, and the socket may take it: the rest after the loop's other work.
                armWritable()
                return
            }
            let result = first.withUnsafeBytes { raw in
                sendSome(UnsafeRawBufferPointer(rebasing: raw[outputOffset...]))
            }
            switch result {
            case .bytes(let count):
                budget -= count
                outputOffset += count
                queuedBytes -= count
                if outputOffset == first.count {
                    output.removeFirst()
                    outputOffset = 0
                    largestChunkBytes = output.reduce(0) { max($0, $1.count) }
                }
            case .waitForReadable:
                // TLS needs the peer's handshake bytes first: reading resumes the flush.
                if overflowing {
                    terminate(.outputOverflow, abortive: true)
                    return
                }
                disarmWritable()
                return
            case .wouldBlock:
                if overflowing {
                    terminate(.outputOverflow, abortive: true)
                    return
                }
                armWritable()
                return
            case .failed(let error):
                terminate(.reset(errno: error.errno), abortive: true)
                return
            }
        }
        // Drained: give the memory back and stop watching writability.
        output = []
        outputOffset = 0
        queuedBytes = 0
        largestChunkBytes = 0
        disarmWritable()
        if shutdownAfterFlush { halfCloseAndDrain() }
    }


    private func armWritable() {
        guard !wantsWritable else { return }
        wantsWritable = true
        updateInterest()
    }

    private func disarmWritable() {
        guard wantsWritable else { return }
        wantsWritable = false
        updateInterest()
    }

    private func handleWritable() {
        switch state {
        case .connecting:
            let code = Posix.pendingError(fd)
            guard code == 0 else {
                terminate(.connectFailed(errno: code), abortive: true)
                return
            }
            state = .open
            Posix.setNoDelay(fd)
            reading = true
            wantsWritable = false
            updateInterest()
            delegate?.connectionDidConnect()
            if state == .open { flush() }
        case .open, .draining:
            if readWantsWrite {
                readWantsWrite = false
                handleReadable()
                guard state == .open || state == .draining else { return }
            }
            flush()
        case .closed:
            return
        }
    }

    // MARK: closing

    /// Ends the connection. Graceful: queued bytes are sent, then FIN, then reads are drained until
    /// the peer's FIN (so unread input cannot turn our close into a reset). Abort: RST at once.
    func close(_ mode: CloseMode) {
        loop.assertOnLoop()
        switch mode {
        case .abort:
            terminate(.closedByUs, abortive: true)
        case .graceful:
            guard state == .open || state == .connecting else { return }
            state = .draining
            notifyClosed(.closedByUs)
            shutdownAfterFlush = true
            deadline = loop.now() + Connection.flushTimeout
            loop.watchDeadline(self)
            if !corked { flush() }
        }
    }

    private func halfCloseAndDrain() {
        shutdownAfterFlush = false
        tls?.shutdown()  // close_notify, then FIN
        shutdown(fd, Int32(SHUT_WR))
        deadline = loop.now() + Connection.drainTimeout
        loop.watchDeadline(self)
        resumeReading()  // keep reading (and discarding) until EOF or the drain deadline
    }

    private func peerClosed() {
        switch state {
        case .draining:
            terminate(.closedByUs, abortive: false)
        case .open:
            notifyClosed(.peerClosed)
            if pendingOutputBytes > 0 {
                // Give what we already queued a chance to leave; the peer may only have half-closed.
                state = .draining
                shutdownAfterFlush = true
                deadline = loop.now() + Connection.flushTimeout
                loop.watchDeadline(self)
                readPaused = true
                wantsWritable = true
                updateInterest()
            } else {
                terminate(.peerClosed, abortive: false)
            }
        case .connecting, .closed:
            return
        }
    }

    override func deadlineReached(now: UInt64) {
        switch state {
        case .draining:
            terminate(.closedByUs, abortive: false)
        case .open, .connecting:
            delegate?.connectionDeadlineReached(now: now)
        case .closed:
            return
        }
    }

    /// The one place a connection ends: the watch ends at once, and the descriptor is closed at
    /// the end of the loop's turn, so that no code still on the stack can use its number after
    /// another connection has been given it.
    private func terminate(_ reason: CloseReason, abortive: Bool) {
        guard state != .closed else { return }
        if abortive { Posix.setLingerZero(fd) }
        if let token {
            loop.unwatch(fd, token: token)
            self.token = nil
        }
        watchedEvents = 0
        state = .closed
        deadline = .max
        notifyClosed(reason)
        output = []
        outputOffset = 0
        queuedBytes = 0
        largestChunkBytes = 0
        loop.queue.async { [self] in finish() }
    }

    private func finish() {
        tls = nil
        Glibc.close(fd)
        limit?.release(address: peer.host)
        limit = nil
        loop.connections[ObjectIdentifier(self)] = nil
    }

    /// Tells the delegate once, at a safe point: never from inside the delegate's own callback.
    private func notifyClosed(_ reason: CloseReason) {
        guard !closeNotified else { return }
        closeNotified = true
        guard let delegate else { return }
        self.delegate = nil
        loop.queue.async { delegate.connectionDidClose(reason) }
    }
}

extension Connection: EpollWatcher {}
