// TLS in the transport: certificates made at test time with `openssl req`, our own client and
// server over TLS, refusals, reloads.
import Foundation
import Testing
import Transport

/// A self-signed certificate for localhost and 127.0.0.1, made by the openssl command.
struct TestCertificate {
    let directory: String
    var certificate: String { directory + "/cert.pem" }
    var key: String { directory + "/key.pem" }

    init(commonName: String = "localhost") throws {
        directory = NSTemporaryDirectory() + "leasehold-tls-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                             "-keyout", directory + "/key.pem", "-out", directory + "/cert.pem", "-days", "2",
                             "-subj", "/CN=\(commonName)", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestClientError("openssl req failed") }
    }
}

extension TransportIntegration {
    @Suite("TLS")
    struct TLSTests {
        @Test("our client and server speak wss://: text, 300 KB binary (many records), close 1000")
        func echoOverTLS() async throws {
            let certificate = try TestCertificate()
            let server = try TestServer(tls: TLSServerContext(certificate: certificate.certificate, key: certificate.key))
            let group = makeClientGroup()
            let client = ClientHandler()
            let trust = try TLSClientContext(TLSClientConfiguration(caFile: certificate.certificate))
            for host in ["localhost", "127.0.0.1"] {
                let socket = try await connectClient(host: host, port: server.port, loop: group.next(), tls: trust,
                                                     handler: client).get()
                socket.loop.execute {
                    socket.send(text: "over TLS to \(host)")
                    socket.send(binary: [UInt8](repeating: 7, count: 300_000))
                }
                #expect(await eventually { client.log.texts.contains("over TLS to \(host)") })
                #expect(await eventually { client.log.all.contains(.binary(ObjectIdentifier(socket), 300_000)) })
                socket.loop.execute { socket.close(code: 1000) }
            }
            #expect(await eventually { server.log.closes.map(\.code) == [1000, 1000] })
            await server.shutdown()
        }

        @Test("a client that does not trust the certificate fails with OpenSSL's reason")
        func untrusted() async throws {
            let certificate = try TestCertificate()
            let server = try TestServer(tls: TLSServerContext(certificate: certificate.certificate, key: certificate.key))
            let other = try TestCertificate()
            let trust = try TLSClientContext(TLSClientConfiguration(caFile: other.certificate))
            let result = await connectClient(port: server.port, loop: makeClientGroup().next(), tls: trust, handler: ClientHandler())
            guard case .failure(.tlsFailed(let message)) = result else {
                Issue.record("expected a TLS failure, got \(result)")
                return
            }
            #expect(message.contains("certificate verify failed"))
            await server.shutdown()
        }

        @Test("plain HTTP on a TLS port gets a plain 400, and TLS still works afterwards")
        func plainHTTP() async throws {
            let certificate = try TestCertificate()
            let server = try TestServer(tls: TLSServerContext(certificate: certificate.certificate, key: certificate.key))
            let socket = try await TestSocket(port: server.port)
            try await socket.send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            let answer = try await socket.readHTTPResponse()
            #expect(answer.status == 400)
            #expect(answer.bodyText.contains("HTTPS"))
            let trust = try TLSClientContext(TLSClientConfiguration(caFile: certificate.certificate))
            let client = ClientHandler()
            let tlsSocket = try await connectClient(port: server.port, loop: makeClientGroup().next(), tls: trust, handler: client).get()
            tlsSocket.loop.execute { tlsSocket.send(text: "still serving") }
            #expect(await eventually { client.log.texts == ["still serving"] })
            await server.shutdown()
        }

        @Test("reload swaps the certificate; bad files are refused with a reason and change nothing")
        func reload() throws {
            let first = try TestCertificate(commonName: "first")
            let context = try TLSServerContext(certificate: first.certificate, key: first.key)
            #expect(context.certificateSubject == "CN=first")
            let second = try TestCertificate(commonName: "second")
            try FileManager.default.removeItem(atPath: first.certificate)
            try FileManager.default.removeItem(atPath: first.key)
            try FileManager.default.copyItem(atPath: second.certificate, toPath: first.certificate)
            try FileManager.default.copyItem(atPath: second.key, toPath: first.key)
            try context.reload()
            #expect(context.certificateSubject == "CN=second")
            try "not a key".write(toFile: first.key, atomically: true, encoding: .utf8)
            #expect(throws: TLSError.self) { try context.reload() }
            #expect(context.certificateSubject == "CN=second")
        }

        @Test("missing files and a key of another certificate are clear errors")
        func badFiles() throws {
            let one = try TestCertificate()
            let two = try TestCertificate()
            #expect(throws: TLSError.self) { try TLSServerContext(certificate: "/nonexistent.pem", key: one.key) }
            do {
                _ = try TLSServerContext(certificate: one.certificate, key: two.key)
                Issue.record("a mismatched key was accepted")
            } catch {
                #expect(error.message.contains("key values mismatch"))
            }
            #expect(throws: TLSError.self) { try TLSClientContext(TLSClientConfiguration(certificateFile: one.certificate)) }
        }
    }
}
