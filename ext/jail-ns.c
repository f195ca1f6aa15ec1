/* PID namespaces for jobs: jail_fork, its namespace init, jail_fork_pid1.
 * See jail.h for the contract and docs/sandbox.md for why this shape. */
#define _GNU_SOURCE
#include "jail.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

/* The kernel's struct clone_args (linux/sched.h clashes with sched.h). */
struct clone3_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

#define MAX_INITS 512

struct init_entry {
    pid_t job, init;
    int reaped, status;
    struct rusage ru;
};

static struct init_entry inits[MAX_INITS];
static int own_pidns = -1;

static int own_pidns_fd(void)
{
    if (own_pidns < 0)
        own_pidns = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
    return own_pidns;
}

/* Reap what has ended; 1 when children are left (alive). */
static int reap_orphans(void)
{
    pid_t p;
    while ((p = waitpid(-1, NULL, WNOHANG | __WALL)) > 0) {
    }
    return p == 0;
}

void jail_namespace_init(int sync_fd, int linger)
{
    sigset_t chld;
    char c;

    /* jail_fork's init dies with its caller (the jail): the job with it.
     * A Maxima child's outlives its mother, as the child itself does (the
     * server's cleanup ends them). */
    if (!linger)
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    prctl(PR_SET_NAME, "mathrun-init", 0, 0, 0);
    if (sync_fd > 0)
        syscall(SYS_close_range, 0U, (unsigned)sync_fd - 1, 0U);
    syscall(SYS_close_range, (unsigned)sync_fd + 1, ~0U, 0U);
    signal(SIGCHLD, SIG_DFL);
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_SETMASK, &chld, NULL);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    while (read(sync_fd, &c, 1) < 0 && errno == EINTR) {
    }
    close(sync_fd); /* end of file: the job was forked, or never will be */
    int pidfd = (int)syscall(SYS_pidfd_open, 2, 0);
    int job_done = pidfd < 0, left;
    while (sfd >= 0) {
        left = reap_orphans();
        if (job_done && (!linger || !left))
            break;
        struct pollfd p[2] = {{sfd, POLLIN, 0}, {job_done ? -1 : pidfd, POLLIN, 0}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            job_done = 1;
        struct signalfd_siginfo si;
        while (read(sfd, &si, sizeof si) > 0) {
        }
    }
    _exit(reap_orphans() ? 1 : 0);
}

static void remember(struct init_entry *e, int status, const struct rusage *ru)
{
    e->reaped = 1;
    e->status = status;
    e->ru = *ru;
}

/* Reap the inits that ended without anyone asking (a caller that never
 * calls jail_reap_init), keeping what they left for a later ask. */
static void sweep_inits(void)
{
    for (int i = 0; i < MAX_INITS; i++) {
        struct init_entry *e = &inits[i];
        int st;
        struct rusage ru;
        if (e->init > 0 && !e->reaped && wait4(e->init, &st, WNOHANG | __WCLONE, &ru) == e->init)
            remember(e, st, &ru);
    }
}

static struct init_entry *free_entry(void)
{
    struct init_entry *oldest = NULL;
    for (int i = 0; i < MAX_INITS; i++) {
        if (inits[i].init <= 0)
            return &inits[i];
        if (inits[i].reaped && !oldest)
            oldest = &inits[i];
    }
    return oldest; /* a reaped one nobody asked about: forgotten */
}

static struct init_entry *entry_of(pid_t job)
{
    for (int i = 0; i < MAX_INITS; i++)
        if (inits[i].init > 0 && inits[i].job == job)
            return &inits[i];
    return NULL;
}

static void discard_init(pid_t init)
{
    kill(init, SIGKILL);
    while (waitpid(init, NULL, __WCLONE) < 0 && errno == EINTR) {
    }
}

