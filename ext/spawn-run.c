/* The spawn server's jobs from fork to report: the job's side between
 * jail_fork and exec, and the server's when its main process has ended.
 * See spawn.h and mathrun-spawn.c. */
#define _GNU_SOURCE
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static void send_report(const char *id, const char *report, const char *output)
{
    char field[600], name[100];
    snprintf(field, sizeof field, "report=%s", report);
    snprintf(name, sizeof name, "output=%s", output ? output : "");
    const char *fields[] = {"exited", id, field, name};
    spawn_send(fields, output && *output ? 4 : 3, NULL, 0);
}

/* The job, between jail_fork and exec: its pipes as stdio, no signal
 * blocked, dead with the server, confined, the tool. */
static void job_child(struct spawn_request *rq, int in, int out, int err, int errw, pid_t self_pid)
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

void spawn_failed(const char *id, const char *stage, int code)
{
    char line[200];
    snprintf(line, sizeof line,
             "status=failed stage=%s errno=%d utime=0.000000 stime=0.000000 maxrss_kb=0"
             " wall=0.000000 leftover=0 killed=0 remaining=0", stage, code);
    send_report(id, line, NULL);
}

static void close_all(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* The job's process: forked by its slot's keeper, or here into fresh
 * namespaces (`fds`: its stdin, stdout, stderr, exec-error pipe). */
static pid_t fork_job(struct spawn_request *rq, struct spawn_job *job, const int *fds, pid_t self_pid, int *pidfd)
{
    if (keeper_wanted(rq))
        return keeper_spawn(rq, job, fds, fds[3], pidfd);
    pid_t pid = jail_fork(&rq->cfg);
    if (pid == 0)
        job_child(rq, fds[0], fds[1], fds[2], fds[3], self_pid);
    return pid;
}

/* Pipes for stdin, stdout, stderr and exec errors into p[8], but for what
 * the request brought (its output file) or wants none of (stdin); on a
 * failure the request is answered and -1 returned. */
static int open_pipes(const struct spawn_request *rq, int p[8])
{
    for (int i = 0; i < 4; i++) {
        if ((i == 0 && rq->stdin_null) || ((i == 1 || i == 2) && rq->output_fd >= 0))
            continue;
        if (pipe2(p + 2 * i, O_CLOEXEC) < 0) {
            int code = errno;
            close_all(p, 8);
            spawn_failed(rq->id, "jail", code);
            return -1;
        }
    }
    return 0;
}

/* The job table's entry of a job just forked. */
static void record_job(struct spawn_job *job, const struct spawn_request *rq, pid_t pid, int errfd)
{
    snprintf(job->id, sizeof job->id, "%s", rq->id);
    job->pid = pid;
    job->errfd = errfd;
    job->uid = rq->cfg.uid;
    job->kill_ruid = rq->cfg.kill_ruid;
    job->kill_lock = rq->cfg.kill_lock ? strdup(rq->cfg.kill_lock) : NULL;
    job->count_file = rq->count_file ? strdup(rq->count_file) : NULL;
    spawn_add_job(job); /* (room was checked before the fork) */
}

/* "spawned ID pid=N fds=K [output=NAME]" with the reactor's pipe ends and
 * a pidfd. */
static void announce(const char *id, pid_t pid, const int ours[3], int pidfd, const char *output)
{
    int fds[4], n = 0;
    for (int i = 0; i < 3; i++)
        if (ours[i] >= 0)
            fds[n++] = ours[i];
    if (pidfd < 0)
        pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd >= 0)
        fds[n++] = pidfd;
    char pidf[32], nfds[16], name[160];
    snprintf(pidf, sizeof pidf, "pid=%d", (int)pid);
    snprintf(nfds, sizeof nfds, "fds=%d", n);
    snprintf(name, sizeof name, "output=%s", output ? output : "");
    const char *fields[] = {"spawned", id, pidf, nfds, name};
    spawn_send(fields, output ? 5 : 4, fds, n);
}

int spawn_start(struct spawn_request *rq, int dev_null, pid_t self_pid)
{
    int p[8] = {-1, -1, -1, -1, -1, -1, -1, -1}; /* in, out, err, errpipe */
    int full = spawn_job_count() == SPAWN_MAX_JOBS;
    if (full || spawn_find_job(rq->id, 0)) {
        spawn_failed(rq->id, "jail", full ? EAGAIN : EEXIST);
        return -1;
    }
    if (open_pipes(rq, p) < 0)
        return -1;
    int child_in = rq->stdin_null ? dev_null : p[0];
    int child_out = rq->output_fd >= 0 ? rq->output_fd : p[3];
    int child_err = rq->output_fd >= 0 ? rq->output_fd : p[5];
    /* Unprivileged, the pid is the namespace's init: it tells the job's
     * own wait status through this pipe (jail.h). */
    int sp[2] = {-1, -1};
    if (rq->cfg.userns && pipe2(sp, O_CLOEXEC) < 0) {
        int code = errno;
        close_all(p, 8);
        spawn_failed(rq->id, "jail", code);
        return -1;
    }
    rq->cfg.status_fd = sp[1];
    struct spawn_job *job = calloc(1, sizeof *job);
    if (!job)
        abort();
    clock_gettime(CLOCK_MONOTONIC, &job->t0);
    int pidfd = -1;
    pid_t pid = fork_job(rq, job, (int[]){child_in, child_out, child_err, p[7]}, self_pid, &pidfd);
    if (sp[1] >= 0)
        close(sp[1]);
    if (pid < 0) {
        int code = errno;
        close_all(p, 8);
        if (sp[0] >= 0)
            close(sp[0]);
        free(job);
        spawn_failed(rq->id, "namespaces", code);
        return -1;
    }
    job->statusfd = sp[0];
    int ours[3] = {p[1], p[2], p[4]};
    close_all((int[]){p[0], p[3], p[5], p[7]}, 4);
    /* The reactor's ends come non-blocking (the job's ends stay blocking). */
    for (int i = 0; i < 3; i++)
        if (ours[i] >= 0)
            fcntl(ours[i], F_SETFL, O_NONBLOCK);
    fcntl(p[6], F_SETFL, O_NONBLOCK); /* read when the job has ended: never wait on it */
    record_job(job, rq, pid, p[6]);
    if (rq->quiet) {
        /* (no pipes to hand over: its output file's name comes with `exited`) */
        snprintf(job->output, sizeof job->output, "%s", rq->output_name ? rq->output_name : "");
        if (pidfd >= 0)
            close(pidfd);
    } else {
        announce(rq->id, pid, ours, pidfd, rq->output_name);
    }
    return 0;
}

/* The main process is gone: kill what it left, report, forget. */
void spawn_finish(struct spawn_job *job)
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
    /* (A keeper counts in the slot's pids.current: its own word then.) */
    int leftover = job->keeper ? job->keeper_left : init_left == 1 || spawn_has_leftovers(job);
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
    send_report(job->id, line, job->output);
    spawn_forget_job(job);
}

