/* `mathrun-jail run`: one job, forked into its jail and supervised.
 *
 * We fork the job (new session, rlimits, namespaces, job user, clean
 * environment), stay behind as a child subreaper so that nothing the job
 * starts can outlive it, kill everything on SIGTERM and once the job's main
 * process ends, and then write one accounting line to the report fd:
 *
 *   status=exited code=0 utime=0.001 stime=0.002 maxrss_kb=900 wall=0.003 leftover=0
 */
#define _GNU_SOURCE
#include "jail.h"
#include "jail-seccomp-bpf.h"
#include "mathrun-jail.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* Between two sweeps for the descendants of an unprivileged job. */
#define SWEEP_PAUSE_NS 200000

struct run_request {
    struct jail_config cfg;
    char *env[JAIL_MAX_ENV + 2];
    int nenv;
    int report_fd;
    char **prog;
};

struct outcome {
    int have_status;
    int status;
};

/* What the job's side reports through the error pipe: the stage (1 jail,
 * 2 exec) and errno; nothing when the exec succeeded. */
struct child_error {
    int stage;
    int err;
};

static double since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) + (t.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Unprivileged mode: kill our descendants, found through /proc children
 * lists (every orphan of the job is re-parented to us, the subreaper). */
static void kill_descendants(pid_t root)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)root);
    DIR *d = opendir(path);
    struct dirent *de;
    if (!d)
        return;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char cpath[600];
        snprintf(cpath, sizeof cpath, "%s/%s/children", path, de->d_name);
        FILE *f = fopen(cpath, "re");
        if (!f)
            continue;
        int child;
        while (fscanf(f, "%d", &child) == 1) {
            kill(child, SIGSTOP);
            kill_descendants(child);
            kill(child, SIGKILL);
        }
        fclose(f);
    }
    closedir(d);
}

static void kill_everything(const struct jail_config *cfg, pid_t job)
{
    pid_t init = jail_init_of(job);
    if (init > 0)
        kill(init, SIGKILL); /* the whole namespace, at once */
    if (cfg->userns && cfg->pidns) {
        /* The job's pid is its namespace's init: the kernel kills the rest
         * with it. */
        if (job > 0)
            kill(job, SIGKILL);
        return;
    }
    if (cfg->uid != (uid_t)-1) {
        jail_kill_user(cfg->uid, cfg->kill_ruid, cfg->kill_lock);
        return;
    }
    kill_descendants(getpid());
}

static void reap(pid_t main_pid, struct outcome *out, int block)
{
    int st;
    pid_t p;
    while ((p = waitpid(-1, &st, block ? 0 : WNOHANG)) > 0) {
        if (p == main_pid) {
            out->have_status = 1;
            out->status = st;
        }
    }
}

/* One option of `run` into the request; 0, or -1 for a bad one. */
static int run_option(struct run_request *req, int c, char *arg)
{
    struct jail_config *cfg = &req->cfg;
    switch (c) {
    case 'u': cfg->uid = (uid_t)number(arg, "uid"); break;
    case 'g': cfg->gid = (gid_t)number(arg, "gid"); break;
    case 'k': cfg->kill_ruid = (uid_t)number(arg, "kill-ruid"); break;
    case 'l': cfg->kill_lock = arg; break;
    case 'd': cfg->dir = arg; break;
    case 't': cfg->tmp = arg; break;
    case 'n': cfg->netns = arg; break;
    case 'N': cfg->unshare_net = 1; break;
    case 'c': cfg->cpu = number(arg, "cpu"); break;
    case 'a': cfg->as = number(arg, "as"); break;
    case 'f': cfg->fsize = number(arg, "fsize"); break;
    case 'o': cfg->nofile = number(arg, "nofile"); break;
    case 'p': cfg->nproc = number(arg, "nproc"); break;
    case 'C':
        if (cfg->ncgroups == JAIL_MAX_CGROUPS)
            return -1;
        cfg->cgroups[cfg->ncgroups++] = arg;
        break;
    case 'e':
        if (req->nenv == JAIL_MAX_ENV || !strchr(arg, '='))
            return -1;
        req->env[req->nenv++] = arg;
        break;
    case 'r': req->report_fd = (int)number(arg, "report-fd"); break;
    case 'P': cfg->pidns = 1; break;
    case 'S': cfg->seccomp = 1; break;
    case 'U': cfg->userns = 1; break;
    default: return -1;
    }
    return 0;
}

