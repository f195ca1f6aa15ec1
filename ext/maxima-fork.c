/* The fork channel of the Maxima mother process, loaded into SBCL as a
 * shared object (libmathrun-fork.so) and called from lisp/mathrun-mother.lisp.
 *
 * mathrun_fork_loop() never returns in the mother: it reads one request per
 * line on stdin, forks, and answers on stdout.  It returns only in a child,
 * once that child holds its named pipes as stdio and has entered its job's
 * confinement (jail_enter: setsid, cgroups, private /tmp, its own network
 * namespace, rlimits, job user, seccomp filter).  As root each child is
 * forked into the PID namespace of its slot's keeper (`maxima-nsinit`, found
 * next to this library; ext/maxima-slot.c) and enters a copy of the
 * keeper's mount namespace: the child sees only its own processes in /proc.
 * The child then goes back to the Maxima REPL, which reads the job's input
 * from the pipe.  Doing all this in C, outside any Lisp handler, means that a
 * child's error can never unwind into the mother's loop.
 *
 * Request:  fork TOKEN UID GID ROOT CPU FSIZE NOFILE NPROC [CGROUP...] [netns=FILE]
 *           (UID -1: unprivileged mode, no user switch but a user and a PID
 *           namespace of its own; a limit of -1: none; FILE: the network
 *           namespace the child joins)
 * Answers:  forked TOKEN PID          from the mother
 *           failed TOKEN MESSAGE      from the mother or the failing child
 * ROOT holds inpipe and outpipe (made by the server, which already holds
 * their other ends open), work/ (the cwd) and tmp/ (the private /tmp).
 */
#define _GNU_SOURCE
#include "jail.h"
#include "maxima-slot.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_LINE 8192
#define MOTHER_NICE 10
#define MAX_WORDS (10 + JAIL_MAX_CGROUPS)

static char child_root[PATH_MAX - 64];
static int fresh_netns; /* unprivileged mode: each child its own network namespace */
static unsigned int child_seed[8];
static struct sigaction saved_sigchld;

static void say(int fd, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    /* One write below PIPE_BUF: lines of mother and children never mix. */
    ssize_t r = write(fd, line, n);
    (void)r;
}

/* One line from fd 0, without the newline; 0 at end of input. */
static int read_line(char *line, size_t size)
{
    static char buf[MAX_LINE];
    static size_t have = 0;
    for (;;) {
        char *nl = memchr(buf, '\n', have);
        if (nl) {
            size_t len = nl - buf;
            if (len >= size)
                len = size - 1;
            memcpy(line, buf, len);
            line[len] = 0;
            have -= nl + 1 - buf;
            memmove(buf, nl + 1, have);
            return 1;
        }
        if (have == sizeof buf)
            have = 0; /* an over-long line: dropped */
        ssize_t n = read(0, buf + have, sizeof buf - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        have += n;
    }
}

static int parse_number(const char *word, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(word, &end, 10);
    if (errno || end == word || *end)
        return -1;
    *out = v;
    return 0;
}

/* The PID namespace's init: waits until every process of the job has
 * ended (gnuplot may still be writing a plot when Maxima exits, as it would
 * outside a namespace), then exits, which ends the namespace.  It never
 * goes back to Lisp: no SBCL handler, no descriptor, no capability; not
 * dumpable, so that no process of the job can trace it. */
static void namespace_init(pid_t job)
{
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    int status = 0, st;
    pid_t p;

    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &head, data) < 0 || prctl(PR_SET_DUMPABLE, 0) < 0)
        _exit(126);
    syscall(SYS_close_range, 0U, ~0U, 0U);
    while ((p = waitpid(-1, &st, 0)) > 0 || errno == EINTR)
        if (p == job)
            status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    _exit(status);
}

/* Unprivileged: this first child enters the new user namespace and forks
 * the new PID namespace's init, which forks the job.  The first child
 * reports the init's pid (in the server's namespace: killing it ends the
 * job) and ends.  Returns 0 in the job. */
static int unprivileged_fork(const char *token, const struct jail_config *cfg)
{
    if (jail_unshare(cfg) < 0)
        return -1;
    pid_t init = fork();
    if (init < 0)
        return -1;
    if (init > 0) {
        say(1, "forked %s %d", token, (int)init);
        _exit(0);
    }
    pid_t job = fork();
    if (job < 0)
        return -1;
    if (job > 0)
        namespace_init(job);
    return 0;
}

