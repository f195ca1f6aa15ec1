"""What an operator can set for the Maxima front end."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from .. import paths
from ..sandbox.limits import Limits

MiB = 1 << 20
# Where the set-up step builds Maxima on SBCL and saves the mother core: out
# of the checkout, so that every clone on a machine shares one build.
MAXIMA_HOME = "/opt/mathrun/maxima"
MOTHER_LISP = paths.mother_lisp()


def base_core_path(home: str = MAXIMA_HOME) -> str:
    """The set-up step's core for this checkout's mother Lisp: named by its
    SHA-256, so that checkouts with other Lisp never share (or overwrite)
    one core (scripts/save-maxima-core.sh names it the same way)."""
    try:
        with open(MOTHER_LISP, "rb") as f:
            key = hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError:
        key = "missing"
    return os.path.join(home, "maxima", f"mother-{key}.core")


DEFAULT_CORE = base_core_path()
FORK_LIBRARY = paths.helper(paths.FORK_LIBRARY)


def default_core_cache() -> str:
    """Beside the base core when we may write there (root), else the
    user's cache directory."""
    if os.geteuid() == 0:
        return os.path.join(MAXIMA_HOME, "cores")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mathrun", "maxima-cores")


_LIMITS: dict = {}  # MaximaConfig.limits, by the fields it reads


@dataclass(frozen=True)
class MaximaConfig:
    """What an operator can set for the Maxima front end; ``options.py``
    takes its defaults from here, ``limits()`` makes a child's sandbox limits."""

    core: str = DEFAULT_CORE
    sbcl: str = "sbcl"
    fork_library: str = FORK_LIBRARY
    heap_mib: int = 1024  # the mother's --dynamic-space-size, inherited by every child
    ready: int = 3  # forked children kept waiting for a request
    labels: bool = True  # answer as goemaxima does: Maxima's REPL labels and prompts
    max_timeout_ms: int = 30000
    queue_wait: float = 10.0  # seconds a request may wait for a child
    max_waiting: int = 256  # requests that may wait at once
    max_input_bytes: int = 1 * MiB
    output_bytes: int = 4 * MiB  # a job's text output, at most
    plot_files: int = 64
    plot_bytes: int = 16 * MiB  # all plot files of a job together
    memory_bytes: int = 1536 * MiB  # the job's cgroup (SBCL's heap plus gnuplot and friends)
    workspace_bytes: int = 64 * MiB
    processes: int = 32
    open_files: int = 256
    start_timeout: float = 300.0  # the mother loading its libraries
    spawn_timeout: float = 10.0  # fork to "ready"
    libraries: list[str] = field(default_factory=list)  # files load()ed into the mother
    packages: list[str] = field(default_factory=list)  # packages load()ed into the mother
    # version -> libraries; when not empty, one mother per version, and a
    # request's ``version`` picks one (the first is the default).
    versions: dict[str, list[str]] = field(default_factory=dict)
    # STACK library directories (stack/maxima of a STACK install): version
    # ("" = read from its stackmaxima.mac) -> directory; one mother each.
    stack: dict[str, str] = field(default_factory=dict)
    # Where saved cores of library sets are cached (see cores.py).
    core_cache: str = field(default_factory=lambda: default_core_cache())

    def limits(self) -> Limits:
        """A child's sandbox limits (the request's timeout lowers the wall
        limit); the sandbox caps them by the operator's maxima.  Memoized
        (the config is frozen): one is asked for at every fork."""
        key = (
            self.max_timeout_ms, self.memory_bytes, self.workspace_bytes, self.open_files, self.processes, self.output_bytes
        )  # fmt: skip
        limits = _LIMITS.get(key)
        if limits is None:
            if len(_LIMITS) > 64:
                _LIMITS.clear()
            limits = _LIMITS[key] = self._limits()
        return limits

    def _limits(self) -> Limits:
        return Limits(
            cpu_seconds=self.max_timeout_ms / 1000 + 2,
            wall_seconds=self.max_timeout_ms / 1000,
            memory_bytes=self.memory_bytes,
            file_size_bytes=self.workspace_bytes,
            open_files=self.open_files,
            processes=self.processes,
            output_bytes=self.output_bytes,
            workspace_bytes=self.workspace_bytes,
        )

    def argv(self, core: str | None = None) -> list[str]:
        """The mother's command line, from ``core`` (default: the base core)."""
        return [
            self.sbcl,
            "--core",
            core or self.core,
            "--noinform",
            "--dynamic-space-size",
            f"{self.heap_mib}MB",
            "--disable-ldb",
            "--lose-on-corruption",
            "--end-runtime-options",
            "--very-quiet",
        ]
