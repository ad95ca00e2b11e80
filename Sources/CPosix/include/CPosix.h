#ifndef LEASEHOLD_CPOSIX_H
#define LEASEHOLD_CPOSIX_H
#include <sys/socket.h>

// accept4(2) is a GNU extension that Swift's Glibc module does not expose.
int leasehold_accept4(int fd, struct sockaddr *address, socklen_t *length, int flags);

/// pipe2(2) with O_CLOEXEC (GNU; not in Swift's Glibc module): no window in which another
/// thread's child inherits the pipe.
int leasehold_pipe_cloexec(int fds[2]);

#include <spawn.h>
/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34+): the child keeps no descriptor from
/// `lowest` up, whatever the parent inherited without O_CLOEXEC.
int leasehold_spawn_close_from(posix_spawn_file_actions_t *actions, int lowest);
#endif

#ifndef LEASEHOLD_CPOSIX_GUARD_H
#define LEASEHOLD_CPOSIX_GUARD_H
#include <sys/types.h>

/// Starts `argv` (searched on PATH) under a guard process that leads a new process group, and
/// returns the guard's pid (= the group id); -1 with *spawn_errno set when the command cannot be
/// started. The command runs in the guard's group with default signal dispositions and an empty
/// mask. The guard exits the way the command did (same status, or the same signal), and ignores
/// SIGINT/SIGTERM/SIGHUP sent to the group (the command gets its own copy). If the calling
/// *thread* ends (its process killed, even with SIGKILL) while the command runs, the guard sends
/// the group SIGTERM, then SIGKILL after `grace_ms`: a command never outlives its lease holder.
/// Call it from a thread that lives until the guard has been waited for.
pid_t leasehold_spawn_guarded(const char *file, char *const argv[], char *const envp[],
                              int grace_ms, int *spawn_errno);
#endif

/// Bytes in the socket's send queue not yet acknowledged by the peer (SIOCOUTQ); -1 on error.
int leasehold_unacknowledged_bytes(int fd);

#ifndef LEASEHOLD_CPOSIX_SEARCH_H
#define LEASEHOLD_CPOSIX_SEARCH_H
#include <stddef.h>
/// memmem(3) and memrchr(3), GNU extensions that Swift's Glibc module does not expose (the
/// journal reader finds a resource's lines in a chunk of the audit journal with them).
void *leasehold_memmem(const void *haystack, size_t haystack_length, const void *needle, size_t needle_length);
void *leasehold_memrchr(const void *bytes, int byte, size_t length);
#endif

#ifndef LEASEHOLD_CPOSIX_EPOLL_H
#define LEASEHOLD_CPOSIX_EPOLL_H
#include <stdint.h>
#include <sys/epoll.h>
/// epoll is not in Swift's Glibc module. One registration: `events` for `fd`, reported with `token`
/// (EPOLL_CTL_ADD, _MOD or _DEL as `operation`); 0, or -1 with errno.
int leasehold_epoll_control(int epoll, int operation, int fd, uint32_t events, uint64_t token);
#endif

#ifndef LEASEHOLD_CPOSIX_NICE_H
#define LEASEHOLD_CPOSIX_NICE_H
/// The calling thread's nice value (Linux: per thread), and setting it; -1000 when it cannot be
/// read. The usage summaries are built at a low priority on a pooled thread, which gets its
/// old value back afterwards.
int leasehold_thread_nice(void);
int leasehold_set_thread_nice(int value);
#endif
