"""What an operator sets for the sandbox (:class:`SandboxConfig`), where the
helpers and the run directory are, and the one-server-per-job-user-set lock."""

from __future__ import annotations

import fcntl
import os
import tempfile
from dataclasses import dataclass, field

from .. import paths
from .limits import Limits

DEFAULT_JAIL = paths.helper(paths.JAIL)
DEFAULT_SPAWN = paths.helper(paths.SPAWN)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
RUN_DIR = "/run/mathrun"


@dataclass
class SandboxConfig:
    """What an operator can set; ``privileged=None`` means "root or not"."""

    jobs: int = 8
    user_prefix: str = "mathrun"
    helper_user: str = "mathrun"
    job_root: str | None = None
    jail: str = DEFAULT_JAIL
    spawn_server: str = DEFAULT_SPAWN
    privileged: bool | None = None
    network: bool = False
    use_cgroups: bool = True
    # Root mode: one long-lived keeper per job slot that forks its jobs, already
    # in the slot's cgroups and namespaces (ext/spawn-keeper.c).
    keeper: bool = True
    limits: Limits = field(default_factory=Limits)
    max_limits: Limits = field(
        default_factory=lambda: Limits(
            cpu_seconds=300,
            wall_seconds=600,
            memory_bytes=4 << 30,
            file_size_bytes=1 << 30,
            open_files=1024,
            processes=256,
            output_bytes=256 << 20,
            workspace_bytes=1 << 30,
        )
    )
    # False only for a server with nothing to share: unprivileged, with a
    # job root of its own (the standalone Why3 server, started per session).
    server_lock: bool = True

    def resolved_job_root(self, privileged: bool) -> str:
        """Each job-user set has its own job root, so that two servers with
        different prefixes never clear each other's workspaces."""
        if self.job_root:
            return self.job_root
        name = "jobs" if self.user_prefix == "mathrun" else f"jobs-{self.user_prefix}"
        return os.path.join(self.state_dir(privileged), name)

    def state_dir(self, privileged: bool) -> str:
        """Where the lock and the shared namespace files live."""
        if privileged:
            return RUN_DIR
        return os.path.join(tempfile.gettempdir(), f"mathrun-{os.getuid()}")

    def lock_path(self, privileged: bool) -> str:
        """One server per job-user set; without job users (unprivileged
        mode), one per job root."""
        if privileged:
            return os.path.join(RUN_DIR, f"{self.user_prefix}.lock")
        return self.resolved_job_root(privileged).rstrip("/") + ".lock"


class ServerLocked(RuntimeError):
    """Another server already uses this set of job users."""


def hold_server_lock(path: str, what: str) -> int:
    """Take the lock of a job-user set for the server's life: a second
    server with the same users would kill the first one's jobs."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ServerLocked(
            f"another mathrun server (pid {holder}) already uses {what}"
            f" (lock {path}): stop it, or give this one its own --user-prefix or --job-root"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
