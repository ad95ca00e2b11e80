#ifndef LEASEHOLD_CPOSIX_H
#define LEASEHOLD_CPOSIX_H
#include <sys/socket.h>

// accept4(2) is a GNU extension that Swift's Glibc module does not expose.
int leasehold_accept4(int fd, struct sockaddr *address, socklen_t *length, int flags);
#endif
