/* Confinement steps for one job; see jail.h. */
#define _GNU_SOURCE
#include "jail.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int set_limit(int resource, long long value, long long hard_extra)
{
    struct rlimit rl;
    if (value < 0)
        return 0;
    rl.rlim_cur = (rlim_t)value;
    rl.rlim_max = (rlim_t)(value + hard_extra);
    return setrlimit(resource, &rl);
}

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

static int join_cgroups(const struct jail_config *cfg)
{
    char path[4096], pid[32];
    snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    for (int i = 0; i < cfg->ncgroups; i++) {
        snprintf(path, sizeof path, "%s/cgroup.procs", cfg->cgroups[i]);
        if (write_file(path, pid) < 0)
            return -1;
    }
    return 0;
}

/* A private view of the shared writable directories: the job's files there
 * live in its own workspace and vanish with it.  Its own IPC namespace too,
 * so that SysV IPC objects and POSIX message queues die with the job.  With
 * a PID namespace, a /proc of it (mounted by a process inside it, as the
 * kernel wants): the job sees only its own processes there. */
static int mkdir_parents(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p)
            continue;
        char c = *p;
        *p = 0;
        if (mkdir(buf, 0700) < 0 && errno != EEXIST)
            return -1;
        if (!c)
            return 0;
        *p = c;
    }
}

/* A workspace under one of the private directories (unprivileged mode's
 * job root is in /tmp by default) is hidden by them: bound back at its own
 * path, so that $HOME and the absolute paths a tool was given still work. */
static int keep_workspace_visible(int fd, const char *path)
{
    struct stat then, now;
    char source[64];
    if (fstat(fd, &then) < 0)
        return -1;
    if (stat(path, &now) == 0 && now.st_dev == then.st_dev && now.st_ino == then.st_ino)
        return 0;
    if (mkdir_parents(path) < 0)
        return -1;
    snprintf(source, sizeof source, "/proc/self/fd/%d", fd);
    return mount(source, path, NULL, MS_BIND, NULL);
}

/* The job's private tmp/ (held open as TMP_FD, so that the first mount
 * cannot shadow the source) bound over each of the host's temporary
 * directories that exists: -1 (errno) on a failed mount. */
int jail_bind_tmp(int tmp_fd)
{
    static const char *targets[] = {"/tmp", "/var/tmp", "/dev/shm", "/run/lock", NULL};
    char source[64];
    snprintf(source, sizeof source, "/proc/self/fd/%d", tmp_fd);
    for (int i = 0; targets[i]; i++) {
        struct stat st;
        if (stat(targets[i], &st) < 0 || !S_ISDIR(st.st_mode))
            continue;
        if (mount(source, targets[i], NULL, MS_BIND, NULL) < 0)
            return -1;
    }
    return 0;
}

