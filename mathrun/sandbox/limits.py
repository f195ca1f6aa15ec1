"""What a job may use, and how that turns into the jail helper's arguments.

Pure arithmetic, no I/O: the front ends build a :class:`Limits`, cap it with
the operator's maximum, and the sandbox hands ``jail_args`` to the helper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

MiB = 1024 * 1024
# Memos of capped_by and with_wall_seconds (Limits are frozen, so hashable).
_CAPPED: dict = {}
_WALL: dict = {}


@dataclass(frozen=True)
class Limits:
    """Resource limits of one job; ``None`` means "not limited".

    ``memory_bytes`` is enforced by a memory cgroup where the host has one
    (SBCL and other runtimes that reserve their heap up front survive it);
    without cgroups it falls back to RLIMIT_AS.  ``address_space_bytes`` is
    always RLIMIT_AS.  ``processes`` counts the job user's processes
    (RLIMIT_NPROC, and pids.max where cgroups exist).
    """

    cpu_seconds: float | None = 10.0
    wall_seconds: float | None = 20.0
    memory_bytes: int | None = 512 * MiB
    address_space_bytes: int | None = None
    file_size_bytes: int | None = 64 * MiB
    open_files: int | None = 256
    processes: int | None = 64
    output_bytes: int | None = 16 * MiB
    workspace_bytes: int | None = 128 * MiB

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"{f.name} must be a number or None, not {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{f.name} must be positive, not {value!r}")

    def capped_by(self, maximum: Limits) -> Limits:
        """Each limit lowered to the operator's maximum (None there: no cap).
        Memoized: a server caps the same few limits at every job, and a new
        Limits (``replace`` and its checks) costs ~30 us of Python."""
        key = (self, maximum)
        capped = _CAPPED.get(key)
        if capped is None:
            if len(_CAPPED) > 1024:
                _CAPPED.clear()
            capped = _CAPPED[key] = self._capped_by(maximum)
        return capped

    def with_wall_seconds(self, seconds: float | None) -> Limits:
        """The same limits with another wall-clock limit (memoized as ``capped_by``)."""
        if seconds == self.wall_seconds:
            return self
        key = (self, seconds)
        changed = _WALL.get(key)
        if changed is None:
            if len(_WALL) > 1024:
                _WALL.clear()
            changed = _WALL[key] = replace(self, wall_seconds=seconds)
        return changed

    def _capped_by(self, maximum: Limits) -> Limits:
        changes = {}
        for f in fields(self):
            mine, cap = getattr(self, f.name), getattr(maximum, f.name)
            if cap is not None and (mine is None or mine > cap):
                changes[f.name] = cap
        return replace(self, **changes) if changes else self

    def jail_args(self, memory_in_cgroup: bool) -> list[str]:
        """The rlimit options of ``mathrun-jail run``.

        RLIMIT_CPU counts whole seconds: a fractional limit is rounded up so
        that a job never gets less than it asked for; the wall limit (kept
        by the server) is what stops it promptly.
        """
        args = []
        if self.cpu_seconds is not None:
            args += ["--cpu", str(math.ceil(self.cpu_seconds))]
        address_space = self.address_space_bytes
        if self.memory_bytes is not None and not memory_in_cgroup:
            if address_space is None or self.memory_bytes < address_space:
                address_space = self.memory_bytes
        if address_space is not None:
            args += ["--as", str(int(address_space))]
        if self.file_size_bytes is not None:
            args += ["--fsize", str(int(self.file_size_bytes))]
        if self.open_files is not None:
            args += ["--nofile", str(int(self.open_files))]
        if self.processes is not None:
            args += ["--nproc", str(int(self.processes))]
        return args