/* In the child: the pipes as stdio, the job's confinement, nothing else
 * open.  On failure the reason goes to the mother's stdout (still fd 1). */
/* The jail of a child from the fork request's words (uid, gid, root,
 * limits, then netns= and cgroup directories); `work` and `tmp` (PATH_MAX
 * each) hold the paths the config points to.  -1 for a malformed request. */
static int child_config(char **w, int nwords, struct jail_config *cfg, char *work, char *tmp)
{
    long long uid, gid;
    memset(cfg, 0, sizeof *cfg);
    if (parse_number(w[2], &uid) < 0 || parse_number(w[3], &gid) < 0
        || parse_number(w[5], &cfg->cpu) < 0 || parse_number(w[6], &cfg->fsize) < 0
        || parse_number(w[7], &cfg->nofile) < 0 || parse_number(w[8], &cfg->nproc) < 0
        || w[4][0] != '/' || strlen(w[4]) >= sizeof child_root)
        return -1;
    cfg->uid = (uid_t)uid;
    cfg->gid = (gid_t)gid;
    cfg->as = -1; /* SBCL reserves its whole heap: memory is the cgroup's job */
    for (int i = 9; i < nwords; i++) {
        if (strncmp(w[i], "netns=", 6) == 0)
            cfg->netns = w[i] + 6;
        else if (cfg->ncgroups < JAIL_MAX_CGROUPS)
            cfg->cgroups[cfg->ncgroups++] = w[i];
    }
    /* Unprivileged: the PID namespace the child's fork makes gets a /proc
     * (as root, the slot's keeper has one: maxima_slot_enter clears it). */
    cfg->pidns = 1;
    cfg->seccomp = 1;
    snprintf(child_root, sizeof child_root, "%s", w[4]);
    snprintf(work, PATH_MAX, "%s/work", child_root);
    snprintf(tmp, PATH_MAX, "%s/tmp", child_root);
    cfg->dir = work;
    cfg->tmp = tmp;
    /* Unprivileged: a user and a PID namespace of its own bound the child's
     * processes (RLIMIT_NPROC counts them apart) and end them all with it. */
    cfg->userns = cfg->uid == (uid_t)-1;
    cfg->unshare_net = cfg->userns && fresh_netns;
    return 0;
}

static void child_setup(const char *token, char **w, int nwords)
{
    struct jail_config cfg;
    char path[PATH_MAX], work[PATH_MAX], tmp[PATH_MAX];
    const char *step = "request";

    sigaction(SIGCHLD, &saved_sigchld, NULL); /* run-program must wait for gnuplot */
    if (child_config(w, nwords, &cfg, work, tmp) < 0)
        goto fail_einval;

    /* The server holds the read end of outpipe and both ends of inpipe,
     * so neither open blocks. */
    step = "open outpipe";
    snprintf(path, sizeof path, "%s/outpipe", child_root);
    /* Non-blocking: a server that died since the request holds no reader,
     * and a blocking open would wait for one forever (ENXIO instead). */
    int out = open(path, O_WRONLY | O_NOFOLLOW | O_NONBLOCK);
    if (out < 0 || fcntl(out, F_SETFL, 0) < 0)
        goto fail;
    step = "open inpipe";
    snprintf(path, sizeof path, "%s/inpipe", child_root);
    int in = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
    if (in < 0 || fcntl(in, F_SETFL, 0) < 0)
        goto fail;
    if (cfg.userns) {
        step = "enter the namespaces";
        if (unprivileged_fork(token, &cfg) < 0)
            goto fail;
    }
    if (!cfg.userns && maxima_slot_enter(&cfg, child_root, &step) < 0)
        goto fail;
    step = "enter the jail";
    if (jail_enter(&cfg) < 0)
        goto fail;
    /* Each child its own random state (the mother's is in the core). */
    step = "getrandom";
    if (getrandom(child_seed, sizeof child_seed, 0) != (ssize_t)sizeof child_seed)
        goto fail;
    step = "set up stdio";
    if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0)
        goto fail;
    if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0) {
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
    }
    /* The mother runs with LD_BIND_NOW (every symbol resolved once, there);
     * what the job runs loads as usual. */
    unsetenv("LD_BIND_NOW");
    return;

