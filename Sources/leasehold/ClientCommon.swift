import ArgumentParser
import LeaseholdClient
import LeaseholdServer
import Transport
#if canImport(Glibc)
import Glibc
#endif

/// Exit statuses of the client commands (README, "CLI"). `hold` otherwise exits with its
/// command's own status (128+N when the command died of signal N).
enum ExitStatus {
    /// Admin verbs: the server refused the action (unknown resource, not held, invalid inventory).
    static let refused: Int32 = 1
    /// Bad arguments (ArgumentParser's own usage errors use 64 too).
    static let usage: Int32 = 64
    /// The server cannot be reached, refused the connection, or it dropped while waiting.
    static let unavailable: Int32 = 69
    /// Not granted within --wait (or at once, under --wait 0).
    static let waitTimeout: Int32 = 75
    /// `hold`: an admin revoked the lease; the command was stopped.
    static let revoked: Int32 = 76
    /// `hold`: the server connection was lost while the command ran; the command was stopped.
    static let connectionLost: Int32 = 77
    /// The request can never be granted (unknown name or type, more than the inventory has) or was refused as invalid.
    static let unsatisfiable: Int32 = 78
    /// Admin verbs: no token, wrong token, or admin calls disabled on the server.
    static let unauthorized: Int32 = 79
    /// `hold`: the command could not be started (not found: 127, not executable: 126, as shells do).
    static let notFound: Int32 = 127
    static let cannotExecute: Int32 = 126

    static func forError(_ error: LeaseholdError) -> Int32 {
        switch error {
        case .invalidServerURL, .local: return usage
        case .tls, .connectionRefused, .handshakeRejected, .protocolViolation: return unavailable
        case .connectionLost(_, _, let granted): return granted ? connectionLost : unavailable
        case .waitTimeout: return waitTimeout
        case .revoked: return revoked
        case .resumeRefused: return connectionLost
        case .badRequest, .unsatisfiable: return unsatisfiable
        case .noAdminToken: return unauthorized
        case .httpError(_, let status, _):
            switch status {
            case 401, 403: return unauthorized
            case 400, 404, 409: return refused
            default: return unavailable
            }
        }
    }
}

/// `--server`, shared by every client command.
struct ConnectionOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Server address (default: $LEASEHOLD_URL, else \(ServerURL.defaultText)).", valueName: "url"))
    var server: String?

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for the server to answer a connection or an HTTP call.", valueName: "seconds"))
    var connectTimeout: Double = 10

    @Option(name: .long, help: ArgumentHelp("For wss:// and https://: PEM file of the CA certificates to trust (default: $LEASEHOLD_CA_FILE, else the system's trust store).", valueName: "file"))
    var caFile: String?

    @Option(name: .long, help: ArgumentHelp("Client certificate (PEM, chain allowed) for a server that requires one (mutual TLS); with --key.", valueName: "file"))
    var cert: String?

    @Option(name: .long, help: ArgumentHelp("Private key of --cert (PEM).", valueName: "file"))
    var key: String?

    func validate() throws {
        guard connectTimeout > 0, connectTimeout <= 3600 else { throw ValidationError("--connect-timeout must be more than 0 and at most 3600 seconds (got \(connectTimeout))") }
        guard (cert == nil) == (key == nil) else { throw ValidationError("--cert and --key go together") }
    }

    func serverURL() throws -> ServerURL {
        var text = ServerURL.defaultText
        if let server { text = server } else if let value = environment("LEASEHOLD_URL"), !value.isEmpty { text = value }
        do {
            var url = try ServerURL(parsing: text)
            url.trust = TLSClientConfiguration(caFile: caFile ?? environment("LEASEHOLD_CA_FILE").flatMap { $0.isEmpty ? nil : $0 },
                                               certificateFile: cert, keyFile: key)
            return url
        } catch {
            fail(error)
        }
    }
}

func environment(_ name: String) -> String? {
    guard let value = getenv(name) else { return nil }
    return String(cString: value)
}

func writeStderr(_ text: String) {
    var text = text
    text.withUTF8 { buffer in
        var offset = 0
        while offset < buffer.count {
            let written = write(2, buffer.baseAddress.map { $0 + offset }, buffer.count - offset)
            if written < 0, errno == EINTR { continue }
            guard written > 0 else { return }
            offset += written
        }
    }
}

func writeOut(_ text: String) {
    var text = text
    text.withUTF8 { buffer in
        var offset = 0
        while offset < buffer.count {
            let written = write(1, buffer.baseAddress.map { $0 + offset }, buffer.count - offset)
            if written < 0, errno == EINTR { continue }
            guard written > 0 else { return }
            offset += written
        }
    }
}

/// Prints `leasehold: <error>` and exits with the error's status.
func fail(_ error: LeaseholdError) -> Never {
    writeStderr("leasehold: \(error.description)\n")
    exit(ExitStatus.forError(error))
}

/// `--token-file`, else `LEASEHOLD_ADMIN_TOKEN`.
func adminToken(file: String?) -> String? {
    if let file {
        let text: String
        do { text = try readTextFile(file, limit: 64 * 1024) } catch {
            fail(.local("cannot read --token-file \(file): \(error.description). Point it at the file holding the admin token."))
        }
        let token = text.filter { !$0.isWhitespace }
        guard !token.isEmpty else { fail(.local("--token-file \(file) is empty. Put the server's admin token in it.")) }
        return token
    }
    let token = (environment("LEASEHOLD_ADMIN_TOKEN") ?? "").filter { !$0.isWhitespace }
    return token.isEmpty ? nil : token
}
