// TLS on OpenSSL 3 for the transport: contexts (server, reloadable; client) and one session per
// connection over its non-blocking socket. `Connection` drives the session; the layers above
// see plaintext only and do not know whether a connection is plain or TLS.
import COpenSSL
#if canImport(Glibc)
import Glibc
#endif

public struct TLSError: Error, Equatable, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }

    /// `what`, then OpenSSL's reasons from this thread's error queue (which it empties).
    static func openSSL(_ what: String) -> TLSError {
        let reasons = TLSSession.drainErrors()
        return TLSError(reasons.isEmpty ? what : "\(what): \(reasons)")
    }
}

/// A server's certificate, key and (for mutual TLS) the CAs client certificates must chain to.
/// `reload()` re-reads the files: new connections use the new context, open ones keep theirs.
public final class TLSServerContext: @unchecked Sendable {
    public let certificatePath: String
    public let keyPath: String
    public let clientCAPath: String?
    private let current: Locked<OpaquePointer>

    public init(certificate: String, key: String, clientCA: String? = nil) throws(TLSError) {
        certificatePath = certificate
        keyPath = key
        clientCAPath = clientCA
        current = Locked(try Self.makeContext(certificate: certificate, key: key, clientCA: clientCA))
    }

    deinit {
        current.withLock { SSL_CTX_free($0) }
    }

    /// Re-reads certificate, key and client CAs. On an error nothing changes.
    public func reload() throws(TLSError) {
        let fresh = try Self.makeContext(certificate: certificatePath, key: keyPath, clientCA: clientCAPath)
        let old = current.withLock { context -> OpaquePointer in
            let old = context
            context = fresh
            return old
        }
        // Sessions hold their own reference: connections made with the old context go on.
        SSL_CTX_free(old)
    }

    /// The subject of the certificate now in use (for logs).
    public var certificateSubject: String {
        current.withLock { context in
            guard let certificate = SSL_CTX_get0_certificate(context) else { return "" }
            return TLSSession.name(X509_get_subject_name(certificate))
        }
    }

    func makeSession(fd: Int32) -> TLSSession? {
        current.withLock { context in TLSSession(context: context, fd: fd, serverName: nil) }
    }

    static func makeContext(certificate: String, key: String, clientCA: String?) throws(TLSError) -> OpaquePointer {
        ERR_clear_error()
        guard let context = SSL_CTX_new(TLS_server_method()) else { throw .openSSL("cannot create a TLS context") }
        var ok = false
        defer { if !ok { SSL_CTX_free(context) } }
        try configureCommon(context)
        _ = leasehold_ssl_ctx_no_resumption(context)
        guard SSL_CTX_use_certificate_chain_file(context, certificate) == 1 else {
            throw .openSSL("cannot load the certificate (chain) from \(certificate)")
        }
        guard SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM) == 1 else {
            throw .openSSL("cannot load the private key from \(key), or it does not match the certificate")
        }
        guard SSL_CTX_check_private_key(context) == 1 else {
            throw .openSSL("the key in \(key) does not match the certificate in \(certificate)")
        }
        if let clientCA {
            guard SSL_CTX_load_verify_locations(context, clientCA, nil) == 1 else {
                throw .openSSL("cannot load client CA certificates from \(clientCA)")
            }
            if let names = SSL_load_client_CA_file(clientCA) { SSL_CTX_set_client_CA_list(context, names) }
            SSL_CTX_set_verify(context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
        }
        ok = true
        return context
    }

    /// TLS 1.2 and 1.3 only; for 1.2 forward-secret AEAD suites only (1.3's are all modern).
    static func configureCommon(_ context: OpaquePointer) throws(TLSError) {
        guard leasehold_ssl_ctx_set_min_tls12(context) == 1 else { throw .openSSL("cannot require TLS 1.2") }
        _ = leasehold_ssl_ctx_set_modes(context)
        _ = leasehold_ssl_ctx_set_options(context)
        _ = leasehold_ssl_ctx_ignore_unexpected_eof(context)
        // ChaCha20-Poly1305 first: its per-connection state is a fraction of AES-GCM's (key
        // schedule and GHASH tables, both directions), and a lease connection is mostly idle.
        guard SSL_CTX_set_cipher_list(context, "ECDHE+CHACHA20:ECDHE+AESGCM") == 1 else {
            throw .openSSL("cannot set the TLS 1.2 cipher list")
        }
        guard SSL_CTX_set_ciphersuites(context, "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384") == 1 else {
            throw .openSSL("cannot set the TLS 1.3 cipher suites")
        }
    }
}

