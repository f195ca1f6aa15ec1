/* The sandbox steps shared by the jail helper and (later) the Maxima fork
 * channel: entering a job's confinement and killing everything a job user
 * runs.  Each function returns 0 on success, -1 with errno set on failure. */
#ifndef MATHRUN_JAIL_H
#define MATHRUN_JAIL_H

#include <stddef.h>
#include <sys/resource.h>
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
    int pidns;              /* 1: jail_fork makes a fresh PID namespace, and
                             * jail_enter mounts a /proc of it in the job's
                             * private mount namespace */
    int seccomp;            /* 1: jail_enter's last step loads the syscall
                             * filter (jail_seccomp) */
    int userns;             /* 1: unprivileged mode: a fresh user namespace first */
    int status_fd;          /* with userns and pidns: where the namespace's init
                             * writes the job's wait status and whether it left
                             * processes (struct jail_status); -1 or 0: nowhere */
};

/* What the init of an unprivileged job's namespaces reports when the job's
 * main process ends (see jail_fork). */
struct jail_status {
    int wait_status;        /* as from waitpid: the tool's own exit code or signal */
    int leftover;           /* 1: the job had other processes then (the init's end kills them) */
};

/* Fork one job process.  Like fork(): returns 0 in the job, its pid (in the
 * caller's PID namespace) in the caller, -1 with errno on failure.  With
 * cfg->pidns the job gets a fresh PID namespace; the pid returned is what the
 * caller waits for, and its wait status and rusage are the job's (the tool's
 * own exit code or signal).  Killing that pid with SIGKILL ends every process
 * of the job.  The job must then call jail_enter(cfg) and exec.
 *
 * How, as root (cfg->pidns): the namespace's PID 1 is a tiny init of ours,
 * made first (a clone child of the caller with exit signal 0: it sends no
 * SIGCHLD and a plain waitpid(-1) never sees it); the job is then forked
 * into that namespace as PID 2, a direct child of the caller, so that no
 * PID-1 signal rule (SIGXCPU, SIGXFSZ, SIGPIPE ignored) applies to it.  The
 * init reaps the job's orphans and exits once the job's pid has ended,
 * which makes the kernel SIGKILL everything left in the namespace.  Reap it
 * with jail_reap_init (or let later jail_fork calls reap it).
 *
 * Unprivileged (cfg->userns, with cfg->pidns): the caller has no right to
 * join a namespace owned by the job's user namespace, so the clone into the
 * new user and PID namespaces is the init itself, which forks the job as
 * PID 2; the pid returned is the init's, which exits when the job's main
 * process ends (ending the namespace) after writing the job's exact wait
 * status to cfg->status_fd (struct jail_status). */
pid_t jail_fork(const struct jail_config *cfg);

/* After the job's pid has been waited for: waits for its namespace's init,
 * that is until every process of the namespace is gone, and adds the init's
 * rusage (the orphans it reaped) to `ru` when not NULL.  Returns 1 when the
 * job had left processes behind (they were killed), 0 when not, -1 when
 * `job` has no init of this kind (no cfg->pidns, or cfg->userns). */
int jail_reap_init(pid_t job, struct rusage *ru);

/* The init of `job`'s namespace (SIGKILL it to end the whole namespace at
 * once), or -1. */
pid_t jail_init_of(pid_t job);

/* Fork into a fresh PID namespace whose PID 1 is `init_path nsinit` (the
 * mathrun-jail binary, exec'ed: no second copy of a big caller's page
 * tables) and the child PID 2.  The init reaps the child's orphans and
 * stays until the child and all of them have ended (a Maxima child leaves
 * gnuplot writing a plot), then the namespace ends. */
pid_t jail_fork_with_init(const char *init_path);

/* The init's body (jail_fork's, and `mathrun-jail nsinit` with fd 0):
 * reads `sync_fd` to its end (the job was forked), then reaps until PID 2
 * has ended (and, with `linger`, every other process too).  Never returns;
 * exit code 1 when processes were left behind. */
void jail_namespace_init(int sync_fd, int linger) __attribute__((noreturn));

/* Fork into a fresh PID namespace whose PID 1 is the child itself (for the
 * Maxima mother: a second fork of an SBCL child would copy its page tables
 * again).  The child gets PID-1 signal rules: only SIGKILL/SIGSTOP from
 * outside, and handled signals, reach it. */
pid_t jail_fork_pid1(void);

/* jail_fork's unprivileged path (cfg->userns), see above. */
pid_t jail_fork_userns(const struct jail_config *cfg);

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

/* Bind the job's tmp/ (an O_PATH descriptor of it) over /tmp, /var/tmp,
 * /dev/shm and /run/lock, those that exist: -1 (errno) on failure. */
int jail_bind_tmp(int tmp_fd);

/* Load the job's seccomp filter (see jail-seccomp.c): the calls that widen
 * the kernel's attack surface or reach other processes fail with EPERM. */
int jail_seccomp(void);

/* Compile the filter once, in a long-lived parent (the Maxima mother, a
 * spawn server), so that each child's jail_seccomp is one prctl instead of
 * a libseccomp build (about 0.4 ms).  Needs NO_NEW_PRIVS in the child, as
 * jail_enter sets. */
int jail_seccomp_prepare(void);

/* The same for the Maxima children: SysV IPC and POSIX message queues
 * denied too (they share an IPC namespace with their slot's other jobs), and
 * loaded without the kernel's action cache (they live short). */
int jail_seccomp_prepare_maxima(void);

/* The prepared program (after jail_seccomp_prepare), and using one made
 * earlier: `make` exports it at build time (seccomp-gen) into
 * jail-seccomp-bpf.h, so that mathrun-jail, a fresh process per job, skips
 * the libseccomp build too. */
const void *jail_seccomp_program(size_t *bytes);
void jail_seccomp_use(const void *program, size_t bytes);

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
 * root on the host; a non-zero count is checked in the cgroup's list, where
 * root's processes (the slot's keeper) do not count.  NULL, or a file that
 * cannot be read: /proc. */
int jail_kill_user_counted(uid_t uid, uid_t kill_ruid, const char *lock, const char *count_file);

/* Read a small file (at most size - 1 bytes) into buf, NUL-terminated; its
 * length, or -1. */
ssize_t jail_read_file(const char *path, char *buf, size_t size);

/* The number in a cgroup file such as pids.current; -1 when it cannot be read. */
int jail_count_file(const char *path);

/* Count live (non-zombie) processes with real uid `uid`, from /proc. */
int jail_count_user_processes(uid_t uid);

#endif
