// leasehold-echo: a WebSocket echo server on leasehold's own transport. Every path upgrades and
// every text and binary message is sent back as it came. It serves conformance suites
// (Autobahn|Testsuite) and transport benchmarks, and shows how to use `Transport` as a library.
import Dispatch
import HTTPCodec
import Transport
#if canImport(Glibc)
import Glibc
#endif

final class Echo: WebSocketHandler, HTTPRequestHandler {
    func handle(_ request: HTTPRequest, responder: HTTPResponder) {
        responder.upgradeToWebSocket(handler: self)
    }

    func webSocket(_ socket: WebSocketConnection, didReceiveText text: [UInt8]) {
        socket.send(text: text)
    }

    func webSocket(_ socket: WebSocketConnection, didReceiveBinary data: [UInt8]) {
        socket.send(binary: data)
    }

    func webSocketDidClose(_ socket: WebSocketConnection, code: UInt16, reason: String) {}
}

func fail(_ message: String) -> Never {
    FileHandleStderr.write("leasehold-echo: \(message)\n")
    exit(2)
}

enum FileHandleStderr {
    static func write(_ text: String, fd: Int32 = 2) {
        var text = text
        text.withUTF8 { _ = Glibc.write(fd, $0.baseAddress, $0.count) }
    }
}

let usage = """
    usage: leasehold-echo [--listen HOST:PORT]... [--listen-tls HOST:PORT --tls-cert FILE --tls-key FILE]
                          [--max-message-size BYTES] [--loops N] [--compression on|off]
      Echoes every WebSocket text and binary message on any path. Default --listen 127.0.0.1:9001.
      --compression: accept permessage-deflate (RFC 7692) when a client offers it (default on).
    """
var listen: [String] = []
var listenTLS: [String] = []
var tlsCertificate: String?
var tlsKey: String?
var configuration = HTTPServerConfiguration()
configuration.webSocket.maxMessageSize = 64 << 20  // Autobahn sends 16 MiB messages
configuration.maxOutputBytes = 80 << 20
var loops = 2
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    switch argument {
    case "--listen":
        guard let value = arguments.popFirst() else { fail("--listen needs HOST:PORT") }
        listen.append(value)
    case "--max-message-size":
        guard let value = arguments.popFirst().flatMap({ Int($0) }), value > 0 else { fail("--max-message-size needs a positive number") }
        configuration.webSocket.maxMessageSize = value
    case "--loops":
        guard let value = arguments.popFirst().flatMap({ Int($0) }), (1...64).contains(value) else { fail("--loops needs 1-64") }
        loops = value
    case "--listen-tls":
        guard let value = arguments.popFirst() else { fail("--listen-tls needs HOST:PORT") }
        listenTLS.append(value)
    case "--tls-cert":
        guard let value = arguments.popFirst() else { fail("--tls-cert needs a PEM file") }
        tlsCertificate = value
    case "--tls-key":
        guard let value = arguments.popFirst() else { fail("--tls-key needs a PEM file") }
        tlsKey = value
    case "--compression":
        switch arguments.popFirst() {
        case "on": configuration.webSocket.compression = .default
        case "off": configuration.webSocket.compression = nil
        default: fail("--compression needs on or off")
        }
    case "-h", "--help":
        FileHandleStderr.write(usage + "\n", fd: 1)
        exit(0)
    default:
        fail("unknown argument '\(argument)'\n\(usage)")
    }
}
if listen.isEmpty && listenTLS.isEmpty { listen = ["127.0.0.1:9001"] }
var tls: TLSServerContext?
if !listenTLS.isEmpty {
    guard let tlsCertificate, let tlsKey else { fail("--listen-tls needs --tls-cert and --tls-key") }
    do {
        tls = try TLSServerContext(certificate: tlsCertificate, key: tlsKey)
    } catch {
        fail("TLS: \(error)")
    }
}

signal(SIGPIPE, SIG_IGN)  // a closed stdout must not stop the server; sockets use MSG_NOSIGNAL
let group = EventLoopGroup(count: loops, label: "echo.loop")
let echo = Echo()
let server = HTTPServer(group: group, configuration: configuration, handler: echo,
                        onProblem: { FileHandleStderr.write("leasehold-echo: \($0)\n") })
for text in listen {
    do {
        let address = try SocketAddress(parsing: text)
        let bound = try server.listen(on: address)
        FileHandleStderr.write("leasehold-echo listening on \(bound)\n", fd: 1)
    } catch {
        fail("cannot listen on \(text): \(error)")
    }
}
for text in listenTLS {
    do {
        let address = try SocketAddress(parsing: text)
        let bound = try server.listen(on: address, tls: tls)
        FileHandleStderr.write("leasehold-echo listening on \(bound) (TLS)\n", fd: 1)
    } catch {
        fail("cannot listen on \(text): \(error)")
    }
}

signal(SIGTERM, SIG_IGN)
signal(SIGINT, SIG_IGN)
var signalSources: [DispatchSourceSignal] = []
for signalNumber in [SIGTERM, SIGINT] {
    let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .main)
    source.setEventHandler {
        server.stopAccepting()
        server.closeAllConnections(code: 1001, reason: "server shutting down", timeout: .seconds(2)) { exit(0) }
    }
    source.activate()
    signalSources.append(source)
}
dispatchMain()
