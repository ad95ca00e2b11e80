import Dispatch
import LeaseholdClient
import LeaseholdServer
import Logging
import TransportTesting
import Testing
import Transport
#if canImport(Glibc)
import Glibc
#endif

/// An in-process server on an ephemeral port with a small inventory.
final class InProcessServer: @unchecked Sendable {
    static let token = "test-admin-token"
    let server: LeaseServer
    let url: ServerURL
    let clock: LoopClock
    init(inventory: String = TestFiles.inventory, pingInterval: Duration = .seconds(15), deadAfter: Duration = .seconds(45),
         clock: LoopClock = .system) throws {
        let directory = try TestFiles.makeDirectory()
        defer { TestFiles.remove(directory) }  // read at start; these tests never reload
        let path = directory + "/inventory.yaml"
        try TestFiles.write(inventory, to: path)
        var options = ServerOptions()
        options.listen = ["127.0.0.1:0"]
        options.inventoryPath = path
        options.adminToken = Self.token
        options.loops = 1
        options.pingInterval = pingInterval
        options.deadAfter = deadAfter
        server = try LeaseServer(options: options, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }, clock: clock)
        self.clock = clock
        guard let address = try server.start().first else { throw TestFailure("the server bound nothing") }
        url = ServerURL(host: "127.0.0.1", port: address.port)
    }

    func stop() async {
        let stop = { [server] in
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                server.shutdown { done.resume() }
            }
        }
        if let manual = clock as? ManualClock { await manual.passingTime(during: stop) } else { await stop() }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The next event within `seconds`, or nil. A timeout cancels the stream (AsyncStream ends when a
/// waiting `next()` is cancelled), so use it only where a timeout is a failure.
func nextEvent(_ iterator: inout AsyncStream<LeaseEvent>.Iterator, within seconds: Double = hangGuard) async -> LeaseEvent? {
    let box = IteratorBox(iterator)
    let event = await withTaskGroup(of: LeaseEvent?.self) { group in
        group.addTask { await box.next() }
        group.addTask {
            try? await Task.sleep(for: .seconds(fractional: seconds))
            return nil
        }
        let first = await group.next() ?? nil
        group.cancelAll()
        return first
    }
    iterator = box.iterator
    return event
}

final class IteratorBox: @unchecked Sendable {
    var iterator: AsyncStream<LeaseEvent>.Iterator
    init(_ iterator: AsyncStream<LeaseEvent>.Iterator) { self.iterator = iterator }
    func next() async -> LeaseEvent? { await iterator.next() }
}

@Suite struct LeaseSessionTests {
    @Test func grantsQueuesAndHandsOverOnRelease() async throws {
        let server = try InProcessServer()
        defer { Task { await server.stop() } }
        let first = try await LeaseSession.connect(to: server.url)
        var firstEvents = first.events.makeAsyncIterator()
        first.acquire(AcquireRequest(want: [.type("array", labels: ["proto": "fc"], count: 1)], holder: "first"))
        guard case .granted(let lease)? = await nextEvent(&firstEvents) else {
            Issue.record("the first request was not granted")
            return
        }
        #expect(lease.resources.map(\.name) == ["array-01"])
        #expect(lease.resources.first?.attributes["mgmt"]?.stringValue == "10.0.0.11")

        let second = try await LeaseSession.connect(to: server.url)
        var secondEvents = second.events.makeAsyncIterator()
        second.acquire(AcquireRequest(want: [.name("array-01")], holder: "second"))
        guard case .queued(_, let position, _)? = await nextEvent(&secondEvents) else {
            Issue.record("the second request did not queue")
            return
        }
        #expect(position == 1)

        first.release()
        #expect(await nextEvent(&firstEvents) == .released)
        guard case .granted(let handedOver)? = await nextEvent(&secondEvents) else {
            Issue.record("the second request was not granted after the release")
            return
        }
        #expect(handedOver.resources.first?.epoch == (lease.resources.first?.epoch ?? 0) + 1)
        second.close()
        #expect(await nextEvent(&secondEvents) == .released)
    }

    @Test func waitZeroOnABusyResourceFailsWithWaitTimeout() async throws {
        let server = try InProcessServer()
        defer { Task { await server.stop() } }
        let holder = try await LeaseSession.connect(to: server.url)
        var holderEvents = holder.events.makeAsyncIterator()
        holder.acquire(AcquireRequest(want: [.name("switch-01")]))
        guard case .granted? = await nextEvent(&holderEvents) else { Issue.record("not granted"); return }

        let impatient = try await LeaseSession.connect(to: server.url)
        var events = impatient.events.makeAsyncIterator()
        impatient.acquire(AcquireRequest(want: [.name("switch-01")], wait: 0))
        guard case .failed(.waitTimeout)? = await nextEvent(&events) else { Issue.record("expected wait_timeout"); return }
        #expect(await nextEvent(&events) == nil)  // the stream has ended
        holder.close()
    }

    @Test func theClientAnswersPingsSoAQuietLeaseLives() async throws {
        // The server pings after 1 s of silence and drops peers silent for 3 s, on a clock that
        // moves only when the test says; the client itself never pings here, so only its pongs
        // keep the lease.
        let clock = ManualClock()
        let server = try InProcessServer(pingInterval: .seconds(1), deadAfter: .seconds(3), clock: clock)
        var configuration = ClientConfiguration()
        configuration.pingInterval = .seconds(60)
        configuration.deadAfter = .seconds(120)
        let session = try await LeaseSession.connect(to: server.url, configuration: configuration)
        var events = session.events.makeAsyncIterator()
        session.acquire(AcquireRequest(want: [.name("array-01")]))
        guard case .granted? = await nextEvent(&events) else { Issue.record("not granted"); return }
        for round in 0..<6 {  // twice deadAfter
            let heard = server.server.bytesReceived
            clock.advance(by: .seconds(1))
            // The pong has arrived before time moves on (the client sends nothing else).
            let deadline = ContinuousClock.now + .seconds(60)
            while server.server.bytesReceived == heard, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(server.server.bytesReceived > heard, "no pong in round \(round)")
        }
        #expect(try LeaseholdHTTP(server: server.url).status().resources.first?.state == "held")
        session.release()
        #expect(await nextEvent(&events) == .released)
        await server.stop()
    }

    @Test func unknownResourcesAreUnsatisfiable() async throws {
        let server = try InProcessServer()
        defer { Task { await server.stop() } }
        let session = try await LeaseSession.connect(to: server.url)
        var events = session.events.makeAsyncIterator()
        session.acquire(AcquireRequest(want: [.type("array", labels: [:], count: 9)]))
        guard case .failed(.unsatisfiable)? = await nextEvent(&events) else { Issue.record("expected unsatisfiable"); return }
    }

    @Test func anAdminFreeRevokesTheLease() async throws {
        let server = try InProcessServer()
        defer { Task { await server.stop() } }
        let session = try await LeaseSession.connect(to: server.url)
        var events = session.events.makeAsyncIterator()
        session.acquire(AcquireRequest(want: [.name("array-02")], holder: "victim"))
        guard case .granted(let lease)? = await nextEvent(&events) else { Issue.record("not granted"); return }

        let http = LeaseholdHTTP(server: server.url)
        let status = try http.status()
        #expect(status.resources.first { $0.name == "array-02" }?.holder == "victim")
        #expect(throws: LeaseholdError.noAdminToken) {
            try http.admin(.free, resource: "array-02", reason: "x", token: nil)
        }
        #expect(throws: LeaseholdError.self) {
            try http.admin(.free, resource: "array-02", reason: "x", token: "wrong")
        }
        _ = try http.admin(.free, resource: "array-02", reason: "rack maintenance", token: InProcessServer.token)
        #expect(await nextEvent(&events) == .revoked(lease: lease.id, reason: "rack maintenance"))
        #expect(await nextEvent(&events) == nil)
    }

    @Test func aRefusedConnectionAndARejectedHandshakeAreTypedErrors() async throws {
        let server = try InProcessServer()
        defer { Task { await server.stop() } }
        let closedPort = try ClosedPort()
        do {
            _ = try await LeaseSession.connect(to: ServerURL(host: "127.0.0.1", port: closedPort.port))
            Issue.record("connected to a closed port")
        } catch {
            guard case .connectionRefused = error else { Issue.record("got \(error)"); return }
        }
        do {
            _ = try await LeaseSession.connect(to: ServerURL(host: "127.0.0.1", port: server.url.port, pathPrefix: "/nowhere"))
            Issue.record("upgraded on an unknown path")
        } catch {
            guard case .handshakeRejected(_, let status, _) = error else { Issue.record("got \(error)"); return }
            #expect(status == 404)
        }
        do {
            _ = try await LeaseSession.connect(to: ServerURL(host: "127.0.0.1", port: server.url.port, tls: true))
            Issue.record("connected with TLS")
        } catch {
            #expect(error.description.contains("TLS"))
        }
    }
}

/// A port that nothing listens on: bound, never listened, so connects are refused.
struct ClosedPort: ~Copyable {
    let fd: Int32
    let port: UInt16

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic -> Bool in
                bind(fd, generic, length) == 0 && getsockname(fd, generic, &length) == 0
            }
        }
        guard fd >= 0, bound else { throw TestFailure("cannot bind a port") }
        port = UInt16(bigEndian: address.sin_port)
    }

    deinit { close(fd) }
}
