/* The job's system call filter (libseccomp), jail_enter's last step.
 *
 * Everything is allowed except the calls below, which fail with EPERM (not
 * a kill, so that a tool says what it could not do): calls that reach into
 * other processes, load code or programs into the kernel, or make or join
 * namespaces and mounts (the jail has already made the job's).  clone3 fails
 * with ENOSYS, so that glibc falls back to clone, whose flags a filter can
 * see: clone with any CLONE_NEW* flag fails with EPERM.  System calls of a
 * foreign ABI (i386, x32) kill the process (libseccomp's default). */
#define _GNU_SOURCE
#include "jail.h"

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifndef SECCOMP_MODE_FILTER
#define SECCOMP_MODE_FILTER 2
#endif

static struct sock_filter *prepared;
static unsigned short prepared_len;

static const char *const denied[] = {
    /* other processes */
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    /* kernel attack surface */
    "bpf", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "perf_event_open", "keyctl", "add_key", "request_key", "lookup_dcookie",
    /* namespaces and mounts */
    "mount", "umount2", "pivot_root", "unshare", "setns", "chroot", "open_tree",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    /* the machine */
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at", "reboot", "swapon", "swapoff", "acct",
    "quotactl", "syslog", "iopl", "ioperm", "vhangup", NULL};

/* SysV IPC and POSIX message queues, for jobs that share an IPC namespace
 * with the jobs of their slot before and after them (the Maxima children:
 * jail_seccomp_prepare_maxima): none can leave an object there. */
static const char *const ipc_calls[] = {
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl", "msgget", "msgsnd",
    "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify",
    "mq_getsetattr", "ipc", NULL};

static const unsigned long new_namespaces[] = {CLONE_NEWNS,  CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC,
                                               CLONE_NEWUSER, CLONE_NEWPID,   CLONE_NEWNET};

static int deny(scmp_filter_ctx ctx, const char *const *names)
{
    int rc;
    for (int i = 0; names[i]; i++) {
        int nr = seccomp_syscall_resolve_name(names[i]);
        if (nr == __NR_SCMP_ERROR)
            continue; /* not on this architecture */
        if ((rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0)) < 0)
            return rc;
    }
    return 0;
}

static int add_rules(scmp_filter_ctx ctx, int no_ipc)
{
    int rc;
    if ((rc = deny(ctx, denied)) < 0 || (no_ipc && (rc = deny(ctx, ipc_calls)) < 0))
        return rc;
    for (size_t i = 0; i < sizeof new_namespaces / sizeof new_namespaces[0]; i++) {
        unsigned long f = new_namespaces[i];
        if ((rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                                   SCMP_A0(SCMP_CMP_MASKED_EQ, f, f))) < 0)
            return rc;
    }
    return seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
}

/* Build the filter with libseccomp and either load it now or keep its BPF
 * program (exported through a memfd) for later loads. */
static int build(int load, int no_ipc)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    int rc, fd = -1;
    if (!ctx) {
        errno = ENOMEM;
        return -1;
    }
    rc = add_rules(ctx, no_ipc);
#if SCMP_VER_MAJOR > 2 || (SCMP_VER_MAJOR == 2 && SCMP_VER_MINOR >= 5)
    /* A binary tree of the syscall numbers, not a list: loading the filter
     * (which runs it for every syscall number to fill the kernel's cache of
     * allowed ones) costs half as much, ~55 us less per job here.  Where
     * libseccomp cannot, the list (the same filter) stays. */
    if (rc == 0)
        (void)seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
#endif
    if (rc == 0 && load)
        rc = seccomp_load(ctx);
    if (rc == 0 && !load) {
        fd = memfd_create("mathrun-seccomp", MFD_CLOEXEC);
        rc = fd < 0 ? -errno : seccomp_export_bpf(ctx, fd);
    }
    seccomp_release(ctx);
    if (rc == 0 && !load) {
        off_t size = lseek(fd, 0, SEEK_END);
        struct sock_filter *prog = size > 0 ? malloc(size) : NULL;
        if (!prog || size / sizeof *prog > 0xffff || pread(fd, prog, size, 0) != size) {
            free(prog);
            rc = -EINVAL;
        } else {
            prepared = prog;
            prepared_len = (unsigned short)(size / sizeof *prog);
        }
    }
    if (fd >= 0)
        close(fd);
    if (rc < 0) {
        errno = -rc;
        return -1;
    }
    return 0;
}

int jail_seccomp_prepare(void)
{
    return prepared ? 0 : build(0, 0);
}

/* For short-lived jobs (a Maxima child makes ~90 system calls per request): a
 * first instruction that loads a word the kernel's action cache cannot know
 * in advance (the instruction pointer) makes the kernel give up that cache
 * at load, where filling it runs the filter once for each of the ~460 syscall
 * numbers (~50 us per load here: more than running the JIT-compiled filter at
 * each of the job's calls costs, ~10 ns each).  libseccomp's program begins by
 * loading the arch, so what it decides is unchanged; jumps are relative. */
static int skip_action_cache(void)
{
    if (prepared_len == 0xffff || prepared[0].code != (BPF_LD | BPF_W | BPF_ABS))
        return 0; /* not the program expected: left as it is */
    struct sock_filter *prog = malloc((prepared_len + 1) * sizeof *prog);
    if (!prog) {
        errno = ENOMEM;
        return -1;
    }
    prog[0] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                           offsetof(struct seccomp_data, instruction_pointer));
    memcpy(prog + 1, prepared, prepared_len * sizeof *prog);
    free(prepared);
    prepared = prog;
    prepared_len++;
    return 0;
}

int jail_seccomp_prepare_maxima(void)
{
    if (prepared)
        return 0;
    return build(0, 1) < 0 ? -1 : skip_action_cache();
}

const void *jail_seccomp_program(size_t *bytes)
{
    *bytes = prepared ? prepared_len * sizeof *prepared : 0;
    return prepared;
}

void jail_seccomp_use(const void *program, size_t bytes)
{
    prepared = (struct sock_filter *)program;
    prepared_len = (unsigned short)(bytes / sizeof *prepared);
}

int jail_seccomp(void)
{
    if (!prepared)
        return build(1, 0);
    struct sock_fprog prog = {prepared_len, prepared};
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}
