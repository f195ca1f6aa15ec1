/* mathrun-spawn: the sandbox's spawn server.
 *
 *   mathrun-spawn [--fd N]      (N: the server's end of a unix stream socket, default 3)
 *
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
 *                               no pipes), stdin=null (/dev/null, no pipe)
 *   -> kill ID
 *   <- ready pid=PID
 *   <- spawned ID pid=PID fds=N  (+ N fds: stdin unless stdin=null, stdout
 *                                 and stderr unless output-fd, pidfd; the
 *                                 pipe ends already non-blocking)
 *   <- exited ID report=LINE
 *   <- error MESSAGE             (a request it could not read)
 * A job whose spawn failed gets `exited` with a `status=failed` report and
 * no `spawned`.  On end of input, or SIGTERM, every job is killed and the
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

static void send_report(const char *id, const char *report)
{
    char field[600];
    snprintf(field, sizeof field, "report=%s", report);
    const char *fields[] = {"exited", id, field};
    spawn_send(fields, 3, NULL, 0);
}

/* ---- jobs ------------------------------------------------------------------ */
static struct spawn_job *find_job(const char *id, pid_t pid)
{
    for (int i = 0; i < njobs; i++)
        if ((id && strcmp(jobs[i]->id, id) == 0) || (!id && jobs[i]->pid == pid))
            return jobs[i];
    return NULL;
}

struct spawn_job *spawn_job_by_pid(pid_t pid)
{
    return find_job(NULL, pid);
}

static void forget_job(struct spawn_job *job)
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
    free(job->kill_lock);
    free(job->count_file);
    free(job);
}

/* The job, between jail_fork and exec: its pipes as stdio, no signal
 * blocked, dead with the server, confined, the tool. */
static void job_child(struct spawn_request *rq, int in, int out, int err, int errw)
{
    int report[2];
    sigset_t none;
    if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
        _exit(126);
    if (rq->output_fd >= 0)
        close(rq->output_fd);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    /* (Unprivileged, the parent is the namespace's init, PID 1 here, which
     * dies with the server and takes the namespace with it.) */
    pid_t parent = getppid();
    if (!rq->cfg.userns && parent != self_pid && parent != 0)
        _exit(126); /* the server died before the line above */
    if (jail_enter(&rq->cfg) < 0) {
        report[0] = 1;
        report[1] = errno;
        if (write(errw, report, sizeof report) < 0) {}
        _exit(126);
    }
    /* Changing uid cleared the parent-death signal: set it again. */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    environ = rq->env;
    execvp(rq->argv[0], rq->argv);
    report[0] = 2;
    report[1] = errno;
    fprintf(stderr, "%s: exec of '%s' failed (%s)\n", rq->argv[0], rq->argv[0], strerror(errno));
    if (write(errw, report, sizeof report) < 0) {}
    _exit(127);
}

static void failed_report(const char *id, const char *stage, int code)
{
    char line[200];
    snprintf(line, sizeof line,
             "status=failed stage=%s errno=%d utime=0.000000 stime=0.000000 maxrss_kb=0"
             " wall=0.000000 leftover=0 killed=0 remaining=0", stage, code);
    send_report(id, line);
}

static void close_all(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

static void spawn(struct spawn_request *rq)
{
    int p[8] = {-1, -1, -1, -1, -1, -1, -1, -1}; /* in, out, err, errpipe */
    if (njobs == SPAWN_MAX_JOBS || find_job(rq->id, 0)) {
        failed_report(rq->id, "jail", njobs == SPAWN_MAX_JOBS ? EAGAIN : EEXIST);
        return;
    }
    /* Pipes for stdin, stdout, stderr and exec errors, but for what the
     * request brought (its output file) or wants none of (stdin). */
    for (int i = 0; i < 4; i++) {
        if ((i == 0 && rq->stdin_null) || ((i == 1 || i == 2) && rq->output_fd >= 0))
            continue;
        if (pipe2(p + 2 * i, O_CLOEXEC) < 0) {
            int code = errno;
            close_all(p, 8);
            failed_report(rq->id, "jail", code);
            return;
        }
    }
    int child_in = rq->stdin_null ? dev_null : p[0];
    int child_out = rq->output_fd >= 0 ? rq->output_fd : p[3];
    int child_err = rq->output_fd >= 0 ? rq->output_fd : p[5];
    /* Unprivileged, the pid is the namespace's init: it tells the job's
     * own wait status through this pipe (jail.h). */
    int sp[2] = {-1, -1};
    if (rq->cfg.userns && pipe2(sp, O_CLOEXEC) < 0) {
        int code = errno;
        close_all(p, 8);
        failed_report(rq->id, "jail", code);
        return;
    }
    rq->cfg.status_fd = sp[1];
    struct spawn_job *job = calloc(1, sizeof *job);
    if (!job)
        abort();
    clock_gettime(CLOCK_MONOTONIC, &job->t0);
    pid_t pid = jail_fork(&rq->cfg);
    if (pid == 0)
        job_child(rq, child_in, child_out, child_err, p[7]);
    if (sp[1] >= 0)
        close(sp[1]);
    if (pid < 0) {
        int code = errno;
        close_all(p, 8);
        if (sp[0] >= 0)
            close(sp[0]);
        free(job);
        failed_report(rq->id, "namespaces", code);
        return;
    }
    job->statusfd = sp[0];
    int ours[3] = {p[1], p[2], p[4]};
    close_all((int[]){p[0], p[3], p[5], p[7]}, 4);
    /* The reactor's ends come non-blocking (the job's ends stay blocking). */
    for (int i = 0; i < 3; i++)
        if (ours[i] >= 0)
            fcntl(ours[i], F_SETFL, O_NONBLOCK);
    fcntl(p[6], F_SETFL, O_NONBLOCK); /* read when the job has ended: never wait on it */
    snprintf(job->id, sizeof job->id, "%s", rq->id);
    job->pid = pid;
    job->errfd = p[6];
    job->uid = rq->cfg.uid;
    job->kill_ruid = rq->cfg.kill_ruid;
    job->kill_lock = rq->cfg.kill_lock ? strdup(rq->cfg.kill_lock) : NULL;
    job->count_file = rq->count_file ? strdup(rq->count_file) : NULL;
    jobs[njobs++] = job;

    int fds[4], n = 0;
    for (int i = 0; i < 3; i++)
        if (ours[i] >= 0)
            fds[n++] = ours[i];
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd >= 0)
        fds[n++] = pidfd;
    char pidf[32], nfds[16];
    snprintf(pidf, sizeof pidf, "pid=%d", (int)pid);
    snprintf(nfds, sizeof nfds, "fds=%d", n);
    const char *fields[] = {"spawned", rq->id, pidf, nfds};
    spawn_send(fields, 4, fds, n);
}

