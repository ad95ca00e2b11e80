#include <stddef.h>
#include <sys/epoll.h>

// The first `needle` in `haystack` (memmem, a GNU extension Swift's Glibc module leaves out).
const void *bench_find(const void *haystack, size_t length, const void *needle, size_t needle_length);
