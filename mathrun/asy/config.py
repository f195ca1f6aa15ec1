"""What an operator can set for the Asymptote front end: one run's limits
and timeouts (:class:`RunnerConfig`, the same on every runner) and the
/asy front end's own knobs (:class:`AsyConfig`).  ``options.py`` takes its
defaults from here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..sandbox.limits import Limits, MiB

# asy with TeX and ghostscript: enough for 3D scenes, not for a runaway.
RUN_LIMITS = Limits(memory_bytes=1 << 30, output_bytes=1 * MiB, workspace_bytes=64 * MiB, processes=32)
DEFAULT_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*", "https://localhost:*")
# The workspace holds the images and asy's intermediate files (EPS, PDF: a
# raster image's are several times its SVG).
WORKSPACE_PER_IMAGE = 4


@dataclass(frozen=True)
class RunnerConfig:
    """Operator settings of every run: ``limits`` is the sandbox's part
    (memory, text output, workspace, processes); cpu and wall time come from
    each run's timeout, the file size from ``max_image``."""

    asy: str = "asy"
    default_timeout_ms: int = 30_000
    max_timeout_ms: int = 60_000
    interactive_timeout_ms: int = 600_000
    max_files: int = 64
    max_upload: int = 4 * MiB
    max_image: int = 32 * MiB  # the images of one run together (--asy-max-image)
    limits: Limits = RUN_LIMITS

    @classmethod
    def for_images(cls, max_image: int, **knobs) -> RunnerConfig:
        """One image limit for every hop, with a workspace that holds it."""
        workspace = max(RUN_LIMITS.workspace_bytes, WORKSPACE_PER_IMAGE * max_image)
        return cls(max_image=max_image, limits=replace(RUN_LIMITS, workspace_bytes=workspace), **knobs)


@dataclass(frozen=True)
class AsyConfig:
    """The /asy front end: its back ends (URLs of runner back ends, or
    ``local`` runners in this process), who may connect, and the runner
    settings its local runners use."""

    runner: RunnerConfig = field(default_factory=RunnerConfig)
    backends: tuple[str, ...] = ()
    local: int = 1
    origins: tuple[str, ...] = DEFAULT_ORIGINS
    max_connections: int = 2048
    backend_retry_seconds: float = 30.0
    per_client: int = 0  # open /asy connections per client address, 0: no limit
    token: bytes | None = None  # shared with the runner back ends (asy/token.py)
    backends_ca: str | None = None  # CA file trusted for wss:// back ends
    render_cache_entries: int = 256
    render_cache_bytes: int = 64 * MiB
    render_cache_seconds: float = 600.0
