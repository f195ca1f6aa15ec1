"""The sandbox's cleanup after every lease (a mixin of Sandbox): kill what
is left (through the reaper, when processes may be), empty the workspace in
place or unmount it, and only then hand the job user to the next job; a
user whose cleanup failed is taken out of service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import defer

from .pool import JobUser
from .reaper import _Reaper

if TYPE_CHECKING:
    from .lease import Lease


class Cleanup:
    """Sandbox's cleanup methods (its attributes: pool, leases, privileged,
    config, reactor, log, _kept, _emptied, _reaper)."""

    def _cleanup(self, lease: Lease) -> defer.Deferred:
        """Kill what is left (if anything may be), empty the workspace, free
        the user; plain callbacks (this runs after every job)."""
        self.leases.discard(lease)
        if lease.external_processes and self.privileged:
            try:
                d = self._reap_and_unmount(lease)
            except Exception:
                d = defer.fail()
            d.addCallbacks(lambda _: self._cleaned(lease), lambda f: self._cleanup_failed(lease, f))
            return d
        try:
            self._cleaned(lease)
        except Exception:
            return defer.fail()
        return defer.succeed(None)

    def _cleaned(self, lease: Lease) -> None:
        workspace = lease.workspace
        try:
            if self.privileged and workspace.mounted and not lease.external_processes and self._emptied_in_place(lease):
                self._kept[lease.user] = workspace.mounted_size
            else:
                workspace.remove()
        except Exception as e:
            self._quarantine(lease.user, f"its cleanup failed: {e}")
            raise
        # Emptied, with nothing of the job left to write there again.
        self._emptied[lease.user] = not lease.external_processes
        self.pool.release(lease.user)

    def _emptied_in_place(self, lease: Lease) -> bool:
        """Every process of the job is gone: its tmpfs is emptied and kept
        for the slot's next job; False (to be unmounted) if that failed."""
        try:
            lease.workspace.empty()
        except OSError as e:
            self.log.warn("sandbox: the workspace of {user} is remade: {e}", user=lease.user.name, e=e)
            return False
        return True

    def _cleanup_failed(self, lease: Lease, reason):
        self._quarantine(lease.user, f"its cleanup failed: {reason.getErrorMessage()}")
        return reason

    def _quarantine(self, user: JobUser, why: str) -> None:
        """A user whose cleanup failed is not handed out again (the pool
        shrinks by one) until the server restarts and reaps it."""
        self.log.error("sandbox: job user {user} taken out of service: {why}", user=user.name, why=why)
        self.pool.retire(user)

    def _reap_async(self, user: JobUser, cgroup=None, unmount: str | None = None) -> defer.Deferred:
        if self._reaper is None or self._reaper.ended.called:
            self._reaper = _Reaper()
            self.reactor.spawnProcess(
                self._reaper, self.config.jail, [self.config.jail, "reaper"] + self._kill_options(), env={}
            )
        # (A slot's keeper, root, sits in its pids cgroup: the reaper does
        # not count it, ext/jail-kill.c.)
        return self._reaper.reap(user.uid, cgroup.pids_current if cgroup is not None else None, unmount)

    def _reap_and_unmount(self, lease: Lease) -> defer.Deferred:
        """The reaper also detaches the tmpfs workspace once the user's
        processes are gone: umount2 waits out an RCU grace period (~0.3 ms,
        little CPU) that would otherwise stall the reactor once per job.
        Plain callbacks, not a coroutine: this runs after every Maxima job."""
        workspace = lease.workspace
        path = workspace.root if workspace.mounted and workspace.root.split() == [workspace.root] else None
        d = self._reap_async(lease.user, lease.cgroup, path)
        if path is not None:
            d.addCallback(lambda _: workspace.unmounted())
        return d
