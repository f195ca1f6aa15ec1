/* The per-slot keeper (spawn server, root mode with --keeper): one long-lived
 * process per job user, started at the slot's first job, that already sits
 * in the slot's cgroups and network namespace and is PID 1 of its own PID
 * and mount namespaces (with a /proc of it).  A job then costs one fork of
 * the keeper, the uid switch, seccomp and exec: no cgroup join (which waits
 * for an RCU grace period on cgroup v1) and no namespace made per job.
 *
 * The spawn server sends the keeper the job's spawn frame with four fds
 * (stdin, stdout, stderr, exec-error pipe), and a fifth, the workspace's
 * mount cloned with open_tree, when the slot's workspace is not the one the
 * keeper has mounted (its first job, or a workspace remade); the keeper
 * mounts that workspace and its tmp/ as the private /tmp, /var/tmp,
 * /dev/shm and /run/lock and keeps them for the slot's next jobs (the
 * sandbox empties a workspace between jobs), forks the job and answers
 * with its pidfd.  When the job's main process ends, the keeper kills
 * everything else in its namespace (kill(-1) from PID 1), reaps, and sends
 * the wait status, rusage and whether anything was left.
 * This file is the keeper's side; spawn-keepers.c the server's. */
#define _GNU_SOURCE
#include "spawn-keeper.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *private_dirs[] = {"/tmp", "/var/tmp", "/dev/shm", "/run/lock", NULL};

