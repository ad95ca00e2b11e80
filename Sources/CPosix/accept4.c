#define _GNU_SOURCE
#include <sys/socket.h>
#include "CPosix.h"

int leasehold_accept4(int fd, struct sockaddr *address, socklen_t *length, int flags) {
    return accept4(fd, address, length, flags);
}

#include <fcntl.h>
#include <unistd.h>

int leasehold_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

#include <spawn.h>

int leasehold_spawn_close_from(posix_spawn_file_actions_t *actions, int lowest) {
    return posix_spawn_file_actions_addclosefrom_np(actions, lowest);
}
