/* mathrun-jail: runs one sandboxed job and supervises it.
 *
 *   mathrun-jail run [options] -- PROGRAM [ARG...]
 *   mathrun-jail reap --uid UID --kill-ruid UID
 *   mathrun-jail reaper --kill-ruid UID [--kill-lock FILE]   (stdin: UID [PIDS_CURRENT_FILE])
 *   mathrun-jail mknetns PATH...
 *
 * `run` forks the job (new session, rlimits, namespaces, job user, clean
 * environment), stays behind as a child subreaper so that nothing the job
 * starts can outlive it, kills everything on SIGTERM and once the job's main
 * process ends, and then writes one accounting line to the report fd:
 *
 *   status=exited code=0 utime=0.001 stime=0.002 maxrss_kb=900 wall=0.003 leftover=0
 *
 * With --pidns the job gets its own PID namespace (jail_fork: an init of
 * ours is PID 1 and reaps the job's orphans, the tool is PID 2 and our own
 * child, so its wait status is its own); the namespace ending is what kills
 * everything, and the uid-wide kill stays as a second net.
 *
 * The server (Twisted) exec's this for every job, so it stays on Twisted's
 * fast spawn path and needs no pre-exec hook of its own. */
#define _GNU_SOURCE
#include "jail.h"
#include "jail-seccomp-bpf.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#ifndef NSFS_MAGIC
#define NSFS_MAGIC 0x6e736673
#endif

static void usage(void)
{
    fprintf(stderr,
            "usage: mathrun-jail run [--uid N --gid N --kill-ruid N [--kill-lock F]] [--dir D]\n"
            "         [--tmp D] [--netns FILE | --unshare-net] [--cpu S] [--as B]\n"
            "         [--fsize B] [--nofile N] [--nproc N] [--cgroup D]...\n"
            "         [--pidns] [--userns] [--seccomp] [--env K=V]... [--report-fd N] -- PROGRAM [ARG...]\n"
            "       mathrun-jail reap --uid N --kill-ruid N [--kill-lock F]\n"
            "       mathrun-jail reaper --kill-ruid N [--kill-lock F]\n"
            "       mathrun-jail mknetns FILE...\n");
    exit(2);
}

static long long number(const char *s, const char *what)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < 0) {
        fprintf(stderr, "mathrun-jail: bad %s: '%s'\n", what, s);
        exit(2);
    }
    return v;
}

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

struct outcome {
    int have_status;
    int status;
};

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

