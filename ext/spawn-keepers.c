/* The spawn server's side of the per-slot keepers (see spawn-keeper.c):
 * the table of keepers, one per job user, started at the slot's first job;
 * a job handed to its slot's keeper; their ends read in the server's loop. */
#define _GNU_SOURCE
#include "spawn-keeper.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_KEEPERS 256

struct clone_args_k {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

struct keeper {
    uid_t uid;
    int sock;   /* -1: none */
    pid_t pid;
    struct spawn_job *job;
    dev_t tree_dev; /* the file system of the workspace the keeper has mounted (0: none) */
};

static struct keeper keepers[MAX_KEEPERS];
static int nkeepers;
static int enabled;

void keeper_enable(void)
{
    enabled = 1;
}

int keeper_wanted(const struct spawn_request *rq)
{
    return enabled && rq->cfg.uid != (uid_t)-1 && rq->cfg.pidns && !rq->cfg.userns && rq->cfg.tmp && rq->cfg.dir;
}

/* ---- the spawn server's side ----------------------------------------------- */
static struct keeper *keeper_start(const struct jail_config *cfg)
{
    struct keeper *k = NULL;
    for (int i = 0; i < nkeepers && !k; i++)
        if (keepers[i].sock < 0)
            k = &keepers[i];
    if (!k && nkeepers == MAX_KEEPERS)
        return NULL;
    if (!k)
        k = &keepers[nkeepers++];
    int sv[2], ok = 0, nfds;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return NULL;
    struct clone_args_k args = {.flags = CLONE_NEWPID | CLONE_NEWNS, .exit_signal = SIGCHLD};
    pid_t pid = (pid_t)syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) {
        close(sv[0]);
        keeper_main(sv[1], cfg);
    }
    close(sv[1]);
    /* Never stuck on a keeper that stopped answering: its answers come at once. */
    struct timeval limit = {5, 0};
    setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    if (pid < 0 || keeper_recv(sv[0], &ok, sizeof ok, NULL, 0, &nfds) != sizeof ok || !ok) {
        int saved = errno;
        close(sv[0]);
        if (pid > 0)
            kill(pid, SIGKILL); /* (reaped by spawn_reap) */
        errno = pid < 0 ? saved : EPERM;
        return NULL;
    }
    *k = (struct keeper){cfg->uid, sv[0], pid, NULL, 0};
    return k;
}

static struct keeper *keeper_of(const struct jail_config *cfg)
{
    for (int i = 0; i < nkeepers; i++)
        if (keepers[i].sock >= 0 && keepers[i].uid == cfg->uid)
        {
            errno = EBUSY; /* (one job per slot at a time) */
            return keepers[i].job ? NULL : &keepers[i];
        }
    return keeper_start(cfg);
}

/* The pid (in our namespace) of the process a pidfd stands for. */
static pid_t pidfd_pid(int pidfd)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", pidfd);
    if (jail_read_file(path, buf, sizeof buf) < 0)
        return -1;
    char *p = strstr(buf, "\nPid:\t");
    return p ? (pid_t)strtol(p + 6, NULL, 10) : -1;
}

/* A clone of the slot's workspace mount for the keeper, unless it has that
 * file system mounted already (*dev: the workspace's; -1: none needed). */
static int workspace_tree(const struct keeper *k, const struct jail_config *cfg, dev_t *dev)
{
    char root[4096];
    struct stat st;
    snprintf(root, sizeof root, "%s", cfg->dir);
    *strrchr(root, '/') = 0; /* (keeper_wanted: an absolute dir below a root) */
    if (stat(root, &st) < 0)
        return -2;
    *dev = st.st_dev;
    if (k->tree_dev && st.st_dev == k->tree_dev)
        return -1; /* (its clone there keeps that file system, and its number, alive) */
    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, root, 1 /* OPEN_TREE_CLONE */ | O_CLOEXEC);
    return tree < 0 ? -2 : tree;
}

pid_t keeper_spawn(struct spawn_request *rq, struct spawn_job *job, const int *stdio, int errw, int *pidfd)
{
    struct keeper *k = keeper_of(&rq->cfg);
    dev_t dev = 0;
    if (!k)
        return -1;
    int tree = workspace_tree(k, &rq->cfg, &dev);
    if (tree == -2)
        return -1;
    int fds[KEEPER_FDS] = {stdio[0], stdio[1], stdio[2], errw, tree}, ok = 0, nfds = 0;
    int sent = keeper_send(k->sock, rq->raw, rq->raw_len, fds, tree >= 0 ? KEEPER_FDS : KEEPER_FDS - 1);
    if (tree >= 0)
        close(tree);
    if (sent < 0 || keeper_recv(k->sock, &ok, sizeof ok, pidfd, 1, &nfds) != sizeof ok || !ok || nfds != 1) {
        if (nfds == 1)
            close(*pidfd);
        *pidfd = -1;
        k->tree_dev = 0; /* (what it has mounted is unknown now) */
        errno = sent < 0 || ok ? EPIPE : EPERM;
        return -1;
    }
    if (tree >= 0)
        k->tree_dev = dev;
    pid_t pid = pidfd_pid(*pidfd);
    if (keeper_send(k->sock, "a", 1, NULL, 0) < 0 || pid <= 0) {
        close(*pidfd);
        *pidfd = -1;
        errno = ESRCH;
        return -1; /* (the keeper then ends the job and reports; nobody waits) */
    }
    k->job = job;
    job->keeper = 1;
    return pid;
}

int keeper_pollfds(struct pollfd *p, int max)
{
    int n = 0;
    for (int i = 0; i < nkeepers && n < max; i++)
        p[n++] = (struct pollfd){keepers[i].sock, POLLIN, 0};
    return n;
}

/* A job's end from its keeper; a keeper gone ends its job as killed. */
void keeper_events(const struct pollfd *p, int n)
{
    for (int i = 0; i < n && i < nkeepers; i++) {
        struct keeper *k = &keepers[i];
        if (k->sock < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        struct keeper_end end;
        int nfds;
        ssize_t got = keeper_recv(k->sock, &end, sizeof end, NULL, 0, &nfds);
        if (got != (ssize_t)sizeof end) {
            close(k->sock);
            k->sock = -1;
            end = (struct keeper_end){.status = SIGKILL, .leftover = 1};
        }
        if (k->job) {
            k->job->ended = 1;
            k->job->status = end.status;
            k->job->ru = end.ru;
            k->job->keeper_left = end.leftover;
            k->job = NULL;
        }
    }
}

/* End every keeper (each exits at end of file) and reap it: its CPU, and
 * its jobs', count in ours. */
void keeper_shutdown(void)
{
    for (int i = 0; i < nkeepers; i++)
        if (keepers[i].sock >= 0) {
            close(keepers[i].sock);
            keepers[i].sock = -1;
            while (waitpid(keepers[i].pid, NULL, 0) < 0 && errno == EINTR) {
            }
        }
}

/* A job forgotten before its end came (the server shutting down). */
void keeper_forget(const struct spawn_job *job)
{
    for (int i = 0; i < nkeepers; i++)
        if (keepers[i].job == job)
            keepers[i].job = NULL;
}
