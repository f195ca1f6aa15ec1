/* Killing every process of a job user, and counting them; see jail.h. */
#define _GNU_SOURCE
#include "jail.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* kill(-1) rounds until the user has no process: fast at first (a job's
 * processes die within microseconds), then slower (about 4 s in all). */
#define KILL_ROUNDS 2000
#define FAST_ROUNDS 50
#define FAST_PAUSE_US 100
#define SLOW_PAUSE_US 2000

static void pause_briefly(long usec)
{
    struct timespec ts = {0, usec * 1000};
    nanosleep(&ts, NULL);
}

ssize_t jail_read_file(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = 0;
    return n;
}

int jail_count_file(const char *path)
{
    char buf[32];
    if (jail_read_file(path, buf, sizeof buf) <= 0)
        return -1;
    char *end;
    long v = strtol(buf, &end, 10);
    return (end == buf || v < 0) ? -1 : (int)v;
}

/* Whether process PID (a /proc name) is alive and has `uid` as its real,
 * effective or saved uid: what kill(-1) as that uid reaches. */
static int of_user(const char *pid, uid_t uid)
{
    char path[300], buf[1024];
    snprintf(path, sizeof path, "/proc/%s/status", pid);
    if (jail_read_file(path, buf, sizeof buf) <= 0)
        return 0;
    char *state = strstr(buf, "\nState:\t");
    char *uids = strstr(buf, "\nUid:\t");
    if (!state || !uids || state[8] == 'Z' || state[8] == 'X')
        return 0;
    unsigned long r, e, sv;
    return sscanf(uids + 6, "%lu %lu %lu", &r, &e, &sv) == 3 && (r == uid || e == uid || sv == uid);
}

/* A slot's keeper (root) sits in the slot's pids cgroup, so its count is
 * never 0 there: count the user's processes among those the cgroup lists
 * (cgroup.procs beside COUNT_FILE).  -1 if that list cannot be read. */
static int count_in_cgroup(const char *count_file, uid_t uid)
{
    char path[4096], pid[32];
    const char *slash = strrchr(count_file, '/');
    if (!slash || (size_t)(slash - count_file) + sizeof "/cgroup.procs" > sizeof path)
        return -1;
    snprintf(path, sizeof path, "%.*s/cgroup.procs", (int)(slash - count_file), count_file);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    int left = 0;
    while (fscanf(f, "%31s", pid) == 1)
        left += of_user(pid, uid);
    fclose(f);
    return left;
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
    for (int round = 0; round < KILL_ROUNDS; round++) {
        kill(-1, SIGKILL);
        int left = count_file ? jail_count_file(count_file) : -1;
        if (left > 0)
            left = count_in_cgroup(count_file, uid); /* a keeper there is not the user's */
        if (left < 0)
            left = jail_count_user_processes(uid);
        if (left == 0) {
            result = 0;
            break;
        }
        pause_briefly(round < FAST_ROUNDS ? FAST_PAUSE_US : SLOW_PAUSE_US);
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
        count += of_user(de->d_name, uid);
    }
    closedir(d);
    return count;
}