fail_einval:
    errno = EINVAL;
fail:
    say(1, "failed %s %s: %s", token, step, strerror(errno));
    _exit(126);
}

/* maxima-nsinit, in the directory this library was loaded from. */
static int find_init(void)
{
    Dl_info info;
    char path[PATH_MAX];
    if (!dladdr((void *)find_init, &info) || !info.dli_fname || !strrchr(info.dli_fname, '/')) {
        errno = ENOENT;
        return -1;
    }
    int dir = (int)(strrchr(info.dli_fname, '/') - info.dli_fname);
    snprintf(path, sizeof path, "%.*s/maxima-nsinit", dir, info.dli_fname);
    return maxima_slot_init(path);
}

/* Word I (0..7) of the child's random seed, drawn from the kernel at fork. */
unsigned int mathrun_child_seed(int i)
{
    return child_seed[i & 7];
}

/* Joins the network namespace NETNS (when not empty; "unshare": each
 * unprivileged child makes a fresh one), then serves fork
 * requests until stdin ends.  Returns the job's root directory, in the
 * child only. */
const char *mathrun_fork_loop(const char *netns)
{
    char line[MAX_LINE];
    char *w[MAX_WORDS];
    struct sigaction ignore;

    /* The mother dies with the server, in its own session (no signal from
     * a terminal reaches it).  It is its jobs' subreaper: whatever a job
     * leaves orphaned is reparented here and, with SIGCHLD ignored below,
     * reaped at once; left to init, zombies would linger and count against
     * the next job's RLIMIT_NPROC. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    setsid();
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    /* Forking and starting children is background work: a running job
     * goes first.  Children inherit the nice value; the server lowers it
     * to 0 when a child takes a request. */
    setpriority(PRIO_PROCESS, 0, MOTHER_NICE);
    fresh_netns = netns && strcmp(netns, "unshare") == 0;
    if (netns && *netns && !fresh_netns) {
        int fd = open(netns, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, 0) < 0) {
            say(1, "failed - join network namespace %s: %s", netns, strerror(errno));
            _exit(1);
        }
        close(fd);
    }
    /* Children are reaped by the kernel: the server learns a job's end from
     * its output pipe, and the mother never waits. */
    memset(&ignore, 0, sizeof ignore);
    ignore.sa_handler = SIG_IGN;
    ignore.sa_flags = SA_NOCLDWAIT;
    sigaction(SIGCHLD, &ignore, &saved_sigchld);
    if (jail_seccomp_prepare_maxima() < 0) { /* the slot's IPC namespace is shared */
        say(1, "failed - seccomp filter: %s", strerror(errno));
        _exit(1);
    }
    if (find_init() < 0) {
        say(1, "failed - no maxima-nsinit next to the fork library: %s", strerror(errno));
        _exit(1);
    }
    say(1, "mathrun-mother ready %d", (int)getpid());

    while (read_line(line, sizeof line)) {
        int n = 0;
        for (char *p = strtok(line, " "); p && n < MAX_WORDS; p = strtok(NULL, " "))
            w[n++] = p;
        if (n == 0)
            continue;
        if (strcmp(w[0], "fork") != 0 || n < 9) {
            say(1, "failed %s bad request", n > 1 ? w[1] : "-");
            continue;
        }
        /* As root (UID not -1), the child goes into its slot's namespaces. */
        const char *step = "fork";
        long long uid = -1;
        const char *netns = NULL;
        for (int i = 9; i < n; i++)
            if (strncmp(w[i], "netns=", 6) == 0)
                netns = w[i] + 6;
        pid_t pid;
        if (parse_number(w[2], &uid) < 0 || w[4][0] != '/')
            pid = -1, errno = EINVAL;
        else
            pid = uid != -1 ? maxima_slot_fork((uid_t)uid, w[4], netns, &step) : fork();
        if (pid < 0) {
            say(1, "failed %s %s: %s", w[1], step, strerror(errno));
            continue;
        }
        if (pid == 0) {
            child_setup(w[1], w, n);
            return child_root;
        }
        if (uid != -1) /* unprivileged: the child answers */
            say(1, "forked %s %d", w[1], (int)pid);
    }
    _exit(0);
}