static int run(int argc, char **argv)
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
    struct jail_config cfg = {.uid = (uid_t)-1, .gid = (gid_t)-1, .kill_ruid = (uid_t)-1,
                              .cpu = -1, .as = -1, .fsize = -1, .nofile = -1, .nproc = -1};
    char *env[JAIL_MAX_ENV + 2];
    int nenv = 0, report_fd = 3, c;

    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        switch (c) {
        case 'u': cfg.uid = (uid_t)number(optarg, "uid"); break;
        case 'g': cfg.gid = (gid_t)number(optarg, "gid"); break;
        case 'k': cfg.kill_ruid = (uid_t)number(optarg, "kill-ruid"); break;
        case 'l': cfg.kill_lock = optarg; break;
        case 'd': cfg.dir = optarg; break;
        case 't': cfg.tmp = optarg; break;
        case 'n': cfg.netns = optarg; break;
        case 'N': cfg.unshare_net = 1; break;
        case 'c': cfg.cpu = number(optarg, "cpu"); break;
        case 'a': cfg.as = number(optarg, "as"); break;
        case 'f': cfg.fsize = number(optarg, "fsize"); break;
        case 'o': cfg.nofile = number(optarg, "nofile"); break;
        case 'p': cfg.nproc = number(optarg, "nproc"); break;
        case 'C':
            if (cfg.ncgroups == JAIL_MAX_CGROUPS)
                usage();
            cfg.cgroups[cfg.ncgroups++] = optarg;
            break;
        case 'e':
            if (nenv == JAIL_MAX_ENV || !strchr(optarg, '='))
                usage();
            env[nenv++] = optarg;
            break;
        case 'r': report_fd = (int)number(optarg, "report-fd"); break;
        case 'P': cfg.pidns = 1; break;
        case 'S': cfg.seccomp = 1; break;
        case 'U': cfg.userns = 1; break;
        default: usage();
        }
    }
    if (optind >= argc)
        usage();
    jail_seccomp_use(jail_seccomp_bpf, sizeof jail_seccomp_bpf);
    if (cfg.uid != (uid_t)-1) {
        if (cfg.uid == 0 || cfg.gid == 0 || cfg.gid == (gid_t)-1) {
            fprintf(stderr, "mathrun-jail: refusing to run a job as root\n");
            return 2;
        }
        if (cfg.kill_ruid == (uid_t)-1 || cfg.kill_ruid == 0 || cfg.kill_ruid == cfg.uid) {
            fprintf(stderr, "mathrun-jail: --kill-ruid must name another unprivileged user\n");
            return 2;
        }
        if (geteuid() != 0) {
            fprintf(stderr, "mathrun-jail: --uid needs root\n");
            return 2;
        }
        if (cfg.userns) {
            fprintf(stderr, "mathrun-jail: --userns is for unprivileged mode (no --uid)\n");
            return 2;
        }
    }
    env[nenv] = NULL;
    char **prog = argv + optind;

    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, &old);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    /* If the server dies, SIGTERM (blocked, so it waits for sigwaitinfo)
     * makes us kill the job: no job outlives its wall-clock limit's keeper. */
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);

    int errpipe[2], statpipe[2];
    if (pipe2(errpipe, O_CLOEXEC) < 0 || pipe2(statpipe, O_CLOEXEC) < 0) {
        perror("mathrun-jail: pipe");
        return 1;
    }
    cfg.status_fd = statpipe[1];
    pid_t pid = jail_fork(&cfg);
    if (pid < 0) {
        /* No namespace for the job (user namespaces disabled, their limit
         * reached): a report like any failed job's, not a bare exit. */
        char line[128];
        int n = snprintf(line, sizeof line, "status=failed stage=namespaces errno=%d wall=%.6f\n", errno,
                         since(&t0));
        perror("mathrun-jail: fork");
        if (write(report_fd, line, n) < 0) {}
        return 1;
    }
    if (pid == 0) {
        int err[2];
        close(errpipe[0]);
        if (report_fd > 2)
            close(report_fd);
        /* The job starts with default signal dispositions and no mask,
         * whatever the server had. */
        for (int sig = 1; sig < NSIG; sig++)
            signal(sig, SIG_DFL);
        sigemptyset(&old);
        sigprocmask(SIG_SETMASK, &old, NULL);
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if (jail_enter(&cfg) < 0) {
            err[0] = 1;
            err[1] = errno;
            if (write(errpipe[1], err, sizeof err) < 0) {}
            _exit(126);
        }
        environ = env;
        execvp(prog[0], prog);
        err[0] = 2;
        err[1] = errno;
        fprintf(stderr, "%s: exec of '%s' failed (%s)\n", prog[0], prog[0], strerror(errno));
        if (write(errpipe[1], err, sizeof err) < 0) {}
        _exit(127);
    }
    close(errpipe[1]);
    close(statpipe[1]);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int fd = 0; fd < 3; fd++)
        if (fd != report_fd)
            dup2(devnull, fd);

    int err[2] = {0, 0};
    ssize_t got;
    do
        got = read(errpipe[0], err, sizeof err);
    while (got < 0 && errno == EINTR);
    close(errpipe[0]);

    struct outcome out = {0, 0};
    int killed = 0;
    siginfo_t info;
    while (!out.have_status) {
        int sig = sigwaitinfo(&set, &info);
        if (sig == SIGCHLD) {
            reap(pid, &out, 0);
        } else if (sig > 0) {
            killed = 1;
            kill_everything(&cfg, pid);
        }
    }
    /* With a PID namespace: its init ends with the main process, and once
     * it is reaped nothing of the namespace is left (it says whether there
     * was anything); its rusage holds the orphans'. */
    struct rusage ru_init;
    memset(&ru_init, 0, sizeof ru_init);
    int init_left = jail_reap_init(pid, &ru_init);
    /* The main process is gone: whatever it left behind goes too.  As the
     * subreaper we inherit every orphan, so "no child left" means "no
     * process of the job left". */
    int leftover = init_left == 1 || waitpid(-1, NULL, WNOHANG) >= 0 || errno != ECHILD;
    if (cfg.userns && cfg.pidns) {
        /* The namespace's init (what we waited for) says how the job's main
         * process ended, and whether it left others (ended with the init). */
        struct jail_status js;
        if (read(statpipe[0], &js, sizeof js) == (ssize_t)sizeof js) {
            out.status = js.wait_status;
            leftover = js.leftover;
        }
    }
    close(statpipe[0]);
    int remaining = 0;
    if (leftover || killed) {
        kill_everything(&cfg, cfg.userns ? 0 : pid); /* a reaped init is never signalled again */
        if (cfg.uid == (uid_t)-1) {
            while (waitpid(-1, NULL, WNOHANG) >= 0 || errno != ECHILD) {
                kill_descendants(getpid());
                struct timespec ts = {0, 200000};
                nanosleep(&ts, NULL);
            }
        } else {
            reap(pid, &out, 1);
            remaining = jail_count_user_processes(cfg.uid);
        }
    }

    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    timeradd(&ru.ru_utime, &ru_init.ru_utime, &ru.ru_utime);
    timeradd(&ru.ru_stime, &ru_init.ru_stime, &ru.ru_stime);
    if (ru_init.ru_maxrss > ru.ru_maxrss)
        ru.ru_maxrss = ru_init.ru_maxrss;
    char line[512];
    int n;
    if (got == (ssize_t)sizeof err)
        n = snprintf(line, sizeof line, "status=failed stage=%s errno=%d",
                     err[0] == 1 ? "jail" : "exec", err[1]);
    else if (WIFSIGNALED(out.status))
        n = snprintf(line, sizeof line, "status=signalled signal=%d", WTERMSIG(out.status));
    else
        n = snprintf(line, sizeof line, "status=exited code=%d", WEXITSTATUS(out.status));
    n += snprintf(line + n, sizeof line - n,
                  " utime=%ld.%06ld stime=%ld.%06ld maxrss_kb=%ld wall=%.6f"
                  " leftover=%d killed=%d remaining=%d\n",
                  (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec,
                  (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec, ru.ru_maxrss,
                  since(&t0), leftover, killed, remaining);
    if (write(report_fd, line, n) < 0)
        return 1;
    return remaining ? 1 : 0;
}

static int reap_user(int argc, char **argv)
{
    static struct option opts[] = {{"uid", required_argument, 0, 'u'},
                                   {"kill-ruid", required_argument, 0, 'k'},
                                   {"kill-lock", required_argument, 0, 'l'},
                                   {0, 0, 0, 0}};
    long long uid = -1, kill_ruid = -1;
    const char *lock = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        if (c == 'u')
            uid = number(optarg, "uid");
        else if (c == 'k')
            kill_ruid = number(optarg, "kill-ruid");
        else if (c == 'l')
            lock = optarg;
        else
            usage();
    }
    if (uid <= 0 || kill_ruid <= 0 || uid == kill_ruid)
        usage();
    if (jail_kill_user((uid_t)uid, (uid_t)kill_ruid, lock) < 0) {
        fprintf(stderr, "mathrun-jail: processes of uid %lld survive: %s\n", uid,
                strerror(errno));
        return 1;
    }
    return 0;
}

