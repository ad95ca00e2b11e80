// zlib from the system (zlib1g-dev): raw deflate streams for permessage-deflate (RFC 7692).
// deflateInit2 and inflateInit2 are macros Swift cannot call: wrapped here.
#include <zlib.h>

static inline int czlib_deflate_init(z_streamp stream, int level, int windowBits, int memLevel) {
    return deflateInit2(stream, level, Z_DEFLATED, windowBits, memLevel, Z_DEFAULT_STRATEGY);
}

static inline int czlib_inflate_init(z_streamp stream, int windowBits) {
    return inflateInit2(stream, windowBits);
}
