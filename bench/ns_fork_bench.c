/* What a PID namespace costs the Maxima mother per child, and what the
 * seccomp filter costs a job: a process with a big touched heap (like the
 * SBCL mother) forks children that exit at once, in four ways, interleaved:
 *
 *   fork                 plain fork (no PID namespace)
 *   fork_pid1            unshare(CLONE_NEWPID) + fork + setns back: the child is PID 1
 *   fork_with_init       posix_spawn of `mathrun-jail nsinit` as PID 1, fork as PID 2
 *   jail_fork            clone3 of an init (a fork of this process) + fork as PID 2
 *
 * and times jail_seccomp() (building and loading the filter) in a child.
 *
 *   cc -O2 -Iext -o /tmp/ns_fork_bench bench/ns_fork_bench.c ext/jail.c ext/jail-ns.c \
 *      ext/jail-seccomp.c -lseccomp && sudo /tmp/ns_fork_bench ext/mathrun-jail [HEAP_MB] [N]
 *
 * Prints the median microseconds of the parent's call (what the mother
 * spends before it can serve the next request) and of the whole cycle
 * (until the child and its namespace are gone). */
#define _GNU_SOURCE
#include "jail.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static const char *init_path;

static pid_t variant(int v)
{
    struct jail_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.pidns = 1;
    switch (v) {
    case 0: return fork();
    case 1: return jail_fork_pid1();
    case 2: return jail_fork_with_init(init_path);
    default: return jail_fork(&cfg);
    }
}

int main(int argc, char **argv)
{
    static const char *names[] = {"fork", "fork_pid1", "fork_with_init", "jail_fork", "seccomp build+load",
                                  "seccomp prepared"};
    if (argc < 2)
        return 2;
    init_path = argv[1];
    size_t heap = (argc > 2 ? atol(argv[2]) : 256) << 20;
    int n = argc > 3 ? atoi(argv[3]) : 300;
    char *mem = mmap(NULL, heap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return 1;
    memset(mem, 1, heap);
    double *call[6], *cycle[6];
    for (int v = 0; v < 6; v++) {
        call[v] = calloc(n, sizeof(double));
        cycle[v] = calloc(n, sizeof(double));
    }
    int pipefd[2];
    if (pipe(pipefd) < 0)
        return 1;
    for (int i = 0; i < n; i++) {
        for (int v = 0; v < 6; v++) {
            double t0 = now_us(), t1;
            pid_t pid = v < 4 ? variant(v) : fork();
            if (pid == 0) {
                if (v >= 4) {
                    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    if (v == 5 && jail_seccomp_prepare() < 0)
                        _exit(1);
                    double s = now_us();
                    if (jail_seccomp() < 0)
                        _exit(1);
                    double d = now_us() - s;
                    if (write(pipefd[1], &d, sizeof d) < 0) {}
                }
                _exit(0);
            }
            t1 = now_us();
            if (pid < 0) {
                perror(names[v]);
                return 1;
            }
            waitpid(pid, NULL, 0);
            if (v == 3)
                jail_reap_init(pid, NULL);
            while (waitpid(-1, NULL, WNOHANG | __WALL) > 0) {} /* a spawned init */
            if (v == 2)
                while (waitpid(-1, NULL, __WALL) > 0) {}
            cycle[v][i] = now_us() - t0;
            call[v][i] = t1 - t0;
            if (v >= 4 && read(pipefd[0], &call[v][i], sizeof(double)) < 0)
                return 1;
        }
    }
    printf("heap %zu MiB, %d rounds, medians in microseconds\n", heap >> 20, n);
    printf("%-16s %10s %10s\n", "variant", "call", "cycle");
    for (int v = 0; v < 6; v++) {
        qsort(call[v], n, sizeof(double), cmp);
        qsort(cycle[v], n, sizeof(double), cmp);
        printf("%-16s %10.0f %10.0f\n", names[v], call[v][n / 2], v < 4 ? cycle[v][n / 2] : 0.0);
    }
    return 0;
}
