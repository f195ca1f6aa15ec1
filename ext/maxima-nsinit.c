/* The keeper of a Maxima slot (as root): PID 1 of the slot's PID namespace,
 * in a mount namespace of its own with a /proc of that namespace, started
 * by the mother at the slot's (job user's) first fork and kept (see
 * ext/maxima-slot.c).  The mother forks each child of the slot straight
 * into this PID namespace; the child enters a copy of this mount namespace,
 * which holds only the host's own mounts (~25 here, not every workspace and
 * namespace file of every server: ~280), so that making and tearing down a
 * child's private mounts costs a tenth of what a copy of the host's did,
 * and no init, /proc or MS_SLAVE remount is made per child.
 *
 *   maxima-nsinit STATE_DIR [NETNS]
 *                               fd 0: the mother's life pipe (end of file:
 *                               the mother has ended); fd 1: where the
 *                               keeper writes one byte once set up (0, or
 *                               the errno of the step that failed);
 *                               fd 3, when open: the base mount namespace
 *
 * Without fd 3 the keeper makes the base: a copy of the host's mounts,
 * slaves of them, without the namespace files (nsfs), the cgroup file
 * systems and what is mounted under STATE_DIR (every slot's workspace, of
 * this server and of others);
 * the mother keeps it for the slots after.  With fd 3 it copies the base.
 * It also joins the slot's network namespace (NETNS, a namespace file) and
 * makes the slot's IPC namespace (the children may make no IPC object in it:
 * their filter denies SysV IPC and message queues), so that a child joins
 * all three at once with one setns of the keeper's pidfd.
 *
 * A job's orphans (gnuplot still writing a plot when Maxima exits) are
 * reparented here; SIGCHLD is ignored, so the kernel reaps them.  The keeper
 * outlives its mother, as the children do (the server's cleanup, the uid
 * kill, ends them): once the mother has ended it waits until no other
 * process is left in its namespace, then exits.  Without libc on x86-64
 * (a static glibc start-up probes the CPU through cpuid, which traps on a
 * virtual machine); elsewhere built on libc with the same code. */
#define _GNU_SOURCE
#include <asm/unistd.h>
#include <linux/poll.h>
#include <linux/prctl.h>

#define CLONE_NEWNS_ 0x00020000
#define CLONE_NEWIPC_ 0x08000000
#define CLONE_NEWNET_ 0x40000000
#define MS_NOSUID_ 2
#define MS_NODEV_ 4
#define MS_NOEXEC_ 8
#define MS_REC_ 16384
#define MS_SLAVE_ (1 << 19)
#define MNT_DETACH_ 2
#define O_DIRECTORY_ 0200000
#define O_CLOEXEC_ 02000000
#define AT_FDCWD_ (-100)
#define F_GETFD_ 1
#define EINTR_ 4
#define SIGCHLD_ 17

/* sys() returns what the kernel returns: -errno on failure. */
#if defined(__x86_64__) && defined(MAXIMA_NSINIT_RAW)
static long sys(long n, long a, long b, long c, long d, long e)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return ret;
}
#else
long syscall(long n, ...);
int *__errno_location(void);
static long sys(long n, long a, long b, long c, long d, long e)
{
    long r = syscall(n, a, b, c, d, e);
    return r == -1 ? -(long)*__errno_location() : r;
}
#endif

struct ksigaction {
    unsigned long handler, flags, restorer, mask;
};

static char table[1 << 20]; /* /proc/self/mountinfo */

static int starts_with(const char *s, const char *prefix, long n)
{
    for (long i = 0; i < n; i++)
        if (s[i] != prefix[i])
            return 0;
    return 1;
}