/* The main process is gone: kill what it left, report, forget. */
static void finish(struct spawn_job *job)
{
    int err[2] = {0, 0};
    ssize_t got = read(job->errfd, err, sizeof err);
    /* With a PID namespace, its init ends right after the job's main
     * process and the kernel kills what is left; its exit code says whether
     * anything was, its rusage holds the orphans' (jail.h). */
    int init_left = jail_reap_init(job->pid, &job->ru);
    if (job->statusfd >= 0) {
        struct jail_status js;
        if (read(job->statusfd, &js, sizeof js) == (ssize_t)sizeof js) {
            job->status = js.wait_status;
            init_left = js.leftover;
        }
    }
    int leftover = init_left == 1 || spawn_has_leftovers(job);
    int remaining = 0;
    if (leftover || job->killed)
        remaining = spawn_kill(job, 1);

    char line[512];
    int n;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    double wall = (t.tv_sec - job->t0.tv_sec) + (t.tv_nsec - job->t0.tv_nsec) / 1e9;
    if (got == (ssize_t)sizeof err)
        n = snprintf(line, sizeof line, "status=failed stage=%s errno=%d", err[0] == 1 ? "jail" : "exec", err[1]);
    else if (WIFSIGNALED(job->status))
        n = snprintf(line, sizeof line, "status=signalled signal=%d", WTERMSIG(job->status));
    else
        n = snprintf(line, sizeof line, "status=exited code=%d", WEXITSTATUS(job->status));
    snprintf(line + n, sizeof line - n,
             " utime=%ld.%06ld stime=%ld.%06ld maxrss_kb=%ld wall=%.6f leftover=%d killed=%d remaining=%d",
             (long)job->ru.ru_utime.tv_sec, (long)job->ru.ru_utime.tv_usec, (long)job->ru.ru_stime.tv_sec,
             (long)job->ru.ru_stime.tv_usec, job->ru.ru_maxrss, wall, leftover, job->killed, remaining);
    send_report(job->id, line);
    forget_job(job);
}

/* Reap every child that has ended: a job's main process is marked for
 * finish() (its status and rusage kept), an orphan of a job just goes. */
void spawn_reap(void)
{
    int status;
    struct rusage ru;
    pid_t pid;
    while ((pid = wait4(-1, &status, WNOHANG, &ru)) > 0) {
        struct spawn_job *job = find_job(NULL, pid);
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
            finish(jobs[i]); /* moves the last job to i */
        else
            i++;
    }
}

/* ---- requests -------------------------------------------------------------- */
/* The descriptor a spawn frame brought (output-fd=1), taken from the queue;
 * -1 when it brought none, -2 when none came. */
static int brought_fd(char **fields, int n)
{
    for (int i = 2; i < n; i++)
        if (strncmp(fields[i], "output-fd=", 10) == 0) {
            if (n_in_fds == 0)
                return -2;
            int fd = in_fds[0];
            memmove(in_fds, in_fds + 1, --n_in_fds * sizeof *in_fds);
            return fd;
        }
    return -1;
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
        struct spawn_job *job = find_job(fields[1], 0);
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
        struct spawn_request rq;
        char message[300];
        int fd = brought_fd(fields, n);
        if (fd == -2) {
            send_error("spawn: output-fd without its descriptor");
            failed_report(fields[1], "jail", EBADF);
            return;
        }
        if (spawn_parse(fields + 1, n - 1, &rq, message, sizeof message) < 0) {
            if (fd >= 0)
                close(fd);
            send_error(message);
            failed_report(fields[1], "jail", EINVAL);
            return;
        }
        rq.output_fd = fd;
        spawn(&rq);
        if (fd >= 0)
            close(fd);
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
        struct pollfd p = {sigfd, POLLIN, 0};
        poll(&p, 1, 50);
        struct signalfd_siginfo si;
        while (read(sigfd, &si, sizeof si) > 0) {}
        spawn_reap();
        finish_ended();
    }
    spawn_flush();
}

int main(int argc, char **argv)
{
    sock = 3;
    if (argc == 3 && strcmp(argv[1], "--fd") == 0)
        sock = atoi(argv[2]);
    else if (argc != 1) {
        fprintf(stderr, "usage: mathrun-spawn [--fd N]\n");
        return 2;
    }
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
        struct pollfd p[2] = {{sock, POLLIN | (spawn_output_pending() ? POLLOUT : 0), 0}, {sigfd, POLLIN, 0}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
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
