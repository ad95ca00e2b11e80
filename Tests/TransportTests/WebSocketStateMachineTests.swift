// The connection rules without sockets or clocks: bytes and times in, actions out.
import Testing
@testable import Transport
import WebSocketCodec

@Suite("WebSocket state machine")
struct WebSocketStateMachineTests {
    typealias Machine = WebSocketStateMachine
    static let second: UInt64 = 1_000_000_000

    static func machine(ping: Duration? = .seconds(10), deadAfter: Duration? = .seconds(30),
                        closeTimeout: Duration = .seconds(5)) -> Machine {
        var configuration = WebSocketConfiguration()
        configuration.pingInterval = ping
        configuration.deadAfter = deadAfter
        configuration.closeTimeout = closeTimeout
        return Machine(role: .server, configuration: configuration, now: 0)
    }

    /// A frame as a client sends it: masked.
    static func clientFrame(_ opcode: WebSocketOpcode, _ payload: [UInt8], masked: Bool = true) -> [UInt8] {
        var frame: [UInt8] = []
        payload.withUnsafeBytes {
            WebSocketEncoder.appendFrame(opcode: opcode, payload: $0,
                                         maskingKey: masked ? (1, 2, 3, 4) : nil, into: &frame)
        }
        return frame
    }

    static func receive(_ machine: inout Machine, _ bytes: [UInt8], at now: UInt64) -> [Machine.Actions] {
        bytes.withUnsafeBytes { machine.received($0, now: now) }
        var all: [Machine.Actions] = []
        while let actions = machine.nextEvent() { all.append(actions) }
        return all
    }

    static func idle() -> Machine.OutputProgress { .init(backlog: 0, acknowledged: 0) }

