import Dispatch
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

/// A non-blocking listening socket whose accepts are handed to `onAccept`, a bounded number per
/// wake-up. When the process runs out of descriptors it pauses instead of spinning.
final class Listener: @unchecked Sendable {
    let fd: Int32
    let address: SocketAddress
    private let source: DispatchSourceRead
    private let queue: DispatchQueue
    private let onAccept: (Int32, SocketAddress) -> Void
    private let onError: (SocketError) -> Void
    private var paused = false

    convenience init(address: SocketAddress, backlog: Int32, queue: DispatchQueue,
                     onAccept: @escaping (Int32, SocketAddress) -> Void,
                     onError: @escaping (SocketError) -> Void) throws(SocketError) {
        let fd = try Posix.makeListeningSocket(address: address, backlog: backlog)
        self.init(listening: fd, address: Posix.localAddress(of: fd) ?? address, queue: queue,
                  onAccept: onAccept, onError: onError)
    }

    /// Takes over a socket that is already listening (socket activation: systemd passes it).
    convenience init(adopting fd: Int32, queue: DispatchQueue,
                     onAccept: @escaping (Int32, SocketAddress) -> Void,
                     onError: @escaping (SocketError) -> Void) throws(SocketError) {
        try Posix.checkListeningStreamSocket(fd)
        Posix.makeNonBlockingAndCloseOnExec(fd)
        guard let address = Posix.localAddress(of: fd) else { throw .lastError("getsockname on descriptor \(fd)") }
        self.init(listening: fd, address: address, queue: queue, onAccept: onAccept, onError: onError)
    }

    private init(listening fd: Int32, address: SocketAddress, queue: DispatchQueue,
                 onAccept: @escaping (Int32, SocketAddress) -> Void,
                 onError: @escaping (SocketError) -> Void) {
        self.fd = fd
        self.address = address
        self.queue = queue
        self.onAccept = onAccept
        self.onError = onError
        source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        let fd = self.fd
        source.setCancelHandler { Glibc.close(fd) }
        source.setEventHandler { [unowned self] in self.acceptPending() }
        source.activate()
    }

    private func acceptPending() {
        for _ in 0..<64 {
            switch Posix.accept(fd) {
            case .accepted(let client, let peer):
                onAccept(client, peer)
            case .wouldBlock:
                return
            case .failed(let error):
                onError(error)
                if error.errno == EMFILE || error.errno == ENFILE || error.errno == ENOBUFS || error.errno == ENOMEM {
                    // The pending connection stays in the backlog; try again shortly.
                    source.suspend()
                    paused = true
                    queue.asyncAfter(deadline: .now() + .milliseconds(100)) { [self] in
                        if paused { paused = false; source.resume() }
                    }
                }
                return
            }
        }
    }

    func stop() {
        source.cancel()
        if paused { paused = false; source.resume() }
    }
}
