/* The sandbox steps shared by the jail helper and (later) the Maxima fork
 * channel: entering a job's confinement and killing everything a job user
 * runs.  Each function returns 0 on success, -1 with errno set on failure. */
#ifndef MATHRUN_JAIL_H
#define MATHRUN_JAIL_H

#include <sys/types.h>

#define JAIL_MAX_CGROUPS 8
#define JAIL_MAX_ENV 64

struct jail_config {
    uid_t uid;              /* job user; (uid_t)-1 = unprivileged mode */
    gid_t gid;
    uid_t kill_ruid;        /* real uid used for kill(-1) (the helper user) */
    const char *kill_lock;  /* file locked around kill(-1), or NULL */
    const char *dir;        /* working directory (the workspace) */
    const char *tmp;        /* private /tmp, /var/tmp, /dev/shm, or NULL */
    const char *netns;      /* namespace file to join, or NULL */
    int unshare_net;        /* 1: a fresh namespace (only loopback, down) */
    long long cpu;          /* RLIMIT_CPU seconds, -1 = none */
    long long as;           /* RLIMIT_AS bytes, -1 = none */
    long long fsize;        /* RLIMIT_FSIZE bytes, -1 = none */
    long long nofile;       /* RLIMIT_NOFILE, -1 = none */
    long long nproc;        /* RLIMIT_NPROC (per job user), -1 = none */
    const char *cgroups[JAIL_MAX_CGROUPS];
    int ncgroups;
    int pidns;              /* 1: a fresh PID namespace (jail_fork), /proc mounted for it */
    int userns;             /* 1: unprivileged mode: a fresh user namespace first */
    int status_fd;          /* with pidns and jail_fork: where the namespace's init writes
                             * the job's wait status and whether it left processes
                             * (struct jail_status); -1 or 0: nowhere */
};

/* What the init of a job's PID namespace reports when the job's main
 * process ends (see jail_fork). */
struct jail_status {
    int wait_status;        /* as from waitpid: the tool's own exit code or signal */
    int leftover;           /* 1: the job had other processes then (the init's end kills them) */
};

/* Fork one job process.  Like fork(): returns 0 in the job, its pid (in the
 * caller's PID namespace) in the caller, -1 with errno on failure.  With
 * cfg->pidns the job gets a fresh PID namespace; the pid returned is what the
 * caller waits for, and its wait status and rusage are the job's (the tool's
 * own exit code or signal).  Killing that pid with SIGKILL ends every process
 * of the job.  With cfg->userns (unprivileged mode) the job also gets a fresh
 * user namespace first.  The job must then call jail_enter(cfg) and exec.
 *
 * With cfg->pidns the pid returned is the namespace's init, a small process
 * that forks the job and reaps whatever the job orphans; it ends when the
 * job's main process ends (which ends the namespace), with its exit code
 * (or 128 + its signal), after writing the exact wait status to
 * cfg->status_fd.  So the tool is never pid 1, where the kernel would ignore
 * the signals it sends itself (kill -TERM $$, SIGXFSZ, SIGPIPE). */
pid_t jail_fork(const struct jail_config *cfg);

/* The same namespaces for a caller that cannot use jail_fork's raw clone
 * (the Maxima mother's child, which goes on running Lisp): the caller itself
 * enters the new user namespace, and its next fork() starts the new PID
 * namespace.  For a single-threaded process that runs one job only. */
int jail_unshare(const struct jail_config *cfg);

/* In a fresh user namespace: map the caller's own uid and gid (as
 * bubblewrap does), setgroups denied.  Done once; jail_enter calls it. */
int jail_enter_userns(void);

/* In the child, after fork: everything up to (not including) exec. */
int jail_enter(const struct jail_config *cfg);

/* Kill every process whose real or saved uid is `uid`, atomically against
 * fork bombs: kill(-1) with euid = uid and ruid = kill_ruid.  Repeats until
 * none is left.  Every killer has the same real uid, so each one is a
 * target of the others' kill(-1): `lock` (a root-owned file) keeps two
 * killers from running at once.  Returns 0 when none is left, -1 when
 * some survived. */
int jail_kill_user(uid_t uid, uid_t kill_ruid, const char *lock);

/* The same, counting what is left by reading `count_file` (the pids.current
 * of the cgroup every process of the user is confined in, which a job cannot
 * leave) instead of scanning /proc: one read instead of one per process of
 * root on the host.  NULL, or a file that cannot be read: /proc. */
int jail_kill_user_counted(uid_t uid, uid_t kill_ruid, const char *lock, const char *count_file);

/* Count live (non-zombie) processes with real uid `uid`, from /proc. */
int jail_count_user_processes(uid_t uid);

#endif
