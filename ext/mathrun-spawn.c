/* mathrun-spawn: the sandbox's spawn server.
 *
 *   mathrun-spawn [--fd N] [--keeper]
 *
 * N: the server's end of a unix stream socket, default 3.  --keeper: a
 * root-mode job is forked by its slot's keeper (spawn-keeper.c) instead.
 * Started once by the sandbox and kept running (the Python side restarts it
 * with backoff when it dies).  One poll loop, never blocked on a job: for
 * each request it makes the job's stdio pipes, forks with jail_fork, and the
 * job enters its jail (jail_enter) and execs the tool once.  The pipe ends
 * and a pidfd go back over SCM_RIGHTS; when the job's main process ends,
 * whatever it left is killed and an exit report goes back, the line
 * `mathrun-jail run` writes.  The server is a child subreaper, so every
 * orphan of a job comes back to it.
 *
 * Frames, both ways: a 4-byte little-endian length, then that many bytes of
 * NUL-terminated fields; the first is the verb.
 *   -> spawn ID KEY=VALUE...    keys: the `mathrun-jail run` options (uid,
 *                               gid, kill-ruid, kill-lock, dir, tmp, netns,
 *                               unshare-net, cpu, as, fsize, nofile, nproc,
 *                               cgroup...), env=K=V..., arg=...,
 *                               count-file (the slot's pids.current),
 *                               output-fd=1 (the frame brings one fd, with
 *                               its first byte: the job's stdout and stderr,
 *                               no pipes), stdin=null (/dev/null, no pipe),
 *                               output-create=PREFIX as-uid=U as-gid=G
 *                               as-groups=G1,... (the frame brings a
 *                               directory: the output file, as output-fd's,
 *                               is made there as that user, named PREFIX and
 *                               6 random characters, O_EXCL, 0600),
 *                               quiet=1 (with stdin=null and an output file:
 *                               no `spawned`, the file's name in `exited`)
 *   -> kill ID
 *   <- ready pid=PID
 *   <- spawned ID pid=PID fds=N [output=NAME]  (+ N fds: stdin unless
 *                                 stdin=null, stdout and stderr unless
 *                                 output-fd or -create, pidfd; the pipe ends
 *                                 already non-blocking; NAME: output-create's)
 *   <- exited ID report=LINE [output=NAME]  (NAME: a quiet job's file)
 *   <- error MESSAGE             (a request it could not read)
 * A job whose spawn failed gets `exited` with a `status=failed` report and
 * no `spawned` (stage=output: its output file could not be made; one that
 * was made is removed again).  On end of input, or SIGTERM, every job is killed and the
 * server exits. */
#define _GNU_SOURCE
#include "jail-seccomp-bpf.h"
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_FRAME (1 << 20)

extern char **environ;

static int sock = -1;
static int dev_null = -1;
/* Descriptors that came with requests, in order; a frame takes its own. */
#define MAX_IN_FDS 256
static int in_fds[MAX_IN_FDS];
static int n_in_fds;
static struct spawn_job *jobs[SPAWN_MAX_JOBS];
static int njobs;
static pid_t self_pid;

static void send_error(const char *message)
{
    const char *fields[] = {"error", message};
    spawn_send(fields, 2, NULL, 0);
}

/* ---- jobs ------------------------------------------------------------------ */
int spawn_add_job(struct spawn_job *job)
{
    if (njobs == SPAWN_MAX_JOBS)
        return -1;
    jobs[njobs++] = job;
    return 0;
}

int spawn_job_count(void)
{
    return njobs;
}

struct spawn_job *spawn_find_job(const char *id, pid_t pid)
{
    for (int i = 0; i < njobs; i++)
        if ((id && strcmp(jobs[i]->id, id) == 0) || (!id && jobs[i]->pid == pid))
            return jobs[i];
    return NULL;
}

struct spawn_job *spawn_job_by_pid(pid_t pid)
{
    return spawn_find_job(NULL, pid);
}

void spawn_forget_job(struct spawn_job *job)
{
    for (int i = 0; i < njobs; i++)
        if (jobs[i] == job) {
            jobs[i] = jobs[--njobs];
            break;
        }
    if (job->errfd >= 0)
        close(job->errfd);
    if (job->statusfd >= 0)
        close(job->statusfd);
    keeper_forget(job);
    free(job->kill_lock);
    free(job->count_file);
    free(job);
}

