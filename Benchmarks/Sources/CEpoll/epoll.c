// epoll is not in Swift's Glibc module; this target exposes <sys/epoll.h>, and memmem.
#define _GNU_SOURCE
#include <string.h>
#include "CEpoll.h"

const void *bench_find(const void *haystack, size_t length, const void *needle, size_t needle_length) {
    return memmem(haystack, length, needle, needle_length);
}
