/* Confinement steps for one job; see jail.h. */
#define _GNU_SOURCE
#include "jail.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
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
 * kernel wants): the job sees only its own user's processes there. */
static int private_mounts(const char *tmp, int pidns)
{
    static const char *targets[] = {"/tmp", "/var/tmp", "/dev/shm", "/run/lock", NULL};
    char source[64];
    if (unshare(CLONE_NEWNS | CLONE_NEWIPC) < 0)
        return -1;
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
        return -1;
    if (pidns && mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible") < 0)
        return -1;
    if (!tmp)
        return 0;
    /* Held open so that the first mount cannot shadow the source. */
    int fd = open(tmp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    snprintf(source, sizeof source, "/proc/self/fd/%d", fd);
    for (int i = 0; targets[i]; i++) {
        struct stat st;
        if (stat(targets[i], &st) < 0 || !S_ISDIR(st.st_mode))
            continue;
        if (mount(source, targets[i], NULL, MS_BIND, NULL) < 0)
            return -1;
    }
    close(fd);
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

int jail_enter(const struct jail_config *cfg)
{
    int privileged = cfg->uid != (uid_t)-1;

    if (privileged && (cfg->uid == 0 || cfg->gid == 0)) {
        errno = EPERM;
        return -1;
    }
    if (setsid() < 0)
        return -1;
    if (join_cgroups(cfg) < 0)
        return -1;
    /* Before the private /tmp, which may hide the workspace's path. */
    if (cfg->dir && chdir(cfg->dir) < 0)
        return -1;
    if (privileged && (cfg->tmp || cfg->pidns) && private_mounts(cfg->tmp, cfg->pidns) < 0)
        return -1;
    if (enter_netns(cfg) < 0)
        return -1;
    if (set_limit(RLIMIT_CORE, 0, 0) < 0
        || set_limit(RLIMIT_CPU, cfg->cpu, 1) < 0
        || set_limit(RLIMIT_AS, cfg->as, 0) < 0
        || set_limit(RLIMIT_FSIZE, cfg->fsize, 0) < 0
        || set_limit(RLIMIT_NOFILE, cfg->nofile, 0) < 0)
        return -1;
    if (privileged) {
        if (set_limit(RLIMIT_NPROC, cfg->nproc, 0) < 0)
            return -1;
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

static void pause_briefly(long usec)
{
    struct timespec ts = {0, usec * 1000};
    nanosleep(&ts, NULL);
}

static int count_from_file(const char *path)
{
    char buf[32];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *end;
    long v = strtol(buf, &end, 10);
    return (end == buf || v < 0) ? -1 : (int)v;
}

int jail_kill_user(uid_t uid, uid_t kill_ruid, const char *lock)
{
    return jail_kill_user_counted(uid, kill_ruid, lock, NULL);
}

int jail_kill_user_counted(uid_t uid, uid_t kill_ruid, const char *lock, const char *count_file)
{
    uid_t r0, e0, s0;
    int result = -1, lock_fd = -1;

    if (uid == 0 || kill_ruid == 0 || uid == kill_ruid) {
        errno = EINVAL;
        return -1;
    }
    if (getresuid(&r0, &e0, &s0) < 0)
        return -1;
    if (lock) {
        lock_fd = open(lock, O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (lock_fd < 0 || flock(lock_fd, LOCK_EX) < 0)
            return -1;
    }
    /* Keep saved uid 0 so that we can come back. */
    if (setresuid(kill_ruid, uid, 0) < 0) {
        if (lock_fd >= 0)
            close(lock_fd);
        return -1;
    }
    /* kill(-1) signals the whole user at once under the task-list lock, so
     * a fork bomb cannot outrun it; it reports success even when it found
     * nobody, so /proc tells when they are all gone. */
    for (int round = 0; round < 2000; round++) {
        kill(-1, SIGKILL);
        int left = count_file ? count_from_file(count_file) : -1;
        if (left < 0)
            left = jail_count_user_processes(uid);
        if (left == 0) {
            result = 0;
            break;
        }
        pause_briefly(round < 50 ? 100 : 2000);
    }
    if (setresuid(r0, e0, s0) < 0)
        abort(); /* cannot return to root: refuse to go on half-dropped */
    if (lock_fd >= 0)
        close(lock_fd);
    return result;
}

int jail_count_user_processes(uid_t uid)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    int count = 0;
    pid_t self = getpid();
    char path[300], buf[1024];

    if (!d)
        return -1;
    while ((de = readdir(d))) {
        struct stat st;
        if (!isdigit((unsigned char)de->d_name[0]) || atoi(de->d_name) == self)
            continue;
        /* /proc/PID belongs to the process's effective uid, or to root once
         * it made itself non-dumpable: a cheap filter before the status. */
        if (fstatat(dirfd(d), de->d_name, &st, 0) < 0 || (st.st_uid != uid && st.st_uid != 0))
            continue;
        snprintf(path, sizeof path, "/proc/%s/status", de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = 0;
        char *state = strstr(buf, "\nState:\t");
        char *uids = strstr(buf, "\nUid:\t");
        if (!state || !uids || state[8] == 'Z' || state[8] == 'X')
            continue;
        unsigned long r, e, sv;
        if (sscanf(uids + 6, "%lu %lu %lu", &r, &e, &sv) == 3 && (r == uid || e == uid || sv == uid))
            count++;
    }
    closedir(d);
    return count;
}
