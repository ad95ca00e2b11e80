// OpenSSL (libssl, libcrypto) as the server uses it: digests today, TLS next.
#include <openssl/sha.h>
#include <openssl/crypto.h>
