/* PID 1 of a Maxima child's PID namespace (as root), exec'ed by the mother
 * for every child (jail_fork_with_init, ext/maxima-fork.c): it waits until
 * the job was forked into its namespace (end of file on fd 0), then until
 * every process there has ended (gnuplot may still be writing a plot when
 * Maxima exits, as it would outside a namespace), reaping orphans, and
 * exits, which ends the namespace.  The same steps as `mathrun-jail
 * nsinit` (jail_namespace_init with linger), without libc: a static glibc
 * program's start-up (CPU feature probing through cpuid, which traps on a
 * virtual machine; TLS; ifunc relocations) measured ~0.39 ms of CPU per
 * exec here, this one ~0.09 ms, and one runs per Maxima request.
 *
 * x86-64 only has the raw start; elsewhere it is built on libc (see the
 * Makefile) with the same code. */
#define _GNU_SOURCE
#include <asm/unistd.h>
#include <linux/poll.h>
#include <linux/prctl.h>

#define SIGCHLD_MASK (1UL << (17 - 1))
#define SFD_FLAGS (02000000 | 04000) /* SFD_CLOEXEC | SFD_NONBLOCK */
#define WNOHANG_WALL (1 | 0x40000000)
#define EINTR 4

/* sys() returns what the kernel returns: -errno on failure. */
#if defined(__x86_64__) && defined(MAXIMA_NSINIT_RAW)
static long sys(long n, long a, long b, long c, long d)
{
    long ret;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
    return ret;
}
#else
long syscall(long n, ...);
int *__errno_location(void);
static long sys(long n, long a, long b, long c, long d)
{
    long r = syscall(n, a, b, c, d);
    return r == -1 ? -(long)*__errno_location() : r;
}
#endif

struct ksigaction {
    unsigned long handler, flags, restorer, mask;
};

/* Reap what has ended; 1 when children are left (alive). */
static int reap_orphans(void)
{
    long p;
    while ((p = sys(__NR_wait4, -1, 0, WNOHANG_WALL, 0)) > 0) {
    }
    return p == 0;
}

static void nsinit(void)
{
    struct ksigaction dfl = {0, 0, 0, 0};
    unsigned long chld = SIGCHLD_MASK;
    char c;
    long r;

    sys(__NR_prctl, PR_SET_NAME, (long)"mathrun-init", 0, 0);
    /* Not at the mother's nice 10: the server's cleanup of the job user
     * waits until the killed child is gone, and reaping it is this
     * process's work (it does nothing else). */
    sys(__NR_setpriority, 0 /* PRIO_PROCESS */, 0, 0, 0);
    sys(__NR_close_range, 1, ~0U, 0, 0);
    /* The mother ignores SIGCHLD, and an ignored signal stays ignored
     * across exec: the default back, then blocked, read from a signalfd. */
    sys(__NR_rt_sigaction, 17, (long)&dfl, 0, 8);
    sys(__NR_rt_sigprocmask, 2 /* SIG_SETMASK */, (long)&chld, 0, 8);
    long sfd = sys(__NR_signalfd4, -1, (long)&chld, 8, SFD_FLAGS);
    while ((r = sys(__NR_read, 0, (long)&c, 1, 0)) == -EINTR) {
    }
    sys(__NR_close, 0, 0, 0, 0); /* end of file: the job was forked, or never will be */
    long pidfd = sys(__NR_pidfd_open, 2, 0, 0, 0);
    int job_done = pidfd < 0;
    while (sfd >= 0) {
        int left = reap_orphans();
        if (job_done && !left)
            break;
        struct pollfd p[2] = {{(int)sfd, POLLIN, 0}, {job_done ? -1 : (int)pidfd, POLLIN, 0}};
        r = sys(__NR_poll, (long)p, 2, -1, 0);
        if (r < 0 && r != -EINTR)
            break;
        if (r > 0 && p[1].revents)
            job_done = 1;
        unsigned char info[128];
        while (sys(__NR_read, sfd, (long)info, sizeof info, 0) > 0) {
        }
    }
    sys(__NR_exit_group, reap_orphans() ? 1 : 0, 0, 0, 0);
}

#if defined(__x86_64__) && defined(MAXIMA_NSINIT_RAW)
__asm__(".globl _start\n_start:\n\txor %ebp, %ebp\n\tand $-16, %rsp\n\tcall nsinit_start\n\thlt\n");

__attribute__((used, noreturn)) void nsinit_start(void)
{
    nsinit();
    for (;;)
        sys(__NR_exit_group, 1, 0, 0, 0);
}
#else
int main(void)
{
    nsinit();
    return 1;
}
#endif
