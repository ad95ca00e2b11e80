#define _GNU_SOURCE
#include <errno.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "CPosix.h"

int leasehold_thread_nice(void) {
#ifdef __linux__
    errno = 0;
    int value = getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid));
    return (value == -1 && errno != 0) ? -1000 : value;
#else
    return -1000;
#endif
}

int leasehold_set_thread_nice(int value) {
#ifdef __linux__
    return setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), value);
#else
    (void)value;
    return -1;
#endif
}
