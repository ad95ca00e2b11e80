import Dispatch
import CPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Counts open connections (or any other slots) across all loops, in all and per client
/// address, so that a server refuses new ones past its limits and one address cannot take them all.
public final class ConnectionLimit: Sendable {
    public let maximum: Int
    /// At most this many from one address (`Int.max`: no such limit).
    public let perAddress: Int
    /// Addresses the per-address limit does not apply to (trusted proxies, whose one address
    /// stands for every client behind them).
    public let exempt: [AddressRange]
    private let open = Atomic<Int>(0)
    private let byAddress = Locked<[String: Int]>([:])

    public enum Refusal: Sendable, Equatable {
        case total(Int)
        case perAddress(String, Int)
    }

    public init(maximum: Int, perAddress: Int = .max, exempt: [AddressRange] = []) {
        self.maximum = maximum
        self.perAddress = perAddress
        self.exempt = exempt
    }

    private func isCounted(_ address: String) -> Bool {
        perAddress != .max && !exempt.contains { $0.contains(address) }
    }

    public var current: Int { open.load(ordering: .relaxed) }

    /// Takes a slot for `address` (a host, without port), or says which limit is full.
    public func tryAcquire(address: String) -> Refusal? {
        let now = open.wrappingAdd(1, ordering: .relaxed).newValue
        if now > maximum {
            open.wrappingSubtract(1, ordering: .relaxed)
            return .total(maximum)
        }
        guard isCounted(address) else { return nil }
        let admitted = byAddress.withLock { counts -> Bool in
            let count = counts[address, default: 0]
            guard count < perAddress else { return false }
            counts[address] = count + 1
            return true
        }
        if !admitted {
            open.wrappingSubtract(1, ordering: .relaxed)
            return .perAddress(address, perAddress)
        }
        return nil
    }

    /// Gives back a slot that `tryAcquire(address:)` took.
    public func release(address: String) {
        open.wrappingSubtract(1, ordering: .relaxed)
        guard isCounted(address) else { return }
        byAddress.withLock { counts in
            let count = counts[address, default: 1] - 1
            counts[address] = count > 0 ? count : nil
        }
    }
}

/// A non-blocking listening socket watched by every event loop of a group (with
/// `EPOLLEXCLUSIVE`, so a new connection wakes one loop, not all). The loop that accepts a
/// connection keeps it: no thread hop between accept and the first read. Accepts are handed to
/// `onAccept`, a bounded number per wake-up; when the process runs out of descriptors that loop
/// stops watching for a moment instead of spinning.
final class Listener: @unchecked Sendable {
    let fd: Int32
    let address: SocketAddress
    private let loops: [EventLoop]
    private let onAccept: (Int32, SocketAddress, EventLoop) -> Void
    private let onError: (SocketError) -> Void

    /// The listener's registration with one loop; touched only on that loop.
    private final class Watch: EpollWatcher, @unchecked Sendable {
        unowned let listener: Listener
        unowned let loop: EventLoop
        var token: UInt64?
        var stopped = false

        init(listener: Listener, loop: EventLoop) {
            self.listener = listener
            self.loop = loop
        }

        func start() {
            guard !stopped, token == nil else { return }
            token = loop.watch(listener.fd, events: EPOLLIN.rawValue | EPOLLEXCLUSIVE.rawValue, by: self)
        }

        func stop() {
            if let token { loop.unwatch(listener.fd, token: token) }
            token = nil
        }

        func epollEvents(_ events: UInt32) {
            guard listener.acceptPending(on: loop) else { return }
            // Out of descriptors: the pending connection stays in the backlog; try again shortly.
            stop()
            loop.queue.asyncAfter(deadline: .now() + .milliseconds(100)) { [self] in start() }
        }
    }

    private var watches: [Watch] = []

    convenience init(address: SocketAddress, backlog: Int32, loops: [EventLoop],
                     onAccept: @escaping (Int32, SocketAddress, EventLoop) -> Void,
                     onError: @escaping (SocketError) -> Void) throws(SocketError) {
        let fd = try Posix.makeListeningSocket(address: address, backlog: backlog)
        self.init(listening: fd, address: Posix.localAddress(of: fd) ?? address, loops: loops,
                  onAccept: onAccept, onError: onError)
    }

    /// Takes over a socket that is already listening (socket activation: systemd passes it).
    convenience init(adopting fd: Int32, loops: [EventLoop],
                     onAccept: @escaping (Int32, SocketAddress, EventLoop) -> Void,
                     onError: @escaping (SocketError) -> Void) throws(SocketError) {
        try Posix.checkListeningStreamSocket(fd)
        Posix.makeNonBlockingAndCloseOnExec(fd)
        guard let address = Posix.localAddress(of: fd) else { throw .lastError("getsockname on descriptor \(fd)") }
        self.init(listening: fd, address: address, loops: loops, onAccept: onAccept, onError: onError)
    }

    private init(listening fd: Int32, address: SocketAddress, loops: [EventLoop],
                 onAccept: @escaping (Int32, SocketAddress, EventLoop) -> Void,
                 onError: @escaping (SocketError) -> Void) {
        self.fd = fd
        self.address = address
        self.loops = loops
        self.onAccept = onAccept
        self.onError = onError
        watches = loops.map { Watch(listener: self, loop: $0) }
        for watch in watches { watch.loop.execute { watch.start() } }
    }

    /// Accepts what is pending; true when the process is out of descriptors (or memory).
    private func acceptPending(on loop: EventLoop) -> Bool {
        for _ in 0..<64 {
            switch Posix.accept(fd) {
            case .accepted(let client, let peer):
                onAccept(client, peer, loop)
            case .wouldBlock:
                return false
            case .failed(let error):
                onError(error)
                return error.errno == EMFILE || error.errno == ENFILE || error.errno == ENOBUFS || error.errno == ENOMEM
            }
        }
        return false
    }

    /// Stops accepting and closes the socket. Not on one of the loops' queues.
    func stop() {
        for watch in watches {
            watch.loop.queue.sync {
                watch.stopped = true
                watch.stop()
            }
        }
        Glibc.close(fd)
    }
}