/* The optional fields of a reaper request after the UID: " FILE" (an
 * absolute path) and " umount=DIR" (an absolute path), in that order. */
static int reaper_fields(char *rest, char **count_file, char **workspace)
{
    char *save = NULL, *word;
    if (*rest && *rest != ' ')
        return -1;
    for (word = strtok_r(rest, " ", &save); word; word = strtok_r(NULL, " ", &save)) {
        if (word[0] == '/' && !*count_file && !*workspace)
            *count_file = word;
        else if (strncmp(word, "umount=/", 8) == 0 && !*workspace)
            *workspace = word + 7;
        else
            return -1;
    }
    return 0;
}

/* `reap` for a long-lived server: one request per line on stdin, "UID",
 * "UID FILE" (FILE: the pids.current that counts the user's processes),
 * either with " umount=DIR" after it (DIR: the job's tmpfs workspace,
 * detached once nothing of the user is left: umount2 waits out an RCU grace
 * period, better here than on the server's reactor), one answer per line on
 * stdout ("ok UID" or "failed UID reason"), until stdin ends.  Saves the
 * server a process spawn per job. */
static int reaper(int argc, char **argv)
{
    static struct option opts[] = {{"kill-ruid", required_argument, 0, 'k'},
                                   {"kill-lock", required_argument, 0, 'l'},
                                   {0, 0, 0, 0}};
    long long kill_ruid = -1;
    const char *lock = NULL;
    char line[4200];
    int c;
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        if (c == 'k')
            kill_ruid = number(optarg, "kill-ruid");
        else if (c == 'l')
            lock = optarg;
        else
            usage();
    }
    if (kill_ruid <= 0)
        usage();
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        char *end, *count_file = NULL, *workspace = NULL;
        line[strcspn(line, "\n")] = 0;
        errno = 0;
        long long uid = strtoll(line, &end, 10);
        if (reaper_fields(end, &count_file, &workspace) < 0)
            uid = -1;
        if (errno || end == line || uid <= 0 || uid == kill_ruid) {
            printf("failed - bad request\n");
            continue;
        }
        errno = 0;
        if (jail_kill_user_counted((uid_t)uid, (uid_t)kill_ruid, lock, count_file) < 0)
            printf("failed %lld %s\n", uid, errno ? strerror(errno) : "processes survived");
        else if (workspace && umount2(workspace, MNT_DETACH | UMOUNT_NOFOLLOW) < 0)
            printf("failed %lld unmount %s: %s\n", uid, workspace, strerror(errno));
        else
            printf("ok %lld\n", uid);
    }
    return 0;
}

/* A network namespace with only a loopback interface, left down, persisted
 * by a bind mount so that jobs can join it for almost nothing.  One per
 * path: the server makes one per job user at start, in one process. */
static int mknetns(const char *path)
{
    struct statfs sf;
    if (statfs(path, &sf) == 0 && sf.f_type == NSFS_MAGIC)
        return 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0444);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    close(fd);
    if (unshare(CLONE_NEWNET) < 0 || mount("/proc/self/ns/net", path, NULL, MS_BIND, NULL) < 0) {
        perror("mathrun-jail: mknetns");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    if (strcmp(argv[1], "run") == 0)
        return run(argc - 1, argv + 1);
    if (strcmp(argv[1], "reap") == 0)
        return reap_user(argc - 1, argv + 1);
    if (strcmp(argv[1], "reaper") == 0)
        return reaper(argc - 1, argv + 1);
    if (strcmp(argv[1], "nsinit") == 0 && argc == 2)
        jail_namespace_init(0, 1); /* PID 1 for jail_fork_with_init */
    if (strcmp(argv[1], "mknetns") == 0 && argc >= 3) {
        for (int i = 2; i < argc; i++)
            if (mknetns(argv[i]) != 0)
                return 1;
        return 0;
    }
    usage();
    return 2;
}
