// One Connection over a socketpair: no listener, no TCP, no HTTP; the other end is the test's.
import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Transport

@Suite("Connection over a socketpair")
struct ConnectionTests {
    /// What the connection told its delegate.
    final class Recorder: ConnectionDelegate, @unchecked Sendable {
        let received = Locked<[UInt8]>([])
        let closes = Locked<[Connection.CloseReason]>([])

        func connectionDidRead(_ bytes: UnsafeRawBufferPointer) {
            received.withLock { $0.append(contentsOf: bytes) }
        }
        func connectionDidClose(_ reason: Connection.CloseReason) { closes.withLock { $0.append(reason) } }
        func connectionDeadlineReached(now: UInt64) {}
        func connectionDidConnect() {}
    }

    /// Connections hold their loop unowned: it must outlive every one of them, as in a server.
    static let loop = EventLoop(index: 0, label: "connection-tests")

    /// A connection on the tests' loop over one end of a socketpair, and the other end.
    struct Pair {
        let loop: EventLoop
        let connection: Connection
        let recorder = Recorder()
        let peer: TestSocket

        init(maxOutputBytes: Int = 1 << 20, kernelBufferBytes: Int32 = 16 * 1024) throws {
            var fds: [Int32] = [-1, -1]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
                throw TestClientError("socketpair: errno \(errno)")
            }
            _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
            // Small kernel buffers, so a peer that does not read makes output queue up here quickly.
            var size = kernelBufferBytes
            setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fds[1], SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            let loop = ConnectionTests.loop
            let peerAddress = try SocketAddress(parsing: "127.0.0.1:1")
            let recorder = self.recorder
            connection = loop.queue.sync {
                let connection = Connection(acceptedFD: fds[0], peer: peerAddress, loop: loop, maxOutputBytes: maxOutputBytes)
                connection.delegate = recorder
                return connection
            }
            self.loop = loop
            peer = TestSocket(connectedFD: fds[1])
        }

        /// Read on the connection's loop, where it is kept.
        var pendingOutputBytes: Int {
            let connection = connection
            return loop.queue.sync { connection.pendingOutputBytes }
        }

        func onLoop(_ body: @escaping @Sendable (Connection) -> Void) {
            let connection = connection
            loop.queue.sync { body(connection) }
        }
    }

    static func pattern(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7) } }

    @Test("bytes go both ways, in order, even when the output must wait for the peer to read")
    func bytesBothWays() async throws {
        let pair = try Pair()
        try await pair.peer.send(Array("hello".utf8))
        #expect(await eventually { pair.recorder.received.withLock { $0 } == Array("hello".utf8) })
        // Far more than the kernel buffers hold: most of it queues in the connection first.
        let big = Self.pattern(600_000)
        pair.onLoop { $0.write(big) }
        try await pair.peer.fill(to: big.count)
        #expect(pair.peer.take(big.count) == big)
        #expect(await eventually { pair.pendingOutputBytes == 0 })
        #expect(pair.recorder.closes.withLock { $0 }.isEmpty)
        pair.onLoop { $0.close(.abort) }
    }

    @Test("one message bigger than the output bound still goes out whole, in order with small ones around it")
    func oneBigMessagePassesTheBound() async throws {
        let pair = try Pair(maxOutputBytes: 64 * 1024)
        let big = Self.pattern(1_000_000)
        pair.onLoop { connection in
            connection.write([1, 2, 3])
            connection.write(big)
            connection.write([4, 5])
            connection.write([6])
        }
        try await pair.peer.fill(to: big.count + 6)
        #expect(pair.peer.take(3) == [1, 2, 3])
        #expect(pair.peer.take(big.count) == big)
        #expect(pair.peer.take(3) == [4, 5, 6])
        #expect(await eventually { pair.pendingOutputBytes == 0 })
        #expect(pair.recorder.closes.withLock { $0 }.isEmpty)
        // A second big one while the first still waits for a peer that reads nothing is too much.
        pair.onLoop { connection in
            connection.write(big)
            connection.write(big)
        }
        #expect(await eventually { pair.recorder.closes.withLock { $0 } == [.outputOverflow] })
    }

    @Test("one turn of the loop writes at most a slice to one socket; the rest follows in later turns")
    func oneTurnWritesOneSlice() async throws {
        // Kernel buffers far bigger than a slice (Linux caps them at twice wmem_max).
        let pair = try Pair(maxOutputBytes: 8 << 20, kernelBufferBytes: 4 << 20)
        let big = Self.pattern(1_000_000)
        let connection = pair.connection
        let pendingAfterTheTurn = pair.loop.queue.sync {
            connection.write(big)
            return connection.pendingOutputBytes
        }
        #expect(pendingAfterTheTurn < big.count, "the write did not start")
        #expect(pendingAfterTheTurn >= big.count - Connection.writeSlice, "\(big.count - pendingAfterTheTurn) bytes in one turn")
        try await pair.peer.fill(to: big.count)
        #expect(pair.peer.take(big.count) == big)
        #expect(await eventually { pair.pendingOutputBytes == 0 })
        pair.onLoop { $0.close(.abort) }
    }

    @Test("a graceful close sends what is queued, then end of stream, and tells the delegate once")
    func gracefulCloseDrains() async throws {
        let pair = try Pair()
        let big = Self.pattern(300_000)
        pair.onLoop { connection in
            connection.write(big)
            connection.close(.graceful)
            connection.close(.graceful)
        }
        #expect(try await pair.peer.readUntilEnd() == .endOfFile)
        #expect(pair.peer.pending == big)
        #expect(pair.recorder.closes.withLock { $0 } == [.closedByUs])
    }

    @Test("the peer ending its stream is reported as peerClosed")
    func peerEndsTheStream() async throws {
        let pair = try Pair()
        try await pair.peer.send(Array("last words".utf8))
        pair.peer.shutdownWrite()
        #expect(await eventually { pair.recorder.closes.withLock { $0 } == [.peerClosed] })
        #expect(pair.recorder.received.withLock { $0 } == Array("last words".utf8))
    }

    @Test("a peer that reads nothing while output piles up past the bound is cut off")
    func outputOverflow() async throws {
        let pair = try Pair(maxOutputBytes: 64 * 1024)
        pair.onLoop { connection in
            for _ in 0..<20 { connection.write(Self.pattern(16 * 1024)) }
        }
        #expect(await eventually { pair.recorder.closes.withLock { $0 } == [.outputOverflow] })
        // Whatever the peer reads now, the stream ends: the connection let go of the socket.
        while try await pair.peer.readOnce() == nil {}
        pair.onLoop { $0.write([1, 2, 3]) }  // a write after the end is ignored, not a crash
        #expect(pair.recorder.closes.withLock { $0 }.count == 1)
    }
}
