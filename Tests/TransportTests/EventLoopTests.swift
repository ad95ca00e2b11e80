// The event loop's own machinery: its wait for readiness and its timer, on the real clock.
import CPosix
import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Transport

@Suite("Event loop")
struct EventLoopTests {
    /// Records each time its deadline is reached, with the loop's `now`.
    final class Owner: DeadlineOwner, @unchecked Sendable {
        let due: UInt64
        let reached = Locked<[UInt64]>([])
        init(due: UInt64) {
            self.due = due
            super.init()
            deadline = due
        }
        override func deadlineReached(now: UInt64) {
            reached.withLock { $0.append(now) }
            deadline = .max
        }
    }

    final class Reader: EpollWatcher, @unchecked Sendable {
        let fd: Int32
        let bytes = Locked(0)
        init(fd: Int32) { self.fd = fd }
        func epollEvents(_ events: UInt32) {
            var buffer = [UInt8](repeating: 0, count: 64)
            let count = read(fd, &buffer, buffer.count)
            if count > 0 { bytes.withLock { $0 += count } }
        }
    }

    @Test("deadlines due within a few milliseconds of each other are reached in one timer firing")
    func nearbyDeadlinesShareAFiring() async {
        let loop = EventLoop(index: 0, label: "event-loop-tests.timer")
        let start = loop.now() + 20_000_000
        // 100 deadlines 400 µs apart: 40 ms, ten of the timer's 4 ms ticks.
        let owners = (0..<100).map { index in
            Owner(due: start + UInt64(index) * 400_000)
        }
        loop.queue.sync { for owner in owners { loop.watchDeadline(owner) } }
        #expect(await eventually { owners.allSatisfy { !$0.reached.withLock { $0.isEmpty } } })
        var firings = Set<UInt64>()
        for owner in owners {
            let reached = owner.reached.withLock { $0 }
            #expect(reached.count == 1)
            if let now = reached.first {
                #expect(now >= owner.due)  // never early
                firings.insert(now)
            }
        }
        // One firing per tick the deadlines span (a busy machine may merge more); a timer armed
        // for each deadline would fire about once a millisecond.
        #expect(firings.count <= 11, "\(firings.count) firings")
    }

    @Test("a loop that runs out of events hands the wait back to Dispatch, and still hears the next one")
    func anIdleLoopStopsPolling() async throws {
        let loop = EventLoop(index: 0, label: "event-loop-tests.poll")
        var fds: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        let reader = Reader(fd: fds[0])
        let token = loop.queue.sync { loop.watch(fds[0], events: EPOLLIN.rawValue, by: reader) }
        #expect(token != nil)
        for round in 1...2 {
            var byte: UInt8 = 1
            #expect(write(fds[1], &byte, 1) == 1)
            #expect(await eventually { reader.bytes.withLock { $0 } == round })
            #expect(await eventually { loop.queue.sync { !loop.pollingItself } })
        }
        if let token { loop.queue.sync { loop.unwatch(fds[0], token: token) } }
    }

    @Test("a long list is worked through a few items per turn, each batch behind the loop's other work")
    func forEachTakesTurns() {
        let loop = EventLoop(index: 0, label: "event-loop-tests.batches")
        let order = Locked<[String]>([])
        loop.queue.sync {
            loop.forEach(Array(0..<20)[...], perTurn: 8) { item in order.withLock { $0.append("\(item)") } }
            // Queued after the first batch: the rest must wait behind it.
            loop.execute { order.withLock { $0.append("other work") } }
        }
        loop.queue.sync {}  // the first batch and the other work
        loop.queue.sync {}  // the second batch, queued by the first behind the other work
        loop.queue.sync {}  // the third
        let expected = (0..<8).map(String.init) + ["other work"] + (8..<20).map(String.init)
        #expect(order.withLock { $0 } == expected)
    }
}
