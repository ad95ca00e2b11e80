// OpenSSL (libssl, libcrypto) as leasehold uses it: digests, and TLS in the transport.
// Macros Swift cannot call are wrapped as static inline functions.
#include <openssl/sha.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static inline int leasehold_ssl_ctx_set_min_tls12(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
}

static inline long leasehold_ssl_ctx_set_modes(SSL_CTX *ctx) {
    // Partial writes from a moving buffer (ours compacts), and idle connections give back
    // OpenSSL's read and write buffers.
    return SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                                 | SSL_MODE_RELEASE_BUFFERS);
}

static inline long leasehold_ssl_ctx_set_options(SSL_CTX *ctx) {
    return (long)SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE
                                          | SSL_OP_NO_COMPRESSION);
}

static inline int leasehold_ssl_set_sni(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

/// The reason of an OpenSSL error code, e.g. "http request" for plain HTTP on a TLS port.
static inline int leasehold_err_is_http_request(unsigned long code) {
    return ERR_GET_LIB(code) == ERR_LIB_SSL && ERR_GET_REASON(code) == SSL_R_HTTP_REQUEST;
}

static inline long leasehold_ssl_ctx_ignore_unexpected_eof(SSL_CTX *ctx) {
    // A peer that closes TCP without close_notify is an end of stream, not an error.
    return (long)SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
}

static inline int leasehold_x509_name_print(BIO *bio, const X509_NAME *name) {
    return X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253);
}

static inline long leasehold_ssl_ctx_no_resumption(SSL_CTX *ctx) {
    // No session cache and no tickets. Our clients (the CLI, LeaseholdClient, the Python client)
    // never resume a session, and a lease connection lives for a whole test run; a ticket would
    // cost every handshake its encryption and leave the handshake buffer that wrote it allocated
    // for the connection's life (about 300 bytes), a cached session far more.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    return (long)SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET) && SSL_CTX_set_num_tickets(ctx, 0);
}