static int private_mounts(const struct jail_config *cfg)
{
    if (unshare(CLONE_NEWNS | CLONE_NEWIPC) < 0)
        return -1;
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
        return -1;
    if (cfg->pidns && mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible") < 0)
        return -1;
    if (!cfg->tmp)
        return 0;
    /* Held open so that the first mount cannot shadow the source. */
    int fd = open(cfg->tmp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char root[4096];
    int root_fd = -1;
    if (cfg->dir && snprintf(root, sizeof root, "%s", cfg->dir) < (int)sizeof root && strrchr(root, '/') > root) {
        *strrchr(root, '/') = 0; /* the workspace root, parent of the cwd */
        root_fd = open(root, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (root_fd < 0)
            return -1;
    }
    if (jail_bind_tmp(fd) < 0)
        return -1;
    close(fd);
    if (root_fd >= 0) {
        int r = keep_workspace_visible(root_fd, root);
        close(root_fd);
        return r;
    }
    return 0;
}

static int enter_netns(const struct jail_config *cfg)
{
    if (cfg->netns) {
        int fd = open(cfg->netns, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return -1;
        int r = setns(fd, CLONE_NEWNET);
        int saved = errno;
        close(fd);
        errno = saved;
        return r;
    }
    if (cfg->unshare_net)
        return unshare(CLONE_NEWNET);
    return 0;
}

/* ---- Unprivileged mode: a user namespace per job (branch unpriv) ---- */

static uid_t outer_uid = (uid_t)-1;
static gid_t outer_gid = (gid_t)-1;
static int ids_mapped;

static void remember_outer_ids(void)
{
    outer_uid = geteuid();
    outer_gid = getegid();
    ids_mapped = 0;
}

int jail_enter_userns(void)
{
    char line[64];
    if (ids_mapped)
        return 0;
    if (outer_uid == (uid_t)-1) {
        errno = EINVAL;
        return -1;
    }
    snprintf(line, sizeof line, "%u %u 1\n", (unsigned)outer_gid, (unsigned)outer_gid);
    if (write_file("/proc/self/setgroups", "deny") < 0 || write_file("/proc/self/gid_map", line) < 0)
        return -1;
    snprintf(line, sizeof line, "%u %u 1\n", (unsigned)outer_uid, (unsigned)outer_uid);
    if (write_file("/proc/self/uid_map", line) < 0)
        return -1;
    ids_mapped = 1;
    return 0;
}

/* The job keeps no capability in its namespace (the Maxima child never
 * execs, so nothing would drop them), and it may make no user namespace of
 * its own: one would give it capabilities there again. */
static int drop_capabilities(void);

static int userns_lockdown(void)
{
    if (write_file("/proc/sys/user/max_user_namespaces", "0\n") < 0)
        return -1;
    return drop_capabilities();
}

static unsigned long ns_flags(const struct jail_config *cfg)
{
    return (cfg->userns ? CLONE_NEWUSER : 0) | (cfg->pidns ? CLONE_NEWPID : 0);
}

static int drop_capabilities(void)
{
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    memset(data, 0, sizeof data);
    return (int)syscall(SYS_capset, &head, data);
}

/* pid 1 of the job's namespace: no descriptor but the status one, no
 * capability, not dumpable (no job process may trace it); reaps every
 * orphan while the job runs, reports when its main process ends. */
static void namespace_init(const struct jail_config *cfg, pid_t job)
{
    struct jail_status report = {0, 0};
    int fd = cfg->status_fd > 0 ? cfg->status_fd : -1, st;
    pid_t p;

    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (fd < 0) {
        syscall(SYS_close_range, 0U, ~0U, 0U);
    } else {
        syscall(SYS_close_range, 0U, (unsigned)fd - 1, 0U);
        syscall(SYS_close_range, (unsigned)fd + 1, ~0U, 0U);
    }
    if (drop_capabilities() < 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        _exit(126);
    while ((p = waitpid(-1, &st, 0)) != job)
        if (p < 0 && errno != EINTR)
            _exit(126);
    report.wait_status = st;
    report.leftover = waitpid(-1, NULL, WNOHANG) >= 0; /* some child is left */
    if (fd >= 0 && write(fd, &report, sizeof report) < 0) {}
    _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
}

/* A network namespace made once (a slot's, as root) is entered before the
 * user namespace, whose processes have no capability over it: the caller
 * goes in for the clone and comes back.  Returns the caller's own, or -1
 * (errno) when it could not go in; -2 when there is nothing to enter. */
static int enter_slot_netns(const struct jail_config *cfg)
{
    static int own = -1;
    if (!cfg->userns || !cfg->netns)
        return -2;
    if (own < 0 && (own = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) < 0)
        return -1;
    int fd = open(cfg->netns, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int r = setns(fd, CLONE_NEWNET), saved = errno;
    close(fd);
    errno = saved;
    return r < 0 ? -1 : own;
}

pid_t jail_fork_userns(const struct jail_config *cfg)
{
    unsigned long flags = ns_flags(cfg);
    if (!flags)
        return fork();
    if (cfg->userns)
        remember_outer_ids();
    int own_net = enter_slot_netns(cfg);
    if (own_net == -1)
        return -1;
    /* A clone without a new stack is a fork into the new namespaces (as
     * bubblewrap's raw_clone); the child only makes plain system calls and
     * a fork before the job's exec. */
    pid_t pid = (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, 0UL);
    int saved = errno;
    if (pid != 0 && own_net >= 0 && setns(own_net, CLONE_NEWNET) < 0)
        abort(); /* children in the wrong namespace from now on: refuse to go on */
    errno = saved;
    if (pid != 0 || !cfg->pidns)
        return pid;
    if (cfg->userns && jail_enter_userns() < 0)
        _exit(126);
    pid_t job = fork();
    if (job < 0)
        _exit(126);
    if (job > 0)
        namespace_init(cfg, job);
    return 0;
}

int jail_unshare(const struct jail_config *cfg)
{
    if (cfg->userns) {
        remember_outer_ids();
        if (unshare(CLONE_NEWUSER) < 0 || jail_enter_userns() < 0)
            return -1;
    }
    if (cfg->pidns && unshare(CLONE_NEWPID) < 0)
        return -1;
    return 0;
}

/* ---- end of the unprivileged-mode block ---- */

int jail_enter(const struct jail_config *cfg)
{
    int privileged = cfg->uid != (uid_t)-1;

    if (privileged && (cfg->uid == 0 || cfg->gid == 0)) {
        errno = EPERM;
        return -1;
    }
    if (cfg->userns && jail_enter_userns() < 0)
        return -1;
    if (setsid() < 0)
        return -1;
    if (join_cgroups(cfg) < 0)
        return -1;
    /* Before the private /tmp, which may hide the workspace's path. */
    if (cfg->dir && chdir(cfg->dir) < 0)
        return -1;
    if ((privileged || cfg->userns) && (cfg->tmp || cfg->pidns) && private_mounts(cfg) < 0)
        return -1;
    /* (With a user namespace, a slot's network namespace was entered by
     * jail_fork_userns, before it.) */
    if (!(cfg->userns && cfg->netns) && enter_netns(cfg) < 0)
        return -1;
    if (set_limit(RLIMIT_CORE, 0, 0) < 0
        || set_limit(RLIMIT_CPU, cfg->cpu, 1) < 0
        || set_limit(RLIMIT_AS, cfg->as, 0) < 0
        || set_limit(RLIMIT_FSIZE, cfg->fsize, 0) < 0
        || set_limit(RLIMIT_NOFILE, cfg->nofile, 0) < 0)
        return -1;
    /* In its own user namespace the job's processes are counted apart from
     * every other process of the same uid (Linux >= 5.14): RLIMIT_NPROC is
     * the job's own, as it is a job user's. */
    if (privileged && set_limit(RLIMIT_NPROC, cfg->nproc, 0) < 0)
        return -1;
    /* The namespace's init is of the same user namespace: not the job's. */
    if (!privileged && cfg->userns && set_limit(RLIMIT_NPROC, cfg->nproc < 0 ? -1 : cfg->nproc + cfg->pidns, 0) < 0)
        return -1;
    if (cfg->userns && userns_lockdown() < 0)
        return -1;
    if (privileged) {
        if (setgroups(0, NULL) < 0
            || setresgid(cfg->gid, cfg->gid, cfg->gid) < 0
            || setresuid(cfg->uid, cfg->uid, cfg->uid) < 0)
            return -1;
        uid_t r, e, s;
        if (getresuid(&r, &e, &s) < 0 || r == 0 || e == 0 || s == 0) {
            errno = EPERM;
            return -1;
        }
    }
    /* No setuid binary may hand the job privileges back. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return -1;
    /* Last: the filter denies what the steps above needed (mount, setns). */
    if (cfg->seccomp && jail_seccomp() < 0)
        return -1;
    return 0;
}