/* Field `i` (0-based) of a mountinfo line into out, octal escapes undone. */
static int field(const char *line, int i, char *out, long size)
{
    while (i-- > 0) {
        while (*line && *line != ' ' && *line != '\n')
            line++;
        if (*line != ' ')
            return -1;
        line++;
    }
    long n = 0;
    for (; *line && *line != ' ' && *line != '\n' && n < size - 1; line++) {
        if (line[0] == '\\' && line[1] >= '0' && line[1] <= '3' && line[2] && line[3]) {
            out[n++] = (char)(((line[1] - '0') << 6) | ((line[2] - '0') << 3) | (line[3] - '0'));
            line += 3;
        } else {
            out[n++] = *line;
        }
    }
    out[n] = 0;
    return 0;
}

/* The file system type of a line: the field after " - ". */
static int is_nsfs(const char *line)
{
    for (; *line && *line != '\n'; line++)
        if (starts_with(line, " - nsfs ", 8))
            return 1;
    return 0;
}

static long read_table(void)
{
    long fd = sys(__NR_openat, AT_FDCWD_, (long)"/proc/self/mountinfo", O_CLOEXEC_, 0, 0), have = 0, r;
    if (fd < 0)
        return fd;
    long room = (long)sizeof table - 1;
    while (have < room && (r = sys(__NR_read, fd, (long)table + have, room - have, 0, 0)) > 0)
        have += r;
    sys(__NR_close, fd, 0, 0, 0, 0);
    table[have] = 0;
    return have;
}

#define CGROUPS "/sys/fs/cgroup"

/* Whether `point` is `dir` or below it (`n`: its length). */
static int at_or_below(const char *point, const char *dir, long n)
{
    return starts_with(point, dir, n) && (point[n] == '/' || !point[n]);
}

/* Detach the namespace files, the mounts below `dir` and the cgroup file
 * systems (a child joins its cgroups before it enters the slot's mounts);
 * stacked ones take a round each.  Returns 0 or -errno. */
static long detach_mounts(const char *dir)
{
    static char point[4096];
    long n = 0;
    while (dir[n])
        n++;
    for (int round = 0; round < 8; round++) {
        long r = read_table();
        int found = 0;
        if (r < 0)
            return r;
        for (char *line = table; *line; line++) {
            if (field(line, 4, point, sizeof point) == 0
                && (is_nsfs(line) || (n > 1 && starts_with(point, dir, n) && point[n] == '/')
                    || at_or_below(point, CGROUPS, sizeof CGROUPS - 1))
                && sys(__NR_umount2, (long)point, MNT_DETACH_, 0, 0, 0) == 0)
                found = 1;
            while (*line && *line != '\n')
                line++;
            if (!*line)
                break;
        }
        if (!found)
            return 0;
    }
    return 0;
}

static long join_netns(const char *netns)
{
    long fd = sys(__NR_openat, AT_FDCWD_, (long)netns, O_CLOEXEC_, 0, 0);
    if (fd < 0)
        return fd;
    long r = sys(__NR_setns, fd, CLONE_NEWNET_, 0, 0, 0);
    sys(__NR_close, fd, 0, 0, 0, 0);
    return r;
}

static long set_up(const char *state_dir, const char *netns)
{
    long r;
    if ((netns && (r = join_netns(netns)) < 0) || (r = sys(__NR_unshare, CLONE_NEWIPC_, 0, 0, 0, 0)) < 0)
        return r;
    if (sys(__NR_fcntl, 3, F_GETFD_, 0, 0, 0) >= 0) {
        /* A slot after the first: a copy of the base, whose /proc is the first slot's. */
        if ((r = sys(__NR_setns, 3, CLONE_NEWNS_, 0, 0, 0)) < 0)
            return r;
        if ((r = sys(__NR_unshare, CLONE_NEWNS_, 0, 0, 0, 0)) < 0)
            return r;
        sys(__NR_umount2, (long)"/proc", MNT_DETACH_, 0, 0, 0);
    } else if ((r = sys(__NR_unshare, CLONE_NEWNS_, 0, 0, 0, 0)) < 0
               || (r = sys(__NR_mount, 0, (long)"/", 0, MS_REC_ | MS_SLAVE_, 0)) < 0
               || (r = detach_mounts(state_dir)) < 0) {
        return r;
    }
    return sys(__NR_mount, (long)"proc", (long)"/proc", (long)"proc", MS_NOSUID_ | MS_NODEV_ | MS_NOEXEC_,
               (long)"hidepid=invisible");
}

