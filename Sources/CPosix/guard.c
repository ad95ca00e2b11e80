#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "CPosix.h"

// Everything after fork() below runs in a child of a multithreaded process: only
// async-signal-safe calls until execve or _exit.

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

// The guard's life: wait for the command; if the lease holder dies first, stop the group.
static void guard_loop(pid_t holder, pid_t command, int grace_ms, const sigset_t *watched) {
    long long kill_at = -1;
    for (;;) {
        struct timespec tick = {0, 100 * 1000 * 1000};
        int sig = sigtimedwait(watched, NULL, &tick);
        int status;
        pid_t done = waitpid(command, &status, WNOHANG);
        if (done == command && kill_at < 0) {
            if (!WIFSIGNALED(status)) _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
            // Die of the same signal, so the holder sees what the command saw.
            struct rlimit no_core = {0, 0};
            setrlimit(RLIMIT_CORE, &no_core);
            int number = WTERMSIG(status);
            signal(number, SIG_DFL);
            sigset_t only;
            sigemptyset(&only);
            sigaddset(&only, number);
            sigprocmask(SIG_UNBLOCK, &only, NULL);
            raise(number);
            _exit(128 + number);
        }
        if (kill_at < 0 && (sig == SIGUSR1 || getppid() != holder)) {
            // The holder is gone, and with it the lease: the hardware is someone else's now.
            kill(0, SIGTERM);  // the whole group; SIGTERM is blocked here, so not us
            kill_at = now_ms() + grace_ms;
        }
        // After the holder died, whatever is left of the group (the command's own children too)
        // gets SIGKILL once the grace period is over.
        if (kill_at >= 0 && now_ms() >= kill_at) {
            kill(0, SIGKILL);  // ends the guard too
        }
    }
}

pid_t leasehold_spawn_guarded(const char *file, char *const argv[], char *const envp[],
                              int grace_ms, int *spawn_errno) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) {
        *spawn_errno = errno;
        return -1;
    }
    sigset_t watched, old_mask;
    sigemptyset(&watched);
    int blocked[] = {SIGUSR1, SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT};
    for (unsigned i = 0; i < sizeof blocked / sizeof blocked[0]; i++) sigaddset(&watched, blocked[i]);
    // Block before fork so the guard cannot be hit by a signal before it is ready.
    pthread_sigmask(SIG_BLOCK, &watched, &old_mask);
    pid_t holder = getpid();
    pid_t guard = fork();
    if (guard < 0) {
        *spawn_errno = errno;
        pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
        close(report[0]);
        close(report[1]);
        return -1;
    }
    if (guard == 0) {
        close(report[0]);
        // The guard keeps none of hold's descriptors, its lease connection above all: when hold
        // dies the server sees the connection end at once, and the lease's grace (hold asks for
        // more than its SIGTERM-to-SIGKILL time) keeps the resources out of reach while the
        // guard stops the command.
        if (report[1] != 3) {
            if (dup3(report[1], 3, O_CLOEXEC) < 0) _exit(127);
            report[1] = 3;
        }
        close_range(4, ~0U, 0);
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGUSR1);
        for (int number = 1; number < NSIG; number++) {
            if (number != SIGKILL && number != SIGSTOP) signal(number, SIG_DFL);
        }
        pid_t command = fork();
        if (command < 0) {
            int error = errno;
            (void)!write(report[1], &error, sizeof error);
            _exit(127);
        }
        if (command == 0) {
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
            execvpe(file, argv, envp);
            int error = errno;
            (void)!write(report[1], &error, sizeof error);
            _exit(127);
        }
        close(report[1]);
        guard_loop(holder, command, grace_ms, &watched);
        _exit(1);
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    // Both processes in the group from the start, so a signal to the group reaches the command.
    setpgid(guard, guard);
    close(report[1]);
    int error = 0;
    ssize_t got;
    do {
        got = read(report[0], &error, sizeof error);
    } while (got < 0 && errno == EINTR);
    close(report[0]);
    if (got == (ssize_t)sizeof error) {
        // The command could not be started: reap the guard and say why.
        int status;
        while (waitpid(guard, &status, 0) < 0 && errno == EINTR) {}
        *spawn_errno = error;
        return -1;
    }
    return guard;
}
