#ifndef LEASEHOLD_CZLIB_SHIM_H
#define LEASEHOLD_CZLIB_SHIM_H
#include <zlib.h>

// zlib's init entry points are macros; Swift cannot call macros.
static inline int leasehold_deflateInit2(z_streamp strm, int level, int windowBits, int memLevel) {
    return deflateInit2(strm, level, Z_DEFLATED, windowBits, memLevel, Z_DEFAULT_STRATEGY);
}
static inline int leasehold_inflateInit2(z_streamp strm, int windowBits) {
    return inflateInit2(strm, windowBits);
}
#endif