/* Whether a process other than this one is left in the namespace. */
static int others_left(void)
{
    static char buf[8192];
    long fd = sys(__NR_openat, AT_FDCWD_, (long)"/proc", O_DIRECTORY_ | O_CLOEXEC_, 0, 0), n;
    int left = 0;
    if (fd < 0)
        return 0;
    while (!left && (n = sys(__NR_getdents64, fd, (long)buf, sizeof buf, 0, 0)) > 0) {
        for (long off = 0; off < n;) {
            unsigned short reclen = *(unsigned short *)(buf + off + 16);
            const char *name = buf + off + 19;
            int digits = *name != 0;
            for (const char *p = name; *p; p++)
                digits &= *p >= '0' && *p <= '9';
            if (digits && !(name[0] == '1' && !name[1]))
                left = 1;
            off += reclen;
        }
    }
    sys(__NR_close, fd, 0, 0, 0, 0);
    return left;
}

static void keeper(const char *state_dir, const char *netns)
{
    struct ksigaction ignore = {1 /* SIG_IGN */, 0, 0, 0};
    unsigned long none = 0;
    unsigned char status;
    long r;

    sys(__NR_prctl, PR_SET_NAME, (long)"maxima-keeper", 0, 0, 0);
    /* Not at the mother's nice 10: it reaps what the slot's cleanup kills. */
    sys(__NR_setpriority, 0 /* PRIO_PROCESS */, 0, 0, 0, 0);
    sys(__NR_rt_sigaction, SIGCHLD_, (long)&ignore, 0, 8, 0);
    sys(__NR_rt_sigprocmask, 2 /* SIG_SETMASK */, (long)&none, 0, 8, 0);
    r = state_dir ? set_up(state_dir, netns) : -22;
    status = (unsigned char)(r < 0 ? -r : 0);
    sys(__NR_write, 1, (long)&status, 1, 0, 0);
    if (r < 0)
        sys(__NR_exit_group, 1, 0, 0, 0, 0);
    sys(__NR_close_range, 1, ~0U, 0, 0, 0);
    /* Until the mother ends (its end of the life pipe closes)... */
    struct pollfd p = {0, POLLIN, 0};
    while ((r = sys(__NR_poll, (long)&p, 1, -1, 0, 0)) == -EINTR_
           || (r > 0 && !(p.revents & (POLLHUP | POLLERR)))) {
        char c;
        if (r > 0 && sys(__NR_read, 0, (long)&c, 1, 0, 0) == 0)
            break;
    }
    /* ...then until its last children have ended. */
    while (others_left()) {
        struct {
            long sec, nsec;
        } tenth = {0, 100000000};
        sys(__NR_nanosleep, (long)&tenth, 0, 0, 0, 0);
    }
    sys(__NR_exit_group, 0, 0, 0, 0, 0);
}

#if defined(__x86_64__) && defined(MAXIMA_NSINIT_RAW)
__asm__(".globl _start\n_start:\n\txor %ebp, %ebp\n\tmov %rsp, %rdi\n"
        "\tand $-16, %rsp\n\tcall nsinit_start\n\thlt\n");

__attribute__((used, noreturn)) void nsinit_start(long *sp)
{
    keeper(sp[0] > 1 ? (const char *)sp[2] : 0, sp[0] > 2 ? (const char *)sp[3] : 0);
    for (;;)
        sys(__NR_exit_group, 1, 0, 0, 0, 0);
}
#else
int main(int argc, char **argv)
{
    keeper(argc > 1 ? argv[1] : 0, argc > 2 ? argv[2] : 0);
    return 1;
}
#endif