/// What a client trusts and shows.
public struct TLSClientConfiguration: Sendable, Equatable {
    /// PEM file of CA certificates to trust; nil: the system's trust store.
    public var caFile: String?
    /// Client certificate (chain) and key, for servers that require one (mutual TLS).
    public var certificateFile: String?
    public var keyFile: String?

    public init(caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
    }
}

/// A client context: verifies the server's chain and its name.
public final class TLSClientContext: @unchecked Sendable {
    private let context: OpaquePointer

    public init(_ configuration: TLSClientConfiguration = TLSClientConfiguration()) throws(TLSError) {
        ERR_clear_error()
        guard let context = SSL_CTX_new(TLS_client_method()) else { throw .openSSL("cannot create a TLS context") }
        var ok = false
        defer { if !ok { SSL_CTX_free(context) } }
        try TLSServerContext.configureCommon(context)
        if let caFile = configuration.caFile {
            guard SSL_CTX_load_verify_locations(context, caFile, nil) == 1 else {
                throw .openSSL("cannot load CA certificates from \(caFile)")
            }
        } else {
            guard SSL_CTX_set_default_verify_paths(context) == 1 else { throw .openSSL("cannot load the system trust store") }
        }
        switch (configuration.certificateFile, configuration.keyFile) {
        case (let certificate?, let key?):
            guard SSL_CTX_use_certificate_chain_file(context, certificate) == 1 else {
                throw .openSSL("cannot load the client certificate from \(certificate)")
            }
            guard SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM) == 1,
                  SSL_CTX_check_private_key(context) == 1 else {
                throw .openSSL("cannot load the client key from \(key) (or it does not match the certificate)")
            }
        case (nil, nil):
            break
        default:
            throw TLSError("a client certificate needs both a certificate file and a key file")
        }
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
        ok = true
        self.context = context
    }

    deinit { SSL_CTX_free(context) }

    func makeSession(fd: Int32, serverName: String) -> TLSSession? {
        TLSSession(context: context, fd: fd, serverName: serverName)
    }
}

/// One TLS connection over a non-blocking socket. Made where the socket is accepted, then
/// confined to the connection's loop.
final class TLSSession: @unchecked Sendable {
    enum Outcome: Equatable {
        case bytes(Int)
        /// Come back when the socket is readable / writable.
        case wantRead, wantWrite
        /// The peer's close_notify, or TCP's end.
        case closed
        /// A TLS or socket error; `plainHTTP` when the peer spoke plain HTTP to a TLS port.
        case failed(String, plainHTTP: Bool)
    }

    private let ssl: OpaquePointer
    private var shutdownSent = false

    /// A server session (`serverName` nil) or a client one that checks the server's name.
    init?(context: OpaquePointer, fd: Int32, serverName: String?) {
        guard let ssl = SSL_new(context) else { return nil }
        self.ssl = ssl
        guard SSL_set_fd(ssl, fd) == 1 else { return nil }
        if let serverName {
            SSL_set_connect_state(ssl)
            // SNI for names only; the certificate is checked against the name or the IP address.
            if serverName.contains(where: { $0.isLetter }) && !serverName.contains(":") {
                _ = leasehold_ssl_set_sni(ssl, serverName)
                _ = SSL_set1_host(ssl, serverName)
            } else if let parameters = SSL_get0_param(ssl) {
                _ = X509_VERIFY_PARAM_set1_ip_asc(parameters, serverName)
            }
        } else {
            SSL_set_accept_state(ssl)
        }
    }

    deinit { SSL_free(ssl) }

    /// Decrypted bytes into `buffer` (runs the handshake first when it is not done).
    func read(into buffer: UnsafeMutableRawBufferPointer) -> Outcome {
        ERR_clear_error()
        let count = SSL_read(ssl, buffer.baseAddress, Int32(min(buffer.count, Int(Int32.max))))
        if count > 0 { return .bytes(Int(count)) }
        return outcome(of: count)
    }

    func write(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        guard bytes.count > 0 else { return .bytes(0) }
        ERR_clear_error()
        let count = SSL_write(ssl, bytes.baseAddress, Int32(min(bytes.count, 1 << 30)))
        if count > 0 { return .bytes(Int(count)) }
        return outcome(of: count)
    }

    /// Decrypted bytes OpenSSL holds that readiness will not announce.
    var hasPendingBytes: Bool { SSL_pending(ssl) > 0 }

    /// Sends close_notify once, without waiting for the peer's.
    func shutdown() {
        guard !shutdownSent, SSL_is_init_finished(ssl) == 1 else { return }
        shutdownSent = true
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
    }

