/* The spawn server's job logic: reading a spawn request into a jail
 * configuration, and finding and killing what a job left behind.  See
 * spawn.h and mathrun-spawn.c. */
#define _GNU_SOURCE
#include "spawn.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- requests -------------------------------------------------------------- */
static const char *value(const char *field, const char *key)
{
    size_t n = strlen(key);
    return strncmp(field, key, n) == 0 && field[n] == '=' ? field + n + 1 : NULL;
}

static int number(const char *s, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < 0)
        return -1;
    *out = v;
    return 0;
}

static int numeric_field(struct jail_config *cfg, const char *f, int *matched)
{
    static const char *keys[] = {"uid", "gid", "kill-ruid", "cpu", "as", "fsize", "nofile", "nproc", NULL};
    for (int k = 0; keys[k]; k++) {
        const char *v = value(f, keys[k]);
        long long n;
        if (!v)
            continue;
        *matched = 1;
        if (number(v, &n) < 0)
            return -1;
        switch (k) {
        case 0: cfg->uid = (uid_t)n; break;
        case 1: cfg->gid = (gid_t)n; break;
        case 2: cfg->kill_ruid = (uid_t)n; break;
        case 3: cfg->cpu = n; break;
        case 4: cfg->as = n; break;
        case 5: cfg->fsize = n; break;
        case 6: cfg->nofile = n; break;
        default: cfg->nproc = n; break;
        }
        return 0;
    }
    return 0;
}

/* One KEY=VALUE field; -1 when the key is unknown or the value bad. */
static int field(struct spawn_request *rq, char *f, int *nargs, int *nenv)
{
    struct jail_config *cfg = &rq->cfg;
    const char *v;
    int matched = 0;
    if (numeric_field(cfg, f, &matched) < 0)
        return -1;
    if (matched)
        return 0;
    if ((v = value(f, "arg"))) {
        if (*nargs == SPAWN_MAX_ARGS)
            return -1;
        rq->argv[(*nargs)++] = (char *)v;
    } else if ((v = value(f, "env"))) {
        if (*nenv == JAIL_MAX_ENV || !strchr(v, '='))
            return -1;
        rq->env[(*nenv)++] = (char *)v;
    } else if ((v = value(f, "cgroup"))) {
        if (cfg->ncgroups == JAIL_MAX_CGROUPS)
            return -1;
        cfg->cgroups[cfg->ncgroups++] = v;
    } else if ((v = value(f, "kill-lock"))) {
        cfg->kill_lock = v;
    } else if ((v = value(f, "dir"))) {
        cfg->dir = v;
    } else if ((v = value(f, "tmp"))) {
        cfg->tmp = v;
    } else if ((v = value(f, "netns"))) {
        cfg->netns = v;
    } else if ((v = value(f, "unshare-net"))) {
        cfg->unshare_net = strcmp(v, "0") != 0;
    } else if ((v = value(f, "pidns"))) {
        cfg->pidns = strcmp(v, "0") != 0;
    } else if ((v = value(f, "userns"))) {
        cfg->userns = strcmp(v, "0") != 0;
    } else if ((v = value(f, "seccomp"))) {
        cfg->seccomp = strcmp(v, "0") != 0;
    } else if ((v = value(f, "count-file"))) {
        rq->count_file = v;
    } else if ((v = value(f, "output-fd"))) {
        if (strcmp(v, "1") != 0)
            return -1;
        rq->output_fd = -2; /* request() hands it the descriptor */
    } else if ((v = value(f, "output-create"))) {
        if (!*v || strchr(v, '/') || strlen(v) > 64)
            return -1;
        rq->output_create = v; /* request() makes it in the descriptor sent */
    } else if ((v = value(f, "as-uid"))) {
        rq->as[0] = v;
    } else if ((v = value(f, "as-gid"))) {
        rq->as[1] = v;
    } else if ((v = value(f, "as-groups"))) {
        rq->as[2] = v;
    } else if ((v = value(f, "quiet"))) {
        rq->quiet = strcmp(v, "0") != 0;
    } else if ((v = value(f, "stdin"))) {
        if (strcmp(v, "null") != 0)
            return -1;
        rq->stdin_null = 1;
    } else {
        return -1;
    }
    return 0;
}

