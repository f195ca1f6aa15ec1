"""Job users, handed out one per running job.

A slot goes back to the pool only after its cleanup has finished, so two jobs
never share a user (and a user's leftovers can never be charged to the next
job).  Waiters are served first come, first served; a waiter can give up
(``Deferred.cancel`` or a timeout) without losing anyone's place.
"""

from __future__ import annotations

import collections
import pwd
from dataclasses import dataclass

from twisted.internet import defer


@dataclass(frozen=True)
class JobUser:
    """A job user: its name and ids, from the user database."""

    name: str
    uid: int
    gid: int


def find_job_users(prefix: str, count: int) -> list[JobUser]:
    """``prefix-1`` … ``prefix-count`` from the user database."""
    users = []
    for n in range(1, count + 1):
        name = f"{prefix}-{n}"
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise LookupError(f"job user {name!r} does not exist (run the set-up step)") from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise ValueError(f"job user {name!r} has uid or gid 0")
        users.append(JobUser(name, entry.pw_uid, entry.pw_gid))
    return users


class SlotPool:
    """A fixed set of slots (job users) with a FIFO of waiters.

    Free slots go out last released first (the first time, in order): a
    slot used a moment ago has its cgroup limits written, its network
    namespace made, its pages warm; a quiet server uses few slots."""

    def __init__(self, slots):
        slots = tuple(slots)
        self._free = collections.deque(reversed(slots))
        self._all = slots
        self._busy = set()
        self._retired = set()
        self._waiting = collections.deque()

    @property
    def free(self) -> int:
        """Slots ready to hand out."""
        return len(self._free)

    @property
    def busy(self) -> int:
        """Slots handed out (until their cleanup ends)."""
        return len(self._busy)

    @property
    def waiting(self) -> int:
        """Acquirers waiting for a slot."""
        return len(self._waiting)

    def take(self):
        """A free slot now, or None (nobody waits before a free slot)."""
        if not self._free:
            return None
        slot = self._free.pop()
        self._busy.add(slot)
        return slot

    def acquire(self) -> defer.Deferred:
        """A Deferred that fires with a slot; cancel it to stop waiting."""
        if self._free:
            slot = self._free.pop()
            self._busy.add(slot)
            return defer.succeed(slot)
        d = defer.Deferred(canceller=self._waiting.remove)
        self._waiting.append(d)
        return d

    @property
    def quarantined(self) -> int:
        """Slots taken out of the pool (their cleanup failed)."""
        return len(self._retired)

    def retire(self, slot) -> None:
        """Take a slot in use out of the pool for good."""
        self._busy.discard(slot)
        self._all = tuple(s for s in self._all if s != slot)
        self._retired.add(slot)

    def release(self, slot) -> None:
        """Give a slot back; the longest waiter gets it at once."""
        if slot not in self._busy:
            raise ValueError(f"{slot!r} is not in use")
        self._busy.remove(slot)
        if self._waiting:
            self._busy.add(slot)
            self._waiting.popleft().callback(slot)
        else:
            self._free.append(slot)