/* Reap every child that has ended: a job's main process is marked for
 * finish() (its status and rusage kept), an orphan of a job just goes. */
void spawn_reap(void)
{
    int status;
    struct rusage ru;
    pid_t pid;
    while ((pid = wait4(-1, &status, WNOHANG, &ru)) > 0) {
        struct spawn_job *job = spawn_find_job(NULL, pid);
        if (job && !job->ended) {
            job->ended = 1;
            job->status = status;
            job->ru = ru;
        }
    }
}

static void finish_ended(void)
{
    for (int i = 0; i < njobs;) {
        if (jobs[i]->ended)
            spawn_finish(jobs[i]); /* moves the last job to i */
        else
            i++;
    }
}

/* ---- requests -------------------------------------------------------------- */
/* The descriptor a spawn frame brought (output-fd=1: the output file;
 * output-create: the directory to make it in), taken from the queue; -1
 * when it brought none, -2 when none came. */
static int brought_fd(char **fields, int n)
{
    for (int i = 2; i < n; i++)
        if (strncmp(fields[i], "output-fd=", 10) == 0 || strncmp(fields[i], "output-create=", 14) == 0) {
            if (n_in_fds == 0)
                return -2;
            int fd = in_fds[0];
            memmove(in_fds, in_fds + 1, --n_in_fds * sizeof *in_fds);
            return fd;
        }
    return -1;
}

/* A spawn request: its fields, the descriptor it brought, its output file
 * made if it asks for one (removed again if the job could not start). */
static void spawn_request_frame(char **fields, int n, const char *end)
{
    struct spawn_request rq;
    char message[300], name[128];
    int fd = brought_fd(fields, n), dirfd = -1;
    if (fd == -2) {
        send_error("spawn: output-fd without its descriptor");
        spawn_failed(fields[1], "jail", EBADF);
        return;
    }
    if (spawn_parse(fields + 1, n - 1, &rq, message, sizeof message) < 0) {
        if (fd >= 0)
            close(fd);
        send_error(message);
        spawn_failed(fields[1], "jail", EINVAL);
        return;
    }
    if (rq.output_create) {
        dirfd = fd;
        fd = spawn_create_output(&rq, dirfd, name, sizeof name);
        if (fd < 0) {
            spawn_failed(rq.id, "output", errno);
            close(dirfd);
            return;
        }
        rq.output_name = name;
    }
    rq.output_fd = fd;
    rq.raw = fields[1];
    rq.raw_len = (size_t)(end - fields[1]);
    if (spawn_start(&rq, dev_null, self_pid) < 0 && dirfd >= 0)
        unlinkat(dirfd, name, 0); /* (nobody will hear of it) */
    if (fd >= 0)
        close(fd);
    if (dirfd >= 0)
        close(dirfd);
}

static void request(char *payload, size_t len)
{
    char *fields[SPAWN_MAX_FIELDS];
    int n = 0;
    if (len == 0 || payload[len - 1] != 0) {
        send_error("a frame must end with a NUL");
        return;
    }
    for (char *p = payload; p < payload + len && n < SPAWN_MAX_FIELDS; p += strlen(p) + 1)
        fields[n++] = p;
    if (n >= 2 && strcmp(fields[0], "kill") == 0) {
        struct spawn_job *job = spawn_find_job(fields[1], 0);
        if (job && !job->ended)
            spawn_kill(job, 0);
        return;
    }
    if (n >= 2 && strcmp(fields[0], "open") == 0) {
        int fd = -1;
        for (int i = 2; i < n; i++)
            if (strcmp(fields[i], "fds=1") == 0 && n_in_fds > 0) {
                fd = in_fds[0];
                memmove(in_fds, in_fds + 1, --n_in_fds * sizeof *in_fds);
            }
        spawn_open(fields + 1, n - 1, fd);
        if (fd >= 0)
            close(fd);
        return;
    }
    if (n >= 2 && strcmp(fields[0], "spawn") == 0) {
        spawn_request_frame(fields, n, payload + len);
        return;
    }
    send_error("unknown request");
}

