/* The per-slot keeper's two sides (ext/spawn-keeper.c: the keeper itself;
 * ext/spawn-keepers.c: the spawn server's table of keepers).  See
 * spawn-keeper.c for the design. */
#ifndef MATHRUN_SPAWN_KEEPER_H
#define MATHRUN_SPAWN_KEEPER_H

#include "spawn.h"

#include <stddef.h>
#include <sys/resource.h>
#include <sys/types.h>

#define KEEPER_FDS 5

/* What the keeper sends when a job has ended. */
struct keeper_end {
    int status;
    int leftover;
    struct rusage ru;
};

/* One message on a keeper's socket (SOCK_SEQPACKET), with descriptors;
 * recv: its length (0 at end of file, -1 on error), its fds into `fds`
 * (up to `max`, the rest closed). */
int keeper_send(int sock, const void *data, size_t len, const int *fds, int nfds);
ssize_t keeper_recv(int sock, void *buf, size_t size, int *fds, int max, int *nfds);

/* The keeper's body, in the clone3 child: never returns. */
void keeper_main(int sock, const struct jail_config *cfg) __attribute__((noreturn));

#endif
