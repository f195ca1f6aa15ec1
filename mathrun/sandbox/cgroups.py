"""Memory and process limits through cgroups, where the host has them.

One cgroup per job user, made at start-up and reused: a job's peak memory
and its OOM kills are read from it.  cgroup v1 (separate ``memory`` and
``pids`` hierarchies) and v2 (one unified hierarchy) are both handled; with
neither, ``detect`` returns None and the sandbox falls back to rlimits.
"""

from __future__ import annotations

import functools
import os

ROOT = "/sys/fs/cgroup"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class SlotCgroup:
    """The cgroup (one per controller in v1) of one job user."""

    def __init__(self, version: int, memory_dir: str, pids_dir: str | None):
        self.version = version
        self.memory_dir = memory_dir
        self.pids_dir = pids_dir
        self._written = {}
        self._fds: dict[tuple[str, int], int] = {}
        self._oom_before = self.oom_kills()

    def _set(self, path: str, value: str) -> None:
        """Write a limit unless this slot's last job had the same one."""
        if self._written.get(path) != value:
            self._pwrite(path, value)
            self._written[path] = value

    def _fd(self, path: str, flags: int) -> int:
        """The slot's files stay open: an open, read and close through
        Python's file objects costs ~45 us, a pread on a kept fd ~1 us, and
        each job reads or writes a few of them."""
        key = (path, flags)
        fd = self._fds.get(key)
        if fd is None:
            fd = self._fds[key] = os.open(path, flags | os.O_CLOEXEC)
        return fd

    def _pread(self, path: str) -> str:
        try:
            return os.pread(self._fd(path, os.O_RDONLY), 65536, 0).decode()
        except OSError:
            self._forget(path, os.O_RDONLY)  # a cgroup made anew: open it again
            return os.pread(self._fd(path, os.O_RDONLY), 65536, 0).decode()

    def _pwrite(self, path: str, value: str) -> None:
        try:
            os.pwrite(self._fd(path, os.O_WRONLY), value.encode(), 0)
        except OSError:
            self._forget(path, os.O_WRONLY)
            os.pwrite(self._fd(path, os.O_WRONLY), value.encode(), 0)

    def _forget(self, path: str, flags: int) -> None:
        fd = self._fds.pop((path, flags), None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Close the kept files (at the sandbox's stop)."""
        for key in list(self._fds):
            self._forget(*key)

    @property
    def dirs(self) -> list[str]:
        """Directories the jail writes the job's pid into."""
        return [d for d in (self.memory_dir, self.pids_dir) if d]

    @functools.cached_property
    def pids_current(self) -> str | None:
        """The file counting this slot's processes (what the reaper reads)."""
        for d in (self.pids_dir, self.memory_dir):
            if d and os.path.exists(os.path.join(d, "pids.current")):
                return os.path.join(d, "pids.current")
        return None

    def prepare(self, memory_bytes: int | None, processes: int | None) -> None:
        """Set this job's limits and reset the peak and the OOM count."""
        if self.version == 1:
            self._set(self._m("memory.limit_in_bytes"), str(memory_bytes or -1))
            self._pwrite(self._m("memory.max_usage_in_bytes"), "0")
        else:
            self._set(self._m("memory.max"), str(memory_bytes or "max"))
            if os.path.exists(self._m("memory.swap.max")):
                self._set(self._m("memory.swap.max"), "0")
            try:
                self._pwrite(self._m("memory.peak"), "0")  # resettable since Linux 6.12
            except OSError:
                pass
        if self.pids_dir:
            self._set(os.path.join(self.pids_dir, "pids.max"), str(processes or "max"))

    def _m(self, name: str) -> str:
        return os.path.join(self.memory_dir, name)

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in self._pread(self._m(name)).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this job for memory (the
        slot is this job's alone, so the count since the last job is its)."""
        now = self.oom_kills()
        killed, self._oom_before = now > self._oom_before, now
        return killed

    def peak_memory(self) -> int | None:
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int(self._pread(self._m(name)))
        except (OSError, ValueError):
            return None


class Cgroups:
    """The ``mathrun`` cgroup subtree and its per-user children."""

    def __init__(self, version: int, memory_root: str, pids_root: str | None):
        self.version = version
        self.memory_root = memory_root
        self.pids_root = pids_root

    def describe(self) -> str:
        pids = "pids" if self.pids_root else "no pids controller"
        return f"cgroup v{self.version} (memory, {pids})"

    def slot(self, name: str) -> SlotCgroup:
        memory = os.path.join(self.memory_root, name)
        pids = os.path.join(self.pids_root, name) if self.pids_root else None
        for d in filter(None, (memory, pids)):
            os.makedirs(d, exist_ok=True)
        return SlotCgroup(self.version, memory, pids)


def detect(root: str = ROOT, name: str = "mathrun") -> Cgroups | None:
    """The cgroups this host offers for jobs, set up under ``name``, or None."""
    try:
        controllers = _read(os.path.join(root, "cgroup.controllers")).split()
    except OSError:
        controllers = None
    if controllers is not None:
        if "memory" not in controllers:
            return None
        base = os.path.join(root, name)
        try:
            os.makedirs(base, exist_ok=True)
            wanted = ["memory"] + (["pids"] if "pids" in controllers else [])
            _write(os.path.join(root, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))
            _write(os.path.join(base, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))
        except OSError:
            return None
        return Cgroups(2, base, base if "pids" in controllers else None)
    memory = os.path.join(root, "memory")
    if not os.path.exists(os.path.join(memory, "memory.limit_in_bytes")):
        return None
    pids = os.path.join(root, "pids")
    try:
        os.makedirs(os.path.join(memory, name), exist_ok=True)
        if os.path.exists(os.path.join(pids, "pids.max")) or os.path.exists(os.path.join(pids, "cgroup.procs")):
            os.makedirs(os.path.join(pids, name), exist_ok=True)
        else:
            pids = None
    except OSError:
        return None
    return Cgroups(1, os.path.join(memory, name), os.path.join(pids, name) if pids else None)