/* Whole frames out of the input buffer; -1 when the stream is broken. */
static int read_requests(void)
{
    static char *buf;
    static size_t size, used;
    if (!buf) {
        size = 65536;
        buf = malloc(size);
        if (!buf)
            abort();
    }
    union {
        char buf[CMSG_SPACE(16 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {buf + used, size - used};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    ssize_t got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    for (struct cmsghdr *c = got > 0 ? CMSG_FIRSTHDR(&msg) : NULL; c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int nfds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < nfds; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (n_in_fds == MAX_IN_FDS)
                close(fd); /* its frame will say none came */
            else
                in_fds[n_in_fds++] = fd;
        }
    }
    if (msg.msg_flags & MSG_CTRUNC) {
        send_error("too many descriptors with one read");
        return -1;
    }
    if (got < 0)
        return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
    if (got == 0)
        return -1;
    used += got;
    size_t start = 0;
    while (used - start >= 4) {
        unsigned char *h = (unsigned char *)buf + start;
        size_t len = h[0] | h[1] << 8 | h[2] << 16 | (size_t)h[3] << 24;
        if (len > MAX_FRAME) {
            send_error("frame too long");
            return -1;
        }
        if (used - start < 4 + len) {
            if (4 + len > size) {
                size = 4 + len;
                buf = realloc(buf, size);
                if (!buf)
                    abort();
            }
            break;
        }
        request(buf + start + 4, len);
        start += 4 + len;
    }
    memmove(buf, buf + start, used - start);
    used -= start;
    return 0;
}

/* ---- main loop ------------------------------------------------------------- */
static void shut_down(int sigfd)
{
    for (int i = 0; i < njobs; i++)
        if (!jobs[i]->ended)
            spawn_kill(jobs[i], 0);
    for (int round = 0; njobs && round < 100; round++) {
        struct pollfd p[1 + 256] = {{sigfd, POLLIN, 0}};
        int nk = keeper_pollfds(p + 1, 256);
        poll(p, 1 + nk, 50);
        keeper_events(p + 1, nk);
        struct signalfd_siginfo si;
        while (read(sigfd, &si, sizeof si) > 0) {}
        spawn_reap();
        finish_ended();
    }
    keeper_shutdown();
    spawn_flush();
}

static int parse_args(int argc, char **argv)
{
    sock = 3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--fd") == 0 && i + 1 < argc) {
            sock = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--keeper") == 0) {
            keeper_enable();
        } else {
            fprintf(stderr, "usage: mathrun-spawn [--fd N] [--keeper]\n");
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (parse_args(argc, argv) < 0)
        return 2;
    self_pid = getpid();
    spawn_wire_init(sock);
    /* The seccomp filter as exported at build time: each job loads it with
     * one prctl (jail_enter's last step, with seccomp=1). */
    jail_seccomp_use(jail_seccomp_bpf, sizeof jail_seccomp_bpf);
    /* Jobs inherit dispositions across fork: all at their defaults now, so
     * that no job needs 64 syscalls to reset them. */
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd)
            return 1;
    dev_null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sigfd < 0 || fcntl(sock, F_SETFD, FD_CLOEXEC) < 0 || fcntl(sock, F_SETFL, O_NONBLOCK) < 0) {
        perror("mathrun-spawn: set-up");
        return 1;
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
    char hello[32];
    snprintf(hello, sizeof hello, "pid=%d", (int)self_pid);
    const char *ready[] = {"ready", hello};
    spawn_send(ready, 2, NULL, 0);
    spawn_flush();

    for (;;) {
        struct pollfd p[2 + 256] = {{sock, POLLIN | (spawn_output_pending() ? POLLOUT : 0), 0}, {sigfd, POLLIN, 0}};
        int nk = keeper_pollfds(p + 2, 256);
        if (poll(p, 2 + nk, -1) < 0 && errno != EINTR)
            break;
        keeper_events(p + 2, nk);
        if (p[1].revents & POLLIN) {
            struct signalfd_siginfo si;
            int stop = 0;
            while (read(sigfd, &si, sizeof si) == sizeof si)
                if (si.ssi_signo != SIGCHLD)
                    stop = 1;
            spawn_reap();
            finish_ended();
            if (stop)
                break;
        }
        if ((p[0].revents & (POLLIN | POLLHUP | POLLERR)) && read_requests() < 0)
            break;
        finish_ended(); /* a kill may have reaped a job */
        spawn_flush();  /* what this turn answered, in as few sends as may be */
    }
    shut_down(sigfd);
    return 0;
}
