#ifndef LEASEHOLD_COPENSSL_SHIM_H
#define LEASEHOLD_COPENSSL_SHIM_H
#include <openssl/sha.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <openssl/err.h>

// OpenSSL configures these through macros, which Swift cannot call.
static inline long leasehold_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_min_proto_version(ctx, version);
}
static inline long leasehold_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_mode(ctx, mode);
}
#endif
