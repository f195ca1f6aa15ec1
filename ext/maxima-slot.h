/* The Maxima mother's per-slot keepers (as root): see maxima-slot.c. */
#ifndef MATHRUN_MAXIMA_SLOT_H
#define MATHRUN_MAXIMA_SLOT_H

#include "jail.h"

/* The keeper program (maxima-nsinit) to start for each slot; once, in the
 * mother.  -1 (errno) when it cannot be run. */
int maxima_slot_init(const char *keeper_path);

/* Fork a child into the PID namespace of the slot of `uid` (its keeper
 * started first if need be, in the network namespace file `netns` when not
 * NULL; `root` is the child's workspace root, whose grandparent is the
 * server's state directory).  Like fork(); on failure
 * `step` says which step failed. */
pid_t maxima_slot_fork(uid_t uid, const char *root, const char *netns, const char **step);

/* In the child, before jail_enter: joins its cgroups, the slot's network
 * and IPC namespaces, and a copy of the slot's mount namespace; mounts the
 * workspace (`root`, a mount of the server's namespace, cloned) at its path
 * and its tmp/ over /tmp, /var/tmp, /dev/shm and /run/lock; then clears what jail_enter must not do again (the
 * cgroups, the network namespace, the private mounts, the /proc). */
int maxima_slot_enter(struct jail_config *cfg, const char *root, const char **step);

#endif
