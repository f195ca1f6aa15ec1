"""The sandbox every front end runs its child processes in.

A front end asks for a :class:`Lease` (a job user and a fresh workspace),
stages its input files, spawns the tool through the C jail helper as a
:class:`Job`, reads what it needs from the workspace, and releases the lease:
everything of the job user is killed and verified gone, the workspace is
removed, and only then is the user handed to the next job.

The sandbox knows nothing of HTTP, WebSocket or Why3.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

from twisted.internet import defer
from twisted.python import failure

from . import cgroups as cgroups_mod
from .cleanup import Cleanup
from .config import DEFAULT_JAIL, DEFAULT_PATH, DEFAULT_SPAWN, RUN_DIR, SandboxConfig, ServerLocked, hold_server_lock
from .job import Job
from .lease import Lease
from .limits import Limits
from .pool import JobUser, SlotPool, find_job_users
from .reaper import _JobLogger, _Reaper
from .result import JobResult
from .spawner import SpawnServer
from .userns import userns_refusal
from .workspace import Workspace, unmount

__all__ = [
    "DEFAULT_JAIL",
    "DEFAULT_PATH",
    "DEFAULT_SPAWN",
    "RUN_DIR",
    "Lease",
    "Sandbox",
    "SandboxConfig",
    "SandboxRefused",
    "ServerLocked",
    "hold_server_lock",
]


class Sandbox(Cleanup):
    """Owns the job users, their cgroups, the shared network namespace and
    the job root; hands out leases."""

    log = _JobLogger()

    def __init__(self, config: SandboxConfig | None = None, reactor=None, starter=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config or SandboxConfig()
        # What forks the jobs (an IJobStarter): the spawn server, from start().
        self.starter = starter
        self.privileged = self.config.privileged if self.config.privileged is not None else os.geteuid() == 0
        self.job_root = self.config.resolved_job_root(self.privileged)
        self.netns = os.path.join(RUN_DIR, "netns")
        # One lock for every server that shares the helper user, wherever
        # its job root is (a kill as one helper cannot hit another helper's
        # killer: servers with other helpers need not wait for each other).
        helper = self.config.helper_user
        self.kill_lock = os.path.join(RUN_DIR, "kill.lock" if helper == "mathrun" else f"kill-{helper}.lock")
        self.cgroups = None
        self.helper: JobUser | None = None
        self.pool: SlotPool | None = None
        self._slot_cgroups = {}
        self.leases: set[Lease] = set()
        self.warnings: list[str] = []
        self.observers: list[Callable[[JobResult, str], None]] = []  # (result, front end)
        self._reaper: _Reaper | None = None
        self._settings: dict[tuple, tuple[Limits, list[str]]] = {}
        self._slot_netns: dict[JobUser, str] = {}  # unprivileged mode as root: made so far
        self._slot_netns_dir: str | None = None
        self._emptied: dict[JobUser, bool] = {}  # slots whose workspace a cleanup just emptied
        self._roots: dict[JobUser, str] = {}  # a slot's workspace root
        self._kept: dict[JobUser, int] = {}  # privileged: slots whose tmpfs stays mounted, emptied (its size)
        self._lock_fd = -1
        self.refusal: str | None = None  # why no job can run here (unprivileged mode)

    # -- start-up -----------------------------------------------------------
    def start(self) -> None:
        """Blocking set-up at service start: users, job root, netns, cgroups."""
        for helper in (self.config.jail, self.config.spawn_server):
            if not os.access(helper, os.X_OK):
                raise RuntimeError(f"sandbox helper {helper} is missing: run the set-up step")
        if self.config.server_lock or self.privileged:
            self._lock_fd = hold_server_lock(self.config.lock_path(self.privileged), self._users_described())
        os.makedirs(self.job_root, mode=0o711, exist_ok=True)
        os.chmod(self.job_root, 0o711 if self.privileged else 0o700)
        self._remove_stale_workspaces()
        if self.privileged:
            if os.geteuid() != 0:
                raise RuntimeError("privileged sandbox needs root")
            users = find_job_users(self.config.user_prefix, self.config.jobs)
            self.helper = _helper(self.config.helper_user)
            for user in users:
                self._reap(user)
            self._make_netns(users)
            if self.config.use_cgroups:
                self.cgroups = cgroups_mod.detect()
            if self.cgroups:
                self._slot_cgroups = {u: self.cgroups.slot(u.name) for u in users}
            else:
                self.warnings.append("no memory cgroup on this host: memory is limited by RLIMIT_AS")
        else:
            users = self._start_unprivileged()
        if self.config.network:
            self.warnings.append("jobs may use the network (--job-network)")
        self.pool = SlotPool(users)
        if self.starter is None:
            self.starter = SpawnServer(self.reactor, self.config.spawn_server, keeper=self.uses_keeper)
        self.starter.start()
        for w in self.warnings:
            self.log.warn("sandbox: {warning}", warning=w)
        self.log.info(
            "sandbox ready: {n} job users, {mode}, {cg}",
            n=len(users),
            mode="privileged" if self.privileged else "unprivileged",
            cg=self.cgroups.describe() if self.cgroups else "no cgroups",
        )

    def _users_described(self) -> str:
        if self.privileged:
            return f"the job users {self.config.user_prefix}-N"
        return f"the job root {self.job_root}"

    def _start_unprivileged(self) -> list[JobUser]:
        """Slots of the server's own user; each job in a user and a PID
        namespace of its own, or none at all if that cannot be had."""
        me = os.getuid()
        users = [JobUser(f"self-{n}", me, os.getgid()) for n in range(1, self.config.jobs + 1)]
        self.refusal = userns_refusal(self.config.jail, self.job_root, self.config.network)
        if me == 0 and self.refusal is None:
            # RLIMIT_NPROC never binds uid 0, in any namespace: a pids cgroup must.
            self.cgroups = cgroups_mod.detect() if self.config.use_cgroups else None
            if self.cgroups is None or self.cgroups.pids_root is None:
                self.refusal = "unprivileged mode as root, without a pids cgroup: RLIMIT_NPROC does not bind root"
            else:
                prefix = self.config.user_prefix
                self._slot_cgroups = {u: self.cgroups.slot(f"{prefix}-{u.name}") for u in users}
                self.warnings.append("unprivileged mode as root: jobs own root's files (no job users)")
                self._slot_netns_dir = None if self.config.network else self.job_root.rstrip("/") + ".netns"
        if self.refusal is not None:
            self.refusal = f"jobs are refused, since their process count cannot be bounded: {self.refusal}"
            self.warnings.append(self.refusal)
        self.warnings.append(
            "unprivileged mode: jobs run as the server's own user, each in a user and PID namespace of its"
            " own (process limit, private /proc, no network), without job users: a job can read"
            " what the server's user can: weaker isolation, for trusted input"
        )
        return users

    def _slot_netns_of(self, user: JobUser) -> str | None:
        """Unprivileged mode as root: one network namespace per slot (as
        privileged mode's per job user), made at the slot's first job and
        entered by each job before its user namespace, instead of a new one
        per job (whose making and tearing down cost more than the rest of
        the jail).  None: each job makes its own."""
        if self._slot_netns_dir is None:
            return None
        path = self._slot_netns.get(user)
        if path is None:
            os.makedirs(self._slot_netns_dir, mode=0o700, exist_ok=True)
            path = os.path.join(self._slot_netns_dir, user.name)
            subprocess.run([self.config.jail, "mknetns", path], check=True)
            self._slot_netns[user] = path
        return path

    def _remove_slot_netns(self) -> None:
        paths, self._slot_netns = self._slot_netns, {}
        for path in paths.values():
            try:
                unmount(path)
                os.unlink(path)
            except OSError as e:
                self.log.warn("sandbox: {path} not removed: {e}", path=path, e=e)

    def _remove_stale_workspaces(self) -> None:
        """Workspaces of a previous run that died without cleaning up."""
        for name in os.listdir(self.job_root):
            path = os.path.join(self.job_root, name)
            if os.path.ismount(path):
                try:
                    unmount(path)
                except OSError as e:  # e.g. started without CAP_SYS_ADMIN
                    raise OSError(e.errno, f"a workspace left by a server that was killed: {e}") from None
            if not self.privileged:
                shutil.rmtree(path)

    def job_netns(self, user: JobUser) -> str:
        """The network namespace of a job user's jobs (privileged mode, no
        ``--job-network``): one per job user, so that two jobs running at once
        cannot reach each other, not even over abstract unix sockets."""
        return os.path.join(self.config.state_dir(True), f"netns-{user.name}")

    def _make_netns(self, users: list[JobUser]) -> None:
        """At start, in one process: the shared namespace (the Maxima mother
        waits in it) and one per job user, each loopback only and down."""
        if not self.config.network:
            paths = [self.netns] + [self.job_netns(u) for u in users]
            subprocess.run([self.config.jail, "mknetns", *paths], check=True)

    def _reap(self, user: JobUser) -> None:
        subprocess.run([self.config.jail, "reap", "--uid", str(user.uid)] + self._kill_options(), check=True)

    def _kill_options(self) -> list[str]:
        return ["--kill-ruid", str(self.helper.uid), "--kill-lock", self.kill_lock]

    @property
    def uses_keeper(self) -> bool:
        """Whether the spawn server forks root-mode jobs in per-slot keepers."""
        return self.config.keeper and self.privileged

    def jail_options(self, lease: Lease) -> list[str]:
        opts = ["--dir", lease.workspace.path]
        if self.privileged:
            u = lease.user
            opts += ["--uid", str(u.uid), "--gid", str(u.gid)] + self._kill_options()
            opts += ["--tmp", lease.workspace.tmp, "--pidns"]
            if not self.config.network:
                opts += ["--netns", self.job_netns(u)]
        else:
            # The host's /tmp stays shared, as it is for the server's user: the
            # standalone Why3 server hands provers files there, as the C one does.
            opts += ["--userns", "--pidns"]
            netns = self._slot_netns_of(lease.user)
            if netns is not None:
                opts += ["--netns", netns]
            elif not self.config.network:
                opts += ["--unshare-net"]
        opts.append("--seccomp")
        if lease.cgroup:
            for d in lease.cgroup.dirs:
                opts += ["--cgroup", d]
        return opts

    def spawn_settings(self, lease: Lease, limits: Limits) -> tuple[Limits, list[str]]:
        """The limits capped by the maxima, and the jail options, of a job
        in this lease: the same few over and over, so each is built once."""
        key = (lease.user, limits)
        settings = self._settings.get(key)
        if settings is None:
            if len(self._settings) > 1024:
                self._settings.clear()
            capped = limits.capped_by(self.config.max_limits)
            options = self.jail_options(lease) + capped.jail_args(lease.cgroup is not None)
            if lease.cgroup is not None and lease.cgroup.pids_current:
                options += ["--count-file", lease.cgroup.pids_current]
            settings = self._settings[key] = (capped, options)
        return settings

    # -- leases ---------------------------------------------------------------
    def acquire(self, workspace_bytes: int | None = None) -> defer.Deferred:
        """A Deferred firing with a Lease once a job user is free.

        The workspace's size is fixed here (default: the configured limits'
        ``workspace_bytes``), since input files go in before the job starts.
        """
        if self.refusal is not None:
            return defer.fail(SandboxRefused(self.refusal))
        d = self.pool.acquire()
        d.addCallback(self._lease, workspace_bytes or self.config.limits.workspace_bytes)
        return d

    def try_acquire(self, workspace_bytes: int | None = None) -> Lease | None:
        """A Lease now if a job user is free, else None (then ``acquire``):
        no Deferred on a front end's hot path."""
        if self.refusal is not None:
            raise SandboxRefused(self.refusal)
        user = self.pool.take()
        return None if user is None else self._lease(user, workspace_bytes or self.config.limits.workspace_bytes)

    def _lease(self, user: JobUser, workspace_bytes: int | None) -> Lease:
        root = self._roots.get(user)
        if root is None:
            root = self._roots[user] = os.path.join(self.job_root, user.name)
        size = min(workspace_bytes, self.config.max_limits.workspace_bytes or workspace_bytes)
        workspace = Workspace(root, user, self.privileged, size)
        try:
            workspace.create(known_empty=self._emptied.pop(user, False), kept=self._kept.pop(user, None))
        except Exception as e:
            # Never walk a directory a job may have owned: only undo our mount.
            workspace.unmount_if_mounted()
            self._quarantine(user, f"its workspace could not be made: {e}")
            raise
        lease = Lease(self, user, workspace, self._slot_cgroups.get(user))
        self.leases.add(lease)
        return lease

    def stop(self) -> defer.Deferred:
        """Release every lease (killing its job), then end the reaper and
        the spawn server: for service shutdown."""
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await defer.DeferredList([lease.release() for lease in list(self.leases)])
        reaper, self._reaper = self._reaper, None
        if reaper is not None and not reaper.ended.called:
            reaper.transport.closeStdin()
            await reaper.ended
        if self.starter is not None:
            await self.starter.stop()
        for cgroup in self._slot_cgroups.values():
            cgroup.close()
        kept, self._kept = self._kept, {}
        for user in kept:
            try:
                unmount(os.path.join(self.job_root, user.name))
            except OSError as e:
                self.log.warn("sandbox: {e}", e=e)
        self._remove_slot_netns()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _job_finished(self, job: Job, result: JobResult) -> None:
        for observer in self.observers:
            observer(result, job.frontend)
        user, status, cpu = job.lease.user.name, result.describe(), result.user_cpu + result.system_cpu
        # The line is made here with an f-string and passed as a format with
        # no fields (its braces doubled): Twisted's Formatter, pure Python,
        # took two thirds of the line's cost for six fields.  The fields stay
        # in the event for observers that read them.
        text = f"job {user} {status}: wall {result.wall:.3f}s cpu {cpu:.3f}s peak {result.peak_memory} ({job.frontend})"
        self.log.info(
            text.replace("{", "{{").replace("}", "}}"),
            frontend=job.frontend,
            user=user,
            status=status,
            wall=result.wall,
            cpu=cpu,
            peak=result.peak_memory,
        )

    # -- convenience ----------------------------------------------------------
    def run(self, argv, limits=None, files=None, stdin=None, env=None) -> defer.Deferred:
        """Run one program to the end: a Deferred firing with its JobResult."""
        d = self.acquire(limits.workspace_bytes if limits else None)
        d.addCallback(self._run_in, argv, limits, files, stdin, env)
        return d

    def _run_in(self, lease: Lease, argv, limits, files, stdin, env) -> defer.Deferred:
        try:
            for name, data in (files or {}).items():
                lease.workspace.write_file(name, data)
            job = lease.spawn(argv, limits, env, stdin=stdin or b"")
        except Exception:
            problem = failure.Failure()
            return lease.release().addCallback(lambda _: problem)
        # The lease is released in any case; its failure, if any, wins.
        return job.done.addBoth(lambda outcome: lease.release().addCallback(lambda _: outcome))


class SandboxRefused(RuntimeError):
    """No job can run here with its process count bounded (unprivileged
    mode without user namespaces): refused, never run unbounded."""


def _helper(name: str) -> JobUser:
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise LookupError(f"helper user {name!r} does not exist (run the set-up step)") from None
    if entry.pw_uid == 0:
        raise ValueError(f"helper user {name!r} is root")
    return JobUser(name, entry.pw_uid, entry.pw_gid)
