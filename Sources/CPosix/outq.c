#include <sys/ioctl.h>
#include <linux/sockios.h>
#include "CPosix.h"

int leasehold_unacknowledged_bytes(int fd) {
    int queued = 0;
    return ioctl(fd, SIOCOUTQ, &queued) == 0 ? queued : -1;
}