    @Test("messages are delivered, pings answered with their payload, pongs swallowed")
    func messagesAndPings() {
        var machine = Self.machine()
        let bytes = Self.clientFrame(.text, Array("hi".utf8)) + Self.clientFrame(.ping, [7, 8])
            + Self.clientFrame(.pong, [])
        let actions = Self.receive(&machine, bytes, at: 1)
        #expect(actions == [Machine.Actions(deliver: .text(Array("hi".utf8))),
                            Machine.Actions(send: .init(opcode: .pong, payload: [7, 8])),
                            .none])
        #expect(machine.isOpen && machine.end == nil)
    }

    @Test("a peer's close is echoed, TCP closed gracefully, and the end reported once")
    func peerCloses() {
        var machine = Self.machine()
        let close = Self.clientFrame(.close, WebSocketEncoder.closePayload(code: 4001, reason: "bye"))
        let actions = Self.receive(&machine, close + Self.clientFrame(.text, [0x61]), at: 1)
        #expect(actions == [Machine.Actions(
            send: .init(opcode: .close, payload: WebSocketEncoder.closePayload(code: 4001, reason: "")),
            closeTransport: .graceful,
            end: .init(cause: .closedByPeer, code: 4001, reason: "bye"))])
        #expect(machine.end == .closedByPeer && machine.nextDeadline == .max)
        #expect(machine.transportClosed(.peerClosed) == .none)
    }

    @Test("our close: the frame goes out, the end is ours, a late message is dropped, the reply closes TCP")
    func weClose() {
        var machine = Self.machine()
        let actions = machine.close(code: 1000, reason: "done", now: 2 * Self.second)
        #expect(actions == Machine.Actions(
            send: .init(opcode: .close, payload: WebSocketEncoder.closePayload(code: 1000, reason: "done")),
            end: .init(cause: .closedByUs, code: 1000, reason: "done")))
        #expect(!machine.isOpen)
        #expect(machine.nextDeadline == 7 * Self.second)
        #expect(machine.close(code: 1001, reason: "", now: 3 * Self.second) == .none)
        let reply = Self.clientFrame(.text, [0x61]) + Self.clientFrame(.close, [])
        #expect(Self.receive(&machine, reply, at: 3 * Self.second)
                == [.none, Machine.Actions(closeTransport: .graceful)])
    }

    @Test("a peer that never answers our close is cut off at the close timeout")
    func closeTimeout() {
        var machine = Self.machine()
        _ = machine.close(code: 1000, reason: "", now: 0)
        #expect(machine.deadlineReached(now: 4 * Self.second, output: Self.idle) == .none)
        #expect(machine.deadlineReached(now: 5 * Self.second, output: Self.idle)
                == Machine.Actions(closeTransport: .graceful))
        #expect(machine.nextDeadline == .max)
    }

    @Test("a quiet peer is pinged at the interval and dropped as dead once nothing is heard for deadAfter")
    func pingsThenDeadPeer() {
        var machine = Self.machine()
        #expect(machine.nextDeadline == 10 * Self.second)
        #expect(machine.deadlineReached(now: 10 * Self.second, output: Self.idle)
                == Machine.Actions(send: .init(opcode: .ping, payload: [])))
        #expect(machine.nextDeadline == 20 * Self.second)
        #expect(machine.deadlineReached(now: 20 * Self.second, output: Self.idle).send?.opcode == .ping)
        #expect(machine.nextDeadline == 30 * Self.second)
        #expect(machine.deadlineReached(now: 30 * Self.second, output: Self.idle) == Machine.Actions(
            closeTransport: .abort,
            end: .init(cause: .deadPeer, code: 1006, reason: "peer did not answer pings for 30 s")))
        #expect(machine.end == .deadPeer && machine.nextDeadline == .max)
    }

    @Test("anything heard from the peer counts as life")
    func hearingResetsTheClock() {
        var machine = Self.machine()
        _ = machine.deadlineReached(now: 10 * Self.second, output: Self.idle)
        #expect(Self.receive(&machine, Self.clientFrame(.pong, []), at: 25 * Self.second) == [.none])
        #expect(machine.nextDeadline == 35 * Self.second)
        #expect(machine.deadlineReached(now: 30 * Self.second, output: Self.idle) == .none)
        #expect(machine.isOpen)
    }

    @Test("a slow reader whose TCP still acknowledges our backlog lives; once that stops it is dead")
    func slowReader() {
        var machine = Self.machine(ping: nil)
        var progress = Machine.OutputProgress(backlog: 1 << 20, acknowledged: 100)
        #expect(machine.deadlineReached(now: 30 * Self.second, output: { progress }) == .none)
        #expect(machine.nextDeadline == 60 * Self.second)
        progress.acknowledged = 5000
        #expect(machine.deadlineReached(now: 60 * Self.second, output: { progress }) == .none)
        #expect(machine.deadlineReached(now: 90 * Self.second, output: { progress }).end?.cause == .deadPeer)
    }

    @Test("acknowledgements without a backlog (a stopped process's kernel) do not keep a peer alive")
    func acknowledgementsWithoutBacklog() {
        var machine = Self.machine(ping: nil)
        let progress = Machine.OutputProgress(backlog: 0, acknowledged: 1 << 30)
        #expect(machine.deadlineReached(now: 30 * Self.second, output: { progress }).end?.cause == .deadPeer)
    }

    @Test("a peer may ping in bursts up to the rate; past it the connection closes with 1008")
    func pingRate() {
        var configuration = WebSocketConfiguration()
        configuration.maxPingsPerSecond = 3
        var machine = Machine(role: .server, configuration: configuration, now: 0)
        let ping = Self.clientFrame(.ping, [])
        // A burst of three is answered; a fourth in the same instant is one too many.
        let burst = Self.receive(&machine, ping + ping + ping, at: Self.second)
        #expect(burst.map { $0.send?.opcode } == [.pong, .pong, .pong])
        // A third of a second later one more is allowed again.
        #expect(Self.receive(&machine, ping, at: Self.second + Self.second / 3 + 1).first?.send?.opcode == .pong)
        let flood = Self.receive(&machine, ping, at: Self.second + Self.second / 3 + 2)
        #expect(flood.first?.end == .init(cause: .protocolViolation, code: 1008, reason: "more than 3 pings a second"))
        #expect(flood.first?.send?.opcode == .close)
    }

    @Test("a protocol violation closes with the decoder's code and reason")
    func protocolViolation() {
        var machine = Self.machine()
        let actions = Self.receive(&machine, Self.clientFrame(.text, [0x61], masked: false), at: 1)
        #expect(actions.count == 1)
        #expect(actions.first?.send?.opcode == .close)
        #expect(actions.first?.closeTransport == .graceful)
        #expect(actions.first?.end?.cause == .protocolViolation)
        #expect(actions.first?.end?.code == 1002)
    }

    @Test("the application deadline fires once and takes part in nextDeadline")
    func applicationDeadline() {
        var machine = Self.machine()
        machine.applicationDeadline = 4 * Self.second
        #expect(machine.nextDeadline == 4 * Self.second)
        #expect(machine.deadlineReached(now: 4 * Self.second, output: Self.idle)
                == Machine.Actions(applicationDeadlineReached: true))
        #expect(machine.applicationDeadline == .max && machine.nextDeadline == 10 * Self.second)
    }

    @Test("TCP ending under us names the cause: slow reader, reset, or lost; only the first end counts")
    func transportEnds() {
        var overflow = Self.machine()
        #expect(overflow.transportClosed(.outputOverflow).end
                == .init(cause: .slowReader, code: 1006, reason: "peer did not read its messages"))
        var reset = Self.machine()
        #expect(reset.transportClosed(.reset(errno: 104)).end?.reason == "connection reset (errno 104)")
        var aborted = Self.machine()
        #expect(aborted.abort() == Machine.Actions(closeTransport: .abort,
                                                   end: .init(cause: .aborted, code: 1006, reason: "aborted")))
        #expect(aborted.transportClosed(.closedByUs) == .none)
    }
}
