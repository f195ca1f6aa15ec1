/* The Maxima mother's per-slot keepers (as root).
 *
 * A slot is a job user.  At its first fork the mother starts the slot's
 * keeper (maxima-nsinit, exec'ed after a vfork: the SBCL mother's page
 * tables are not copied) as PID 1 of a fresh PID namespace, in a mount
 * namespace with a /proc of it and without the mounts of the server's state
 * directory (ext/maxima-nsinit.c), and keeps a pidfd and that mount
 * namespace.  Each child of the slot is then forked straight into the
 * keeper's PID namespace (setns of the mother's pid_for_children around the
 * fork) and enters a copy of the keeper's mount namespace: no init exec'ed,
 * no /proc mounted and no copy of every host mount made per child.  The
 * child still has its own mount namespace (what it mounts dies with it),
 * the slot's network and IPC namespaces (the latter the keeper's, where its
 * filter lets no job make an object), its cgroups, the uid switch and the
 * filter (jail_enter).  In the slot's /proc
 * (hidepid=invisible) a job sees its own processes only: the keeper is
 * root's, the child itself is not dumpable, and the slot's earlier jobs
 * were killed by the cleanup before its user was handed out again. */
#define _GNU_SOURCE
#include "maxima-slot.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif

#define MAX_SLOTS 256

struct slot {
    uid_t uid;
    pid_t pid;  /* the keeper */
    int pidfd;  /* its pidfd: its PID, mount, IPC and network namespaces */
};

static struct slot slots[MAX_SLOTS];
static int nslots;
static char keeper[PATH_MAX];
static int base_mnt = -1; /* the first keeper's mount namespace, which the others copy */
static int life[2] = {-1, -1}; /* the keepers hold the read end: its end of file is the mother's end */
static int own_pidns = -1;
static struct slot *entered; /* in a child: its slot */

int maxima_slot_init(const char *keeper_path)
{
    if (snprintf(keeper, sizeof keeper, "%s", keeper_path) >= (int)sizeof keeper) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (access(keeper, X_OK) < 0)
        return -1;
    if (life[0] < 0 && pipe2(life, O_CLOEXEC) < 0)
        return -1;
    if (own_pidns < 0 && (own_pidns = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC)) < 0)
        return -1;
    return 0;
}

/* vfork and exec the keeper under a full signal mask (no handler of the
 * mother's can run in the vfork child, which shares its memory): fd 0 the
 * life pipe, fd 1 `ready`, fd 3 the base mount namespace if there is one. */
static __attribute__((noinline)) pid_t spawn_keeper(char *state_dir, char *netns, int ready)
{
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid_t pid = vfork();
    if (pid == 0) {
        char *argv[] = {keeper, state_dir, netns, NULL}, *envp[] = {NULL};
        if (dup2(life[0], 0) == 0 && dup2(ready, 1) == 1
            && (base_mnt >= 0 ? dup2(base_mnt, 3) == 3 : (close(3), 1)))
            execve(keeper, argv, envp);
        _exit(127);
    }
    int saved = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    errno = saved;
    return pid;
}

