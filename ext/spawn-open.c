/* The spawn server's `open` request: a file opened (or created) with the
 * file-system identity of a front end's client, for the Why3 server's
 * input and output files.  The kernel makes the whole check, every
 * directory on the way and ACLs included, at the moment of the open: no
 * stat-then-open race, and the server never changes its effective uid.
 *
 *   -> open ID as-uid=U as-gid=G as-groups=G1,G2,... path=PATH
 *          a regular file PATH read as the client (a FIFO or a device: EINVAL)
 *   -> open ID as-uid=U as-gid=G as-groups=... create=NAME fds=1
 *          NAME made (O_EXCL, 0600) in the directory sent with the frame,
 *          owned by the client
 *   <- opened ID fds=1 (+ the descriptor)  |  opened ID errno=N
 *
 * A spawn request may make its job's output file the same way (its
 * output-create and as-* fields: spawn_create_output), with no round trip
 * of its own.
 *
 * setfsuid, setfsgid and setgroups are per thread (raw system calls) and
 * this process has one: they are set for the open and put back at once. */
#define _GNU_SOURCE
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_GROUPS 256

struct open_request {
    const char *id, *path, *create;
    long long uid, gid;
    gid_t groups[MAX_GROUPS];
    int ngroups;
};

static gid_t own_groups[MAX_GROUPS];
static int own_ngroups = -1;

static int parse_groups(struct open_request *rq, const char *list)
{
    for (const char *p = list; *p;) {
        char *end;
        long long g = strtoll(p, &end, 10);
        if (end == p || g < 0 || rq->ngroups == MAX_GROUPS || (*end && *end != ','))
            return -1;
        rq->groups[rq->ngroups++] = (gid_t)g;
        p = *end ? end + 1 : end;
    }
    return 0;
}

static int parse_open(char **fields, int n, struct open_request *rq)
{
    memset(rq, 0, sizeof *rq);
    rq->uid = rq->gid = -1;
    rq->id = fields[0];
    for (int i = 1; i < n; i++) {
        char *f = fields[i], *end;
        if (strncmp(f, "as-uid=", 7) == 0)
            rq->uid = strtoll(f + 7, &end, 10);
        else if (strncmp(f, "as-gid=", 7) == 0)
            rq->gid = strtoll(f + 7, &end, 10);
        else if (strncmp(f, "as-groups=", 10) == 0) {
            if (parse_groups(rq, f + 10) < 0)
                return -1;
            continue;
        } else if (strncmp(f, "path=", 5) == 0) {
            rq->path = f + 5;
            continue;
        } else if (strncmp(f, "create=", 7) == 0) {
            rq->create = f + 7;
            continue;
        } else if (strncmp(f, "fds=", 4) == 0) {
            continue;
        } else
            return -1;
        if (*end || end == f + 7)
            return -1;
    }
    if (rq->uid < 0 || rq->gid < 0 || !rq->path == !rq->create)
        return -1;
    if (rq->create && (!*rq->create || strchr(rq->create, '/')))
        return -1;
    return 0;
}

/* Switch the file-system identity; -1 when the kernel did not take it. */
static int become(uid_t uid, gid_t gid, const gid_t *groups, int n)
{
    if (own_ngroups < 0 && (own_ngroups = getgroups(MAX_GROUPS, own_groups)) < 0)
        return -1;
    if (syscall(SYS_setgroups, (size_t)n, groups) < 0)
        return -1;
    syscall(SYS_setfsgid, gid);
    syscall(SYS_setfsuid, uid);
    if ((uid_t)syscall(SYS_setfsuid, -1) != uid || (gid_t)syscall(SYS_setfsgid, -1) != gid) {
        errno = EPERM;
        return -1;
    }
    return 0;
}

static void back_to_root(void)
{
    syscall(SYS_setfsuid, 0);
    syscall(SYS_setfsgid, 0);
    if (syscall(SYS_setgroups, (size_t)own_ngroups, own_groups) < 0
        || syscall(SYS_setfsuid, -1) != 0 || syscall(SYS_setfsgid, -1) != 0)
        abort(); /* never go on with the wrong identity */
}

static int open_as(const struct open_request *rq, int dirfd)
{
    int fd = -1, saved;
    if (become((uid_t)rq->uid, (gid_t)rq->gid, rq->groups, rq->ngroups) < 0) {
        saved = errno;
        back_to_root();
        errno = saved;
        return -1;
    }
    if (rq->path)
        fd = open(rq->path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    else
        fd = openat(dirfd, rq->create, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    saved = errno;
    back_to_root();
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
        close(fd);
        fd = -1;
        saved = EINVAL;
    }
    if (fd >= 0 && rq->path)
        fcntl(fd, F_SETFL, 0); /* read blocking from here (a regular file) */
    errno = saved;
    return fd;
}

void spawn_open(char **fields, int n, int dirfd)
{
    struct open_request rq;
    char result[32];
    int fd = -1;
    if (n < 1 || parse_open(fields, n, &rq) < 0 || (rq.create && dirfd < 0) || geteuid() != 0)
        errno = EINVAL;
    else
        fd = open_as(&rq, dirfd);
    if (fd >= 0) {
        const char *ok[] = {"opened", fields[0], "fds=1"};
        spawn_send(ok, 3, &fd, 1);
        return;
    }
    snprintf(result, sizeof result, "errno=%d", errno);
    const char *failed[] = {"opened", n > 0 ? fields[0] : "", result};
    spawn_send(failed, 3, NULL, 0);
}

/* `prefix` and six random letters or digits, as mkstemp's names. */
static void random_name(const char *prefix, char *name, size_t size)
{
    static const char letters[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char bytes[6];
    if (getrandom(bytes, sizeof bytes, 0) != (ssize_t)sizeof bytes)
        abort(); /* (never fails for 6 bytes once the pool is up) */
    int n = snprintf(name, size, "%s", prefix);
    for (int i = 0; i < 6 && n + i + 1 < (int)size; i++)
        name[n + i] = letters[bytes[i] % 62], name[n + i + 1] = 0;
}

int spawn_create_output(const struct spawn_request *rq, int dirfd, char *name, size_t size)
{
    struct open_request orq;
    char uid[40], gid[40], groups[4096];
    if (!rq->as[0] || !rq->as[1] || dirfd < 0 || geteuid() != 0) {
        errno = EINVAL;
        return -1;
    }
    snprintf(uid, sizeof uid, "as-uid=%s", rq->as[0]);
    snprintf(gid, sizeof gid, "as-gid=%s", rq->as[1]);
    snprintf(groups, sizeof groups, "as-groups=%s", rq->as[2] ? rq->as[2] : "");
    char *fields[] = {(char *)rq->id, uid, gid, groups, "create=x"};
    if (parse_open(fields, 5, &orq) < 0) {
        errno = EINVAL;
        return -1;
    }
    for (int tries = 0; tries < 16; tries++) {
        random_name(rq->output_create, name, size);
        orq.create = name;
        int fd = open_as(&orq, dirfd);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    return -1;
}