/* ---- messages on the keeper's socket (SOCK_SEQPACKET) ---------------------- */
int keeper_send(int sock, const void *data, size_t len, const int *fds, int nfds)
{
    union {
        char buf[CMSG_SPACE(KEEPER_FDS * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {(void *)data, len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    ssize_t r;
    while ((r = sendmsg(sock, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR) {
    }
    return r == (ssize_t)len ? 0 : -1;
}

/* One message; its fds into `fds` (up to `max`, the rest closed).  Returns
 * its length, 0 at end of file, -1 on error. */
ssize_t keeper_recv(int sock, void *buf, size_t size, int *fds, int max, int *nfds)
{
    union {
        char buf[CMSG_SPACE(KEEPER_FDS * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {buf, size};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    ssize_t got;
    while ((got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {
    }
    *nfds = 0;
    for (struct cmsghdr *c = got >= 0 ? CMSG_FIRSTHDR(&msg) : NULL; c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (*nfds < max)
                fds[(*nfds)++] = fd;
            else
                close(fd);
        }
    }
    return got;
}

/* ---- inside the keeper ----------------------------------------------------- */
static int write_text(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* The copies of the mounts below the job roots' parent (every slot's
 * workspace mounted then, of this server and of others, their namespace
 * files): detached, so that this namespace holds none of them alive. */
static void detach_job_mounts(const char *dir)
{
    char top[4096], line[8192], point[4096];
    snprintf(top, sizeof top, "%s", dir);
    for (int up = 0; up < 3; up++) /* dir = ROOTS/jobs/slot/work: ROOTS */
        if (strrchr(top, '/') > top)
            *strrchr(top, '/') = 0;
    size_t n = strlen(top);
    if (n < 2)
        return;
    for (int round = 0; round < 8; round++) { /* (stacked mounts: one per round) */
        FILE *f = fopen("/proc/self/mountinfo", "re");
        int found = 0;
        while (f && fgets(line, sizeof line, f))
            if (sscanf(line, "%*s %*s %*s %*s %4095s", point) == 1 && strncmp(point, top, n) == 0 && point[n] == '/'
                && umount2(point, MNT_DETACH) == 0)
                found = 1;
        if (f)
            fclose(f);
        if (!found)
            break;
    }
}

/* The slot's cgroups, network namespace, mount namespace and /proc, once. */
static int keeper_setup(const struct jail_config *cfg)
{
    char path[4096];
    for (int i = 0; i < cfg->ncgroups; i++) {
        snprintf(path, sizeof path, "%s/cgroup.procs", cfg->cgroups[i]);
        if (write_text(path, "0\n") < 0)
            return -1;
    }
    write_text("/proc/self/oom_score_adj", "-1000\n"); /* the OOM killer takes the job, not us */
    if (cfg->netns) {
        int fd = open(cfg->netns, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWNET) < 0)
            return -1;
        close(fd);
    } else if (cfg->unshare_net && unshare(CLONE_NEWNET) < 0) {
        return -1;
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
        return -1;
    detach_job_mounts(cfg->dir);
    return mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible");
}

/* The root the slot's workspace is mounted at in this namespace ("": none
 * yet).  It stays mounted from job to job: the spawn server sends a new
 * clone only when the host's workspace is another file system than the one
 * mounted here (remade after a cleanup that had to unmount it). */
static char mounted_root[4096];

static void unmount_job(void)
{
    for (int i = 0; private_dirs[i]; i++)
        umount2(private_dirs[i], MNT_DETACH);
    if (*mounted_root)
        umount2(mounted_root, MNT_DETACH);
    *mounted_root = 0;
}

/* The job's workspace at its own path, and its tmp/ over the shared
 * writable directories: `tree` (a detached clone of the host's mount)
 * replaces what is mounted; -1: what is mounted is that workspace still. */
static int mount_job(const struct jail_config *cfg, int tree)
{
    char root[4096];
    snprintf(root, sizeof root, "%s", cfg->dir);
    char *slash = strrchr(root, '/');
    if (!slash || slash == root)
        return -1;
    *slash = 0;
    if (tree < 0)
        return *mounted_root && strcmp(root, mounted_root) == 0 ? 0 : -1;
    unmount_job();
    if (syscall(SYS_move_mount, tree, "", AT_FDCWD, root, 0x4 /* MOVE_MOUNT_F_EMPTY_PATH */) < 0)
        return -1;
    snprintf(mounted_root, sizeof mounted_root, "%s", root);
    for (int i = 0; private_dirs[i]; i++)
        if (access(private_dirs[i], F_OK) == 0 && mount(cfg->tmp, private_dirs[i], NULL, MS_BIND, NULL) < 0) {
            unmount_job();
            return -1;
        }
    return 0;
}

/* The job, between the keeper's fork and exec. */
static void keeper_child(struct spawn_request *rq, const int *fds)
{
    int report[2];
    sigset_t none;
    if (dup2(fds[0], 0) < 0 || dup2(fds[1], 1) < 0 || dup2(fds[2], 2) < 0)
        _exit(126);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    struct jail_config cfg = rq->cfg; /* the slot's parts are the keeper's already */
    cfg.ncgroups = 0;
    cfg.tmp = NULL;
    cfg.pidns = 0;
    cfg.netns = NULL;
    cfg.unshare_net = 0;
    if (unshare(CLONE_NEWIPC) < 0 || jail_enter(&cfg) < 0) {
        report[0] = 1;
        report[1] = errno;
        if (write(fds[3], report, sizeof report) < 0) {}
        _exit(126);
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    extern char **environ;
    environ = rq->env;
    execvp(rq->argv[0], rq->argv);
    report[0] = 2;
    report[1] = errno;
    fprintf(stderr, "%s: exec of '%s' failed (%s)\n", rq->argv[0], rq->argv[0], strerror(errno));
    if (write(fds[3], report, sizeof report) < 0) {}
    _exit(127);
}

/* The main process ended: kill and reap the rest of the namespace. */
static void keeper_end_job(int sock, pid_t main_pid, const struct rusage *before)
{
    struct keeper_end end;
    struct rusage ru, after;
    pid_t p;
    memset(&end, 0, sizeof end);
    /* Orphans are reaped as they end: a zombie would hold a pid of the job's. */
    while ((p = wait4(-1, &end.status, 0, &ru)) != main_pid)
        if (p < 0 && errno != EINTR)
            break;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    end.leftover = kill(-1, SIGKILL) == 0;
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {
    }
    getrusage(RUSAGE_CHILDREN, &after);
    timersub(&after.ru_utime, &before->ru_utime, &end.ru.ru_utime);
    timersub(&after.ru_stime, &before->ru_stime, &end.ru.ru_stime);
    end.ru.ru_maxrss = ru.ru_maxrss;
    if (keeper_send(sock, &end, sizeof end, NULL, 0) < 0)
        _exit(1);
}

/* One job: mounts, fork, its pidfd back, then its end. */
static void keeper_job(int sock, char *frame, ssize_t len, int *fds, int nfds)
{
    char *fields[SPAWN_MAX_FIELDS], message[300];
    int n = 0, pidfd = -1;
    struct spawn_request rq;
    for (char *p = frame; p < frame + len && n < SPAWN_MAX_FIELDS; p += strlen(p) + 1)
        fields[n++] = p;
    pid_t pid = -1;
    struct rusage before;
    getrusage(RUSAGE_CHILDREN, &before);
    /* Every job is PID 2 here, as with a namespace of its own: nothing tells
     * it how many processes the slot's jobs before it made. */
    static int last_pid = -1;
    if (last_pid < 0)
        last_pid = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
    if (spawn_parse(fields, n, &rq, message, sizeof message) == 0 && mount_job(&rq.cfg, nfds == KEEPER_FDS ? fds[4] : -1) == 0
        && pwrite(last_pid, "1", 1, 0) == 1)
        pid = fork();
    if (pid == 0)
        keeper_child(&rq, fds);
    if (pid > 0)
        pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    int ok = pidfd >= 0;
    if (keeper_send(sock, &ok, sizeof ok, &pidfd, ok) < 0)
        _exit(1);
    if (pidfd >= 0)
        close(pidfd);
    /* The server reads the job's pid from the pidfd: not reaped before it says so. */
    char ack;
    if (pid > 0 && recv(sock, &ack, 1, 0) != 1)
        _exit(1);
    if (pid > 0)
        keeper_end_job(sock, pid, &before);
}

void keeper_main(int sock, const struct jail_config *cfg)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    prctl(PR_SET_NAME, "mathrun-keeper", 0, 0, 0);
    syscall(SYS_close_range, 0U, (unsigned)sock - 1, 0U);
    syscall(SYS_close_range, (unsigned)sock + 1, ~0U, 0U);
    /* 0-2 taken, so that a job's descriptors never land where dup2 puts them. */
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd)
            _exit(1);
    int ok = keeper_setup(cfg) == 0;
    if (keeper_send(sock, &ok, sizeof ok, NULL, 0) < 0 || !ok)
        _exit(1);
    static char frame[1 << 20];
    for (;;) {
        int fds[KEEPER_FDS], nfds;
        ssize_t got = keeper_recv(sock, frame, sizeof frame - 1, fds, KEEPER_FDS, &nfds);
        if (got <= 0)
            _exit(0);
        if (nfds != KEEPER_FDS && nfds != KEEPER_FDS - 1) {
            for (int i = 0; i < nfds; i++)
                close(fds[i]);
            _exit(1);
        }
        frame[got] = 0;
        keeper_job(sock, frame, got, fds, nfds);
    }
}