static void parse_run(int argc, char **argv, struct run_request *req)
{
    static struct option opts[] = {
        {"uid", required_argument, 0, 'u'},    {"gid", required_argument, 0, 'g'},
        {"kill-ruid", required_argument, 0, 'k'}, {"kill-lock", required_argument, 0, 'l'},
        {"dir", required_argument, 0, 'd'},    {"tmp", required_argument, 0, 't'},
        {"netns", required_argument, 0, 'n'},  {"unshare-net", no_argument, 0, 'N'},
        {"cpu", required_argument, 0, 'c'},    {"as", required_argument, 0, 'a'},
        {"fsize", required_argument, 0, 'f'},  {"nofile", required_argument, 0, 'o'},
        {"nproc", required_argument, 0, 'p'},  {"cgroup", required_argument, 0, 'C'},
        {"env", required_argument, 0, 'e'},    {"report-fd", required_argument, 0, 'r'},
        {"pidns", no_argument, 0, 'P'},        {"seccomp", no_argument, 0, 'S'},
        {"userns", no_argument, 0, 'U'},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1)
        if (run_option(req, c, optarg) < 0)
            usage();
    if (optind >= argc)
        usage();
    req->env[req->nenv] = NULL;
    req->prog = argv + optind;
}

/* A job as a job user: never as root, killed by another unprivileged user. */
static int check_run(const struct jail_config *cfg)
{
    if (cfg->uid == (uid_t)-1)
        return 0;
    if (cfg->uid == 0 || cfg->gid == 0 || cfg->gid == (gid_t)-1) {
        fprintf(stderr, "mathrun-jail: refusing to run a job as root\n");
        return -1;
    }
    if (cfg->kill_ruid == (uid_t)-1 || cfg->kill_ruid == 0 || cfg->kill_ruid == cfg->uid) {
        fprintf(stderr, "mathrun-jail: --kill-ruid must name another unprivileged user\n");
        return -1;
    }
    if (geteuid() != 0) {
        fprintf(stderr, "mathrun-jail: --uid needs root\n");
        return -1;
    }
    if (cfg->userns) {
        fprintf(stderr, "mathrun-jail: --userns is for unprivileged mode (no --uid)\n");
        return -1;
    }
    return 0;
}

/* SIGCHLD and the stop signals wait for sigwaitinfo; we are the job's
 * subreaper, and the server's death stops the job. */
static void become_supervisor(sigset_t *set, sigset_t *old)
{
    sigemptyset(set);
    sigaddset(set, SIGCHLD);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    sigprocmask(SIG_BLOCK, set, old);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    /* If the server dies, SIGTERM (blocked, so it waits for sigwaitinfo)
     * makes us kill the job: no job outlives its wall-clock limit's keeper. */
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
}

/* The job's side of the fork: enter the jail, exec; a failure goes to the
 * error pipe as a struct child_error. */
static void __attribute__((noreturn)) run_child(struct run_request *req, int errfd)
{
    struct child_error e;
    sigset_t none;
    if (req->report_fd > 2)
        close(req->report_fd);
    /* The job starts with default signal dispositions and no mask,
     * whatever the server had. */
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (jail_enter(&req->cfg) < 0) {
        e = (struct child_error){1, errno};
        if (write(errfd, &e, sizeof e) < 0) {}
        _exit(126);
    }
    environ = req->env;
    execvp(req->prog[0], req->prog);
    e = (struct child_error){2, errno};
    fprintf(stderr, "%s: exec of '%s' failed (%s)\n", req->prog[0], req->prog[0], strerror(errno));
    if (write(errfd, &e, sizeof e) < 0) {}
    _exit(127);
}

/* Until the main process ends: a stop signal kills everything. */
static int supervise(const struct jail_config *cfg, pid_t pid, sigset_t *set, struct outcome *out)
{
    int killed = 0;
    siginfo_t info;
    while (!out->have_status) {
        int sig = sigwaitinfo(set, &info);
        if (sig == SIGCHLD) {
            reap(pid, out, 0);
        } else if (sig > 0) {
            killed = 1;
            kill_everything(cfg, pid);
        }
    }
    return killed;
}

/* After the main process: was anything left (then killed), and how many
 * of the job user's processes survived even that.  ``ru_init`` gets the
 * namespace init's usage (its orphans'). */
static int clean_up(const struct jail_config *cfg, pid_t pid, int statfd, int killed, struct outcome *out,
                    struct rusage *ru_init, int *remaining)
{
    /* With a PID namespace: its init ends with the main process, and once
     * it is reaped nothing of the namespace is left (it says whether there
     * was anything). */
    int init_left = jail_reap_init(pid, ru_init);
    /* As the subreaper we inherit every orphan, so "no child left" means
     * "no process of the job left". */
    int leftover = init_left == 1 || waitpid(-1, NULL, WNOHANG) >= 0 || errno != ECHILD;
    if (cfg->userns && cfg->pidns) {
        /* The namespace's init (what we waited for) says how the job's main
         * process ended, and whether it left others (ended with the init). */
        struct jail_status js;
        if (read(statfd, &js, sizeof js) == (ssize_t)sizeof js) {
            out->status = js.wait_status;
            leftover = js.leftover;
        }
    }
    *remaining = 0;
    if (!leftover && !killed)
        return leftover;
    kill_everything(cfg, cfg->userns ? 0 : pid); /* a reaped init is never signalled again */
    if (cfg->uid == (uid_t)-1) {
        while (waitpid(-1, NULL, WNOHANG) >= 0 || errno != ECHILD) {
            kill_descendants(getpid());
            struct timespec ts = {0, SWEEP_PAUSE_NS};
            nanosleep(&ts, NULL);
        }
    } else {
        reap(pid, out, 1);
        *remaining = jail_count_user_processes(cfg->uid);
    }
    return leftover;
}

