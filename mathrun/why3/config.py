"""What an operator can set for the Why3 VC server.  ``options.py`` takes
its defaults from here."""

from __future__ import annotations

from dataclasses import dataclass

from ..sandbox.limits import MiB
from .protocol import DEFAULT_TIME_FORMAT


@dataclass(frozen=True)
class Why3Config:
    """The operator's settings; the wall-clock backstop is
    ``wall_factor`` × timeout + ``wall_margin`` seconds (none for timeout 0)."""

    jobs: int = 1
    time_format: str = DEFAULT_TIME_FORMAT  # "%.2f" as 1.5.1's server; "%.6f" as 1.7+
    output_dir: str = "."
    output_limit: int = 64 * MiB
    wall_factor: float = 2.0
    wall_margin: float = 5.0