    /// The verified client certificate's subject (mutual TLS), e.g. `CN=alice,O=lab`.
    var peerSubject: String? {
        guard let certificate = SSL_get1_peer_certificate(ssl) else { return nil }
        defer { X509_free(certificate) }
        return Self.name(X509_get_subject_name(certificate))
    }

    /// The subject's common name, else the whole subject.
    var peerCommonName: String? {
        guard let certificate = SSL_get1_peer_certificate(ssl) else { return nil }
        defer { X509_free(certificate) }
        guard let name = X509_get_subject_name(certificate) else { return nil }
        let index = X509_NAME_get_index_by_NID(name, NID_commonName, -1)
        guard index >= 0, let entry = X509_NAME_get_entry(name, index), let data = X509_NAME_ENTRY_get_data(entry) else {
            return Self.name(name)
        }
        var utf8: UnsafeMutablePointer<UInt8>?
        let length = ASN1_STRING_to_UTF8(&utf8, data)
        guard length >= 0, let utf8 else { return Self.name(name) }
        defer { CRYPTO_free(utf8, #fileID, #line) }
        return String(decoding: UnsafeBufferPointer(start: utf8, count: Int(length)), as: UTF8.self)
    }

    /// The negotiated protocol, e.g. `TLSv1.3`.
    var protocolVersion: String { String(cString: SSL_get_version(ssl)) }

    private func outcome(of result: Int32) -> Outcome {
        let code = SSL_get_error(ssl, result)
        switch code {
        case SSL_ERROR_WANT_READ:
            return .wantRead
        case SSL_ERROR_WANT_WRITE:
            return .wantWrite
        case SSL_ERROR_ZERO_RETURN:
            return .closed
        case SSL_ERROR_SYSCALL:
            let saved = errno
            let reasons = Self.drainErrors()
            if saved == 0 && reasons.isEmpty { return .closed }
            return .failed(reasons.isEmpty ? String(cString: strerror(saved)) : reasons, plainHTTP: false)
        default:
            let first = ERR_peek_error()
            let plainHTTP = leasehold_err_is_http_request(first) != 0
            let reasons = Self.drainErrors()
            var message = reasons.isEmpty ? "TLS error \(code)" : reasons
            let verify = SSL_get_verify_result(ssl)
            if verify != X509_V_OK {
                message += " (certificate: \(String(cString: X509_verify_cert_error_string(verify))))"
            }
            return .failed(message, plainHTTP: plainHTTP)
        }
    }

    /// OpenSSL's error queue as "reason; reason", emptied.
    static func drainErrors() -> String {
        var reasons: [String] = []
        while true {
            let code = ERR_get_error()
            guard code != 0 else { break }
            // A system error's code has no reason string of its own; the queue names it next.
            if let reason = ERR_reason_error_string(code) { reasons.append(String(cString: reason)) }
        }
        return reasons.joined(separator: "; ")
    }

    static func name(_ name: OpaquePointer?) -> String {
        guard let name, let bio = BIO_new(BIO_s_mem()) else { return "" }
        defer { BIO_free(bio) }
        guard leasehold_x509_name_print(bio, name) >= 0 else { return "" }
        var text = [UInt8](repeating: 0, count: 1024)
        let count = BIO_read(bio, &text, Int32(text.count))
        return count > 0 ? String(decoding: text[0..<Int(count)], as: UTF8.self) : ""
    }
}

/// A client TLS session for callers that do their own waiting (poll(2) on a non-blocking
/// socket), like the blocking HTTP client of the CLI.
public final class TLSClientStream: @unchecked Sendable {
    public enum Step: Equatable {
        case bytes(Int)
        /// Wait until the socket is readable / writable, then call again.
        case wantRead, wantWrite
        case closed
        case failed(String)
    }

    private let session: TLSSession

    init(session: TLSSession) { self.session = session }

    public func read(into buffer: UnsafeMutableRawBufferPointer) -> Step { step(session.read(into: buffer)) }
    public func write(_ bytes: UnsafeRawBufferPointer) -> Step { step(session.write(bytes)) }
    /// close_notify, without waiting for the server's.
    public func shutdown() { session.shutdown() }

    private func step(_ outcome: TLSSession.Outcome) -> Step {
        switch outcome {
        case .bytes(let count): return .bytes(count)
        case .wantRead: return .wantRead
        case .wantWrite: return .wantWrite
        case .closed: return .closed
        case .failed(let reason, _): return .failed(reason)
        }
    }
}

extension TLSClientContext {
    /// A session over the connected socket `fd` that checks the certificate names `serverName`.
    public func stream(fd: Int32, serverName: String) -> TLSClientStream? {
        makeSession(fd: fd, serverName: serverName).map(TLSClientStream.init)
    }
}