int spawn_parse(char **fields, int n, struct spawn_request *rq, char *message, size_t size)
{
    int nargs = 0, nenv = 0;
    memset(rq, 0, sizeof *rq);
    rq->cfg = (struct jail_config){.uid = (uid_t)-1, .gid = (gid_t)-1, .kill_ruid = (uid_t)-1,
                                   .cpu = -1, .as = -1, .fsize = -1, .nofile = -1, .nproc = -1};
    rq->output_fd = -1;
    rq->id = n > 0 ? fields[0] : "";
    if (n < 1 || !*rq->id || strlen(rq->id) >= 32 || strspn(rq->id, "0123456789") != strlen(rq->id)) {
        snprintf(message, size, "spawn: bad job id");
        return -1;
    }
    for (int i = 1; i < n; i++)
        if (field(rq, fields[i], &nargs, &nenv) < 0) {
            snprintf(message, size, "spawn %s: bad field '%.200s'", rq->id, fields[i]);
            return -1;
        }
    rq->argv[nargs] = NULL;
    rq->env[nenv] = NULL;
    const struct jail_config *cfg = &rq->cfg;
    const char *why = NULL;
    if (nargs == 0)
        why = "no program";
    else if (cfg->uid != (uid_t)-1 && (cfg->uid == 0 || cfg->gid == 0 || cfg->gid == (gid_t)-1))
        why = "refusing to run a job as root";
    else if (cfg->uid != (uid_t)-1
             && (cfg->kill_ruid == (uid_t)-1 || cfg->kill_ruid == 0 || cfg->kill_ruid == cfg->uid))
        why = "kill-ruid must name another unprivileged user";
    else if (cfg->uid != (uid_t)-1 && geteuid() != 0)
        why = "uid needs root";
    else if (rq->quiet && (!rq->stdin_null || (rq->output_fd == -1 && !rq->output_create)))
        why = "quiet needs stdin=null and an output file (no pipes to hand over)";
    if (why) {
        snprintf(message, size, "spawn %s: %s", rq->id, why);
        return -1;
    }
    return 0;
}

/* ---- what a job left ------------------------------------------------------- */
/* The server's children that are not a running job's main process: every
 * orphan of a job is re-parented to the server (a subreaper). */
static int orphans(pid_t *out, int max)
{
    char path[64], buf[8192];
    snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    int n = 0;
    buf[got > 0 ? got : 0] = 0;
    for (char *p = buf, *end; n < max; p = end) {
        long pid = strtol(p, &end, 10);
        if (end == p)
            break;
        if (!spawn_job_by_pid((pid_t)pid))
            out[n++] = (pid_t)pid;
    }
    return n;
}

static long real_uid(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[got > 0 ? got : 0] = 0;
    char *uid = strstr(buf, "\nUid:\t");
    return uid ? strtol(uid + 6, NULL, 10) : -1;
}

/* An orphan is the job's when it runs as the job user (privileged), or is in
 * the job's session (unprivileged; one in no running job's session is a
 * stray of an ended one, and goes too). */
static int belongs(const struct spawn_job *job, pid_t orphan)
{
    if (job->uid != (uid_t)-1)
        return real_uid(orphan) == (long)job->uid;
    pid_t sid = getsid(orphan);
    if (sid == job->pid)
        return 1;
    const struct spawn_job *other = spawn_job_by_pid(sid);
    return other == NULL || other == job;
}

int spawn_has_leftovers(const struct spawn_job *job)
{
    pid_t o[512];
    if (job->uid != (uid_t)-1 && job->count_file) {
        int n = jail_count_file(job->count_file);
        if (n >= 0)
            return n > 0;
    }
    int n = orphans(o, 512);
    for (int i = 0; i < n; i++)
        if (belongs(job, o[i]))
            return 1;
    return 0;
}

/* Stop, then kill, a process and everything under it (unprivileged mode,
 * where no uid tells the job's processes from the server's). */
static void kill_tree(pid_t root)
{
    char path[64];
    kill(root, SIGSTOP);
    snprintf(path, sizeof path, "/proc/%d/task", (int)root);
    DIR *d = opendir(path);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char cpath[600];
        snprintf(cpath, sizeof cpath, "%s/%s/children", path, de->d_name);
        FILE *f = fopen(cpath, "re");
        int child;
        while (f && fscanf(f, "%d", &child) == 1)
            kill_tree(child);
        if (f)
            fclose(f);
    }
    if (d)
        closedir(d);
    kill(root, SIGKILL);
}

static int kill_orphans(const struct spawn_job *job)
{
    pid_t o[512];
    int n = orphans(o, 512), left = 0;
    for (int i = 0; i < n; i++)
        if (belongs(job, o[i])) {
            kill_tree(o[i]);
            left++;
        }
    return left;
}

int spawn_kill(struct spawn_job *job, int wait)
{
    if (!wait)
        job->killed = 1;
    if (job->uid != (uid_t)-1 && !job->ended) {
        /* A job asked to end right after its spawn may not run as its user
         * yet (kill(-1) as the user would miss it): its main process and its
         * namespace's init die first, by pid. */
        pid_t init = jail_init_of(job->pid);
        kill(job->pid, SIGKILL);
        if (init > 0)
            kill(init, SIGKILL);
    }
    if (job->uid != (uid_t)-1) {
        /* kill(-1) as the job user: atomic against fork bombs (jail.h). */
        if (jail_kill_user(job->uid, job->kill_ruid, job->kill_lock) == 0 || !wait)
            return 0;
        int left = jail_count_user_processes(job->uid);
        return left > 0 ? left : 0;
    }
    if (!job->ended)
        kill_tree(job->pid);
    if (!wait) {
        kill_orphans(job);
        return 0;
    }
    int left = 0;
    for (int round = 0; round < 2000; round++) {
        left = kill_orphans(job);
        if (!left)
            break;
        struct timespec ts = {0, round < 50 ? 100000 : 2000000};
        nanosleep(&ts, NULL);
        spawn_reap();
    }
    return left;
}