pid_t jail_fork(const struct jail_config *cfg)
{
    if (cfg->userns)
        return jail_fork_userns(cfg); /* jail.c: the init is the clone itself */
    if (!cfg->pidns)
        return fork();
    sweep_inits();
    struct init_entry *slot = free_entry();
    int own = own_pidns_fd(), sync[2], pidfd = -1;
    if (!slot) {
        errno = EAGAIN;
        return -1;
    }
    if (own < 0 || pipe2(sync, O_CLOEXEC) < 0)
        return -1;
    struct clone3_args args = {.flags = CLONE_NEWPID | CLONE_PIDFD, .pidfd = (uintptr_t)&pidfd};
    pid_t init = (pid_t)syscall(SYS_clone3, &args, sizeof args);
    if (init == 0) {
        close(sync[1]);
        jail_namespace_init(sync[0], 0);
    }
    close(sync[0]);
    if (init < 0) {
        close(sync[1]);
        return -1;
    }
    pid_t job = -1;
    int saved = 0;
    if (setns(pidfd, CLONE_NEWPID) == 0) {
        job = fork();
        saved = errno;
        if (job == 0) {
            close(sync[1]);
            close(pidfd);
            return 0;
        }
        /* Children in the wrong namespace from now on: refuse to go on. */
        if (setns(own, CLONE_NEWPID) < 0)
            abort();
    } else {
        saved = errno;
    }
    close(sync[1]); /* the init may look for its job now */
    close(pidfd);
    if (job < 0) {
        discard_init(init);
        errno = saved;
        return -1;
    }
    memset(slot, 0, sizeof *slot);
    slot->job = job;
    slot->init = init;
    return job;
}

int jail_reap_init(pid_t job, struct rusage *ru)
{
    struct init_entry *e = entry_of(job);
    if (!e)
        return -1;
    if (!e->reaped) {
        int st;
        struct rusage r;
        pid_t p;
        while ((p = wait4(e->init, &st, __WCLONE, &r)) < 0 && errno == EINTR) {
        }
        if (p != e->init)
            memset(&r, 0, sizeof r), st = 0;
        remember(e, st, &r);
    }
    if (ru) {
        timeradd(&ru->ru_utime, &e->ru.ru_utime, &ru->ru_utime);
        timeradd(&ru->ru_stime, &e->ru.ru_stime, &ru->ru_stime);
        if (e->ru.ru_maxrss > ru->ru_maxrss)
            ru->ru_maxrss = e->ru.ru_maxrss;
    }
    int left = WIFEXITED(e->status) && WEXITSTATUS(e->status) == 1;
    e->init = 0;
    return left;
}

pid_t jail_init_of(pid_t job)
{
    struct init_entry *e = entry_of(job);
    return e && !e->reaped ? e->init : -1;
}

/* For the Maxima mother: its init is exec'ed (posix_spawn: vfork, no copy
 * of the mother's page tables) as PID 1 of a fresh namespace, then the
 * child is forked into it as PID 2. */
pid_t jail_fork_with_init(const char *init_path)
{
    int own = own_pidns_fd(), sync[2], saved;
    pid_t init, pid = -1;
    if (own < 0 || pipe2(sync, O_CLOEXEC) < 0)
        return -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sync[0], 0);
    char *argv[] = {(char *)init_path, "nsinit", NULL}, *envp[] = {NULL};
    if (unshare(CLONE_NEWPID) < 0) {
        saved = errno;
        goto out;
    }
    saved = posix_spawn(&init, init_path, &fa, NULL, argv, envp);
    if (setns(own, CLONE_NEWPID) < 0)
        abort();
    if (saved != 0)
        goto out;
    int pidfd = (int)syscall(SYS_pidfd_open, init, 0);
    if (pidfd < 0 || setns(pidfd, CLONE_NEWPID) < 0) {
        saved = errno;
        kill(init, SIGKILL);
    } else {
        pid = fork();
        saved = errno;
        if (pid == 0) {
            close(sync[0]);
            close(sync[1]);
            close(pidfd);
            posix_spawn_file_actions_destroy(&fa);
            return 0;
        }
        if (setns(own, CLONE_NEWPID) < 0)
            abort();
    }
    if (pidfd >= 0)
        close(pidfd);
out:
    close(sync[0]);
    close(sync[1]); /* the init may look for its job now */
    posix_spawn_file_actions_destroy(&fa);
    errno = saved;
    return pid;
}

pid_t jail_fork_pid1(void)
{
    int own = own_pidns_fd();
    if (own < 0 || unshare(CLONE_NEWPID) < 0)
        return -1;
    pid_t pid = fork();
    int saved = errno;
    if (pid != 0 && setns(own, CLONE_NEWPID) < 0)
        abort();
    errno = saved;
    return pid;
}