/* The one report line: how the job ended, its usage (with the namespace
 * init's), what was left. */
static int write_report(int fd, const struct child_error *e, int have_error, const struct outcome *out,
                        const struct rusage *ru_init, double wall, int leftover, int killed, int remaining)
{
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    timeradd(&ru.ru_utime, &ru_init->ru_utime, &ru.ru_utime);
    timeradd(&ru.ru_stime, &ru_init->ru_stime, &ru.ru_stime);
    if (ru_init->ru_maxrss > ru.ru_maxrss)
        ru.ru_maxrss = ru_init->ru_maxrss;
    char line[512];
    int n;
    if (have_error)
        n = snprintf(line, sizeof line, "status=failed stage=%s errno=%d", e->stage == 1 ? "jail" : "exec", e->err);
    else if (WIFSIGNALED(out->status))
        n = snprintf(line, sizeof line, "status=signalled signal=%d", WTERMSIG(out->status));
    else
        n = snprintf(line, sizeof line, "status=exited code=%d", WEXITSTATUS(out->status));
    n += snprintf(line + n, sizeof line - n,
                  " utime=%ld.%06ld stime=%ld.%06ld maxrss_kb=%ld wall=%.6f"
                  " leftover=%d killed=%d remaining=%d\n",
                  (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec,
                  (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec, ru.ru_maxrss,
                  wall, leftover, killed, remaining);
    return write(fd, line, n) < 0 ? -1 : 0;
}

/* No namespace for the job (user namespaces disabled, their limit
 * reached): a report like any failed job's, not a bare exit. */
static int report_fork_failure(int fd, const struct timespec *t0)
{
    char line[128];
    int n = snprintf(line, sizeof line, "status=failed stage=namespaces errno=%d wall=%.6f\n", errno, since(t0));
    perror("mathrun-jail: fork");
    if (write(fd, line, n) < 0) {}
    return 1;
}

int jail_run_command(int argc, char **argv)
{
    struct run_request req = {.cfg = {.uid = (uid_t)-1, .gid = (gid_t)-1, .kill_ruid = (uid_t)-1,
                                      .cpu = -1, .as = -1, .fsize = -1, .nofile = -1, .nproc = -1},
                              .report_fd = 3};
    parse_run(argc, argv, &req);
    jail_seccomp_use(jail_seccomp_bpf, sizeof jail_seccomp_bpf);
    if (check_run(&req.cfg) < 0)
        return 2;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sigset_t set, old;
    become_supervisor(&set, &old);
    int errpipe[2], statpipe[2];
    if (pipe2(errpipe, O_CLOEXEC) < 0 || pipe2(statpipe, O_CLOEXEC) < 0) {
        perror("mathrun-jail: pipe");
        return 1;
    }
    req.cfg.status_fd = statpipe[1];
    pid_t pid = jail_fork(&req.cfg);
    if (pid < 0)
        return report_fork_failure(req.report_fd, &t0);
    if (pid == 0) {
        close(errpipe[0]);
        run_child(&req, errpipe[1]);
    }
    close(errpipe[1]);
    close(statpipe[1]);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int fd = 0; fd < 3; fd++)
        if (fd != req.report_fd)
            dup2(devnull, fd);
    struct child_error e = {0, 0};
    ssize_t got;
    do
        got = read(errpipe[0], &e, sizeof e);
    while (got < 0 && errno == EINTR);
    close(errpipe[0]);

    struct outcome out = {0, 0};
    int killed = supervise(&req.cfg, pid, &set, &out), remaining;
    struct rusage ru_init;
    memset(&ru_init, 0, sizeof ru_init);
    int leftover = clean_up(&req.cfg, pid, statpipe[0], killed, &out, &ru_init, &remaining);
    close(statpipe[0]);
    if (write_report(req.report_fd, &e, got == (ssize_t)sizeof e, &out, &ru_init, since(&t0), leftover, killed,
                     remaining) < 0)
        return 1;
    return remaining ? 1 : 0;
}
