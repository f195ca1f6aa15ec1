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
 * fast spawn path and needs no pre-exec hook of its own.  `run` is in
 * jail-run.c; the other commands are here. */
#define _GNU_SOURCE
#include "jail.h"
#include "mathrun-jail.h"

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

#ifndef NSFS_MAGIC
#define NSFS_MAGIC 0x6e736673
#endif

void usage(void)
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

long long number(const char *s, const char *what)
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
        return jail_run_command(argc - 1, argv + 1);
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