/* Start the keeper of slot `s`; 0, or -1 with errno. */
static int start_keeper(struct slot *s, const char *root, const char *netns)
{
    char state_dir[PATH_MAX], net[PATH_MAX], path[64];
    int ready[2];
    unsigned char status = 0;
    snprintf(state_dir, sizeof state_dir, "%s", root);
    for (int up = 0; up < 2; up++) /* ROOT = STATE_DIR/jobs-PREFIX/USER */
        if (strrchr(state_dir, '/') > state_dir)
            *strrchr(state_dir, '/') = 0;
    snprintf(net, sizeof net, "%s", netns ? netns : "");
    if (pipe2(ready, O_CLOEXEC) < 0)
        return -1;
    if (unshare(CLONE_NEWPID) < 0) {
        close(ready[0]);
        close(ready[1]);
        return -1;
    }
    pid_t pid = spawn_keeper(state_dir, netns ? net : NULL, ready[1]);
    int saved = errno;
    if (setns(own_pidns, CLONE_NEWPID) < 0)
        abort(); /* children in the wrong namespace from now on: refuse to go on */
    close(ready[1]);
    ssize_t got = -1;
    if (pid > 0)
        while ((got = read(ready[0], &status, 1)) < 0 && errno == EINTR) {
        }
    close(ready[0]);
    if (pid < 0 || got != 1 || status != 0) {
        errno = pid < 0 ? saved : got == 1 ? status : ECHILD;
        return -1;
    }
    snprintf(path, sizeof path, "/proc/%d/ns/mnt", (int)pid);
    s->pid = pid;
    s->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (s->pidfd >= 0 && base_mnt < 0 && (base_mnt = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        close(s->pidfd);
        s->pidfd = -1;
    }
    if (s->pidfd < 0) {
        saved = errno;
        kill(pid, SIGKILL);
        errno = saved;
        return -1;
    }
    return 0;
}

static struct slot *slot_of(uid_t uid, const char *root, const char *netns)
{
    for (int i = 0; i < nslots; i++)
        if (slots[i].uid == uid && slots[i].pidfd >= 0)
            return &slots[i];
    struct slot *s = NULL;
    for (int i = 0; i < nslots && !s; i++)
        if (slots[i].pidfd < 0)
            s = &slots[i];
    if (!s && nslots < MAX_SLOTS)
        s = &slots[nslots++];
    if (!s) {
        errno = EAGAIN;
        return NULL;
    }
    s->uid = uid;
    s->pidfd = -1;
    if (start_keeper(s, root, netns) < 0) {
        s->pidfd = -1;
        return NULL;
    }
    return s;
}

/* A keeper that has ended (someone killed it): forgotten, and started again
 * at the slot's next fork. */
static void forget(struct slot *s)
{
    close(s->pidfd);
    s->pidfd = -1;
}

pid_t maxima_slot_fork(uid_t uid, const char *root, const char *netns, const char **step)
{
    struct slot *s = NULL;
    for (int attempt = 0; !s; attempt++) {
        *step = "start the slot's keeper";
        if (!(s = slot_of(uid, root, netns)))
            return -1;
        *step = "enter the slot's PID namespace";
        if (setns(s->pidfd, CLONE_NEWPID) < 0) {
            int saved = errno;
            forget(s);
            s = NULL;
            if (attempt > 0) {
                errno = saved;
                return -1;
            }
        }
    }
    *step = "fork";
    pid_t pid = fork();
    int saved = errno;
    if (pid == 0) {
        entered = s;
        return 0;
    }
    if (setns(own_pidns, CLONE_NEWPID) < 0)
        abort();
    if (pid < 0 && saved == ENOMEM) /* the namespace's init has ended */
        forget(s);
    errno = saved;
    return pid;
}

static int mkdir_parents(char *path)
{
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p)
            continue;
        char c = *p;
        *p = 0;
        int r = mkdir(path, 0700);
        *p = c;
        if (r < 0 && errno != EEXIST)
            return -1;
        if (!c)
            return 0;
    }
}

/* The shared writable directories, bound to the workspace's tmp/. */
static int bind_tmp(const char *root)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/tmp", root);
    int fd = open(path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int r = jail_bind_tmp(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return r;
}

/* The job's cgroups, joined from the server's mount namespace: the slot's
 * has no cgroup file systems (fewer mounts to copy, and none for the job to read). */
static int join_cgroups(const struct jail_config *cfg)
{
    char path[PATH_MAX], pid[32];
    int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    for (int i = 0; i < cfg->ncgroups; i++) {
        snprintf(path, sizeof path, "%s/cgroup.procs", cfg->cgroups[i]);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            return -1;
        ssize_t w = write(fd, pid, n);
        int saved = errno;
        close(fd);
        if (w != n) {
            errno = w < 0 ? saved : EIO;
            return -1;
        }
    }
    return 0;
}

int maxima_slot_enter(struct jail_config *cfg, const char *root, const char **step)
{
    char point[PATH_MAX];
    *step = "join the cgroups";
    if (join_cgroups(cfg) < 0)
        return -1;
    /* The workspace, a mount of the server's namespace: a detached clone of
     * it can be attached in the child's. */
    *step = "clone the workspace mount";
    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, root, OPEN_TREE_CLONE | O_CLOEXEC);
    if (tree < 0)
        return -1;
    /* The keeper's network (the slot's), IPC and mount namespaces at once;
     * then a copy of the mount namespace, for the child's own mounts. */
    *step = "enter the slot's namespaces";
    if (setns(entered->pidfd, CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET) < 0 || unshare(CLONE_NEWNS) < 0)
        return -1;
    *step = "mount the workspace";
    snprintf(point, sizeof point, "%s", root);
    if (access(point, F_OK) < 0 && mkdir_parents(point) < 0)
        return -1;
    if (syscall(SYS_move_mount, tree, "", AT_FDCWD, point, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        return -1;
    close(tree);
    *step = "private /tmp";
    if (bind_tmp(root) < 0)
        return -1;
    cfg->ncgroups = 0;
    cfg->netns = NULL;
    cfg->unshare_net = 0;
    cfg->tmp = NULL;
    cfg->pidns = 0;
    return 0;
}
