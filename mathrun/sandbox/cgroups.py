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
        self._fds: dict[str, int] = {}  # files read or reset for every job, kept open
        self._writable: set[str] = set()
        self._paths: dict[str, str] = {}  # file name -> path (joined once: read for every job)
        self._oom_before = self.oom_kills()

    def _set(self, path: str, value: str) -> None:
        """Write a limit unless this slot's last job had the same one."""
        if self._written.get(path) != value:
            _write(path, value)
            self._written[path] = value

    def _fd(self, path: str, write: bool) -> int:
        """A descriptor kept open: read-write once the file was reset
        through it (v2's memory.peak counts from the reset of that very
        descriptor), else read-only (kernfs refuses writers of read-only files)."""
        fd = self._fds.get(path)
        if fd is None or (write and path not in self._writable):
            if fd is not None:
                os.close(fd)
                del self._fds[path]
            fd = os.open(path, (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC)
            self._fds[path] = fd
            if write:
                self._writable.add(path)
        return fd

    def _read_kept(self, path: str) -> str:
        """A file read for every job: one pread on a descriptor kept open
        (a cgroup file shows its current value at each read from 0)."""
        return os.pread(self._fd(path, False), 4096, 0).decode()

    def _reset_kept(self, path: str) -> None:
        os.write(self._fd(path, True), b"0")

    def close(self) -> None:
        """Close the kept descriptors (the sandbox stops)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

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
            self._reset_kept(self._m("memory.max_usage_in_bytes"))
        else:
            self._set(self._m("memory.max"), str(memory_bytes or "max"))
            if os.path.exists(self._m("memory.swap.max")):
                self._set(self._m("memory.swap.max"), "0")
            try:
                self._reset_kept(self._m("memory.peak"))  # resettable since Linux 6.12
            except OSError:
                pass
        if self.pids_dir:
            path = self._paths.get("pids.max")
            if path is None:
                path = self._paths["pids.max"] = os.path.join(self.pids_dir, "pids.max")
            self._set(path, str(processes or "max"))

    def _m(self, name: str) -> str:
        path = self._paths.get(name)
        if path is None:
            path = self._paths[name] = os.path.join(self.memory_dir, name)
        return path

    def oom_kills(self) -> int:
        """How often the kernel's OOM killer struck in this cgroup (a memory-limit verdict)."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in self._read_kept(self._m(name)).splitlines():
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
        """The job's peak memory, for its result (None where unknown)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int(self._read_kept(self._m(name)))
        except (OSError, ValueError):
            return None


class Cgroups:
    """The ``mathrun`` cgroup subtree and its per-user children."""

    def __init__(self, version: int, memory_root: str, pids_root: str | None):
        self.version = version
        self.memory_root = memory_root
        self.pids_root = pids_root

    def describe(self) -> str:
        """The cgroup setup in a few words, for the start-up log and /health."""
        pids = "pids" if self.pids_root else "no pids controller"
        return f"cgroup v{self.version} (memory, {pids})"

    def slot(self, name: str) -> SlotCgroup:
        """The memory and pids cgroups of one job user, made once and kept open."""
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
