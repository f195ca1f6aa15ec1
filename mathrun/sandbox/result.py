"""How a job ended: the jail's report line, parsed, and the verdict.

``parse_report`` and ``classify`` are pure so that every path through them is
tested without running anything.
"""

from __future__ import annotations

import enum
import errno
import os
import signal
from dataclasses import dataclass

from .limits import Limits


class Status(enum.Enum):
    """How a job ended, as the metrics and the front ends tell it."""

    OK = "ok"
    NONZERO_EXIT = "nonzero exit"
    SIGNALLED = "signalled"
    TIME_LIMIT = "time limit"
    MEMORY_LIMIT = "memory limit"
    OUTPUT_LIMIT = "output limit"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal error"


@dataclass(frozen=True)
class JobResult:
    """Everything the sandbox knows about a finished job.

    CPU times cover the job's main process and the descendants it waited
    for (the spawn server's wait4 rusage of it).  ``peak_memory`` is the cgroup's peak where
    there is one, else the largest single process's maximum RSS.
    """

    status: Status
    exit_code: int | None = None
    signal: int | None = None
    user_cpu: float = 0.0
    system_cpu: float = 0.0
    wall: float = 0.0
    peak_memory: int | None = None
    leftover: bool = False
    detail: str = ""
    failed_stage: str | None = None  # "exec" or "jail" when the program never ran
    stdout: bytes = b""
    stderr: bytes = b""
    files: tuple = ()  # (name, bytes) the front end read back from the workspace

    @property
    def ok(self) -> bool:
        """The job exited 0 within its limits."""
        return self.status is Status.OK

    def describe(self) -> str:
        """One line for logs and error messages."""
        parts = [] if self.detail.startswith(self.status.value) else [self.status.value]
        if self.exit_code is not None and self.status is not Status.OK:
            parts.append(f"exit {self.exit_code}")
        if self.signal is not None:
            parts.append(f"signal {signal_name(self.signal)}")
        if self.detail:
            parts.append(self.detail)
        return ", ".join(parts)


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9: for the job log line."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class ReportError(ValueError):
    """The jail's report line is not what it writes."""


_INT_FIELDS = {"code", "signal", "errno", "maxrss_kb", "leftover", "killed", "remaining"}
_FLOAT_FIELDS = {"utime", "stime", "wall"}
# "ended": the process closed its output and is gone, its exit status
# unknown (a Maxima child, whose mother reaps it).
_STATUSES = {"exited", "signalled", "failed", "ended"}


def parse_report(line: bytes) -> dict:
    """``status=exited code=0 utime=0.1 ...`` into a dict of typed values."""
    try:
        text = line.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ReportError("report is not ASCII") from None
    if not text or "\n" in text:
        raise ReportError(f"expected one report line, got {text!r}")
    report = {}
    for item in text.split(" "):
        key, sep, value = item.partition("=")
        if not sep or key in report:
            raise ReportError(f"bad report field {item!r}")
        try:
            if key in _INT_FIELDS:
                report[key] = int(value)
            elif key in _FLOAT_FIELDS:
                report[key] = float(value)
            else:
                report[key] = value
        except ValueError:
            raise ReportError(f"bad value in report field {item!r}") from None
    status = report.get("status")
    if status not in _STATUSES:
        raise ReportError(f"unknown status {status!r}")
    needed = {"exited": "code", "signalled": "signal", "failed": "errno", "ended": None}[status]
    if needed is not None and needed not in report:
        raise ReportError(f"report of {status} lacks {needed}")
    return report


def _failed_start(report: dict, common: dict) -> JobResult:
    """The jail or the exec failed: the program never ran."""
    code = report["errno"]
    exec_failed = report.get("stage") == "exec"
    what = "starting the program" if exec_failed else "entering the sandbox"
    return JobResult(
        Status.INTERNAL_ERROR,
        detail=f"{what} failed: {os.strerror(code)} ({errno.errorcode.get(code, code)})",
        failed_stage="exec" if exec_failed else "jail",
        **common,
    )


def classify(
    report: dict | None,
    limits: Limits,
    cause: Status | None = None,
    oom_killed: bool = False,
    peak_memory: int | None = None,
    problem: str = "",
    streams: dict | None = None,
) -> JobResult:
    """The verdict on one job (``streams``: its collected ``stdout`` and
    ``stderr``, put in the result as it is made, not copied in afterwards).

    ``cause`` is why the server stopped it (wall time, output cap, cancel),
    which wins over how the process died (the server killed it), except a
    kill by the kernel for memory, which is the root cause.
    """
    streams = streams or {}
    if report is None:
        if cause is not None:
            # Stopped before the jail had set up its signal handling: nothing ran.
            return JobResult(cause, detail="stopped before it started", **streams)
        return JobResult(Status.INTERNAL_ERROR, detail=problem or "no report from the jail", **streams)
    common = dict(
        user_cpu=report.get("utime", 0.0),
        system_cpu=report.get("stime", 0.0),
        wall=report.get("wall", 0.0),
        peak_memory=peak_memory if peak_memory is not None else report.get("maxrss_kb", 0) * 1024,
        leftover=bool(report.get("leftover", 0)),
        **streams,
    )
    if report.get("remaining", 0):
        return JobResult(Status.INTERNAL_ERROR, detail="processes of the job survived the kill", **common)
    if report["status"] == "failed":
        return _failed_start(report, common)
    exit_code = report.get("code") if report["status"] == "exited" else None
    sig = report.get("signal") if report["status"] == "signalled" else None
    outcome = dict(exit_code=exit_code, signal=sig, **common)
    if oom_killed:
        # The root cause, even when the server stopped the job afterwards
        # (a tool whose helper the kernel killed may hang until the wall limit).
        return JobResult(Status.MEMORY_LIMIT, detail=f"memory limit of {limits.memory_bytes} bytes", **outcome)
    if cause is not None:
        detail = {
            Status.TIME_LIMIT: f"wall-clock limit of {limits.wall_seconds:g} s" if limits.wall_seconds else "",
            Status.OUTPUT_LIMIT: f"output limit of {limits.output_bytes} bytes" if limits.output_bytes else "",
        }.get(cause, "")
        return JobResult(cause, detail=detail, **outcome)
    cpu = common["user_cpu"] + common["system_cpu"]
    if sig == signal.SIGXCPU or (
        sig == signal.SIGKILL and limits.cpu_seconds is not None and cpu >= limits.cpu_seconds
    ):
        return JobResult(Status.TIME_LIMIT, detail=f"CPU limit of {limits.cpu_seconds:g} s", **outcome)
    if sig == signal.SIGXFSZ:
        return JobResult(Status.OUTPUT_LIMIT, detail=f"file size limit of {limits.file_size_bytes} bytes", **outcome)
    if sig is not None:
        return JobResult(Status.SIGNALLED, **outcome)
    if report["status"] == "exited" and exit_code != 0:
        return JobResult(Status.NONZERO_EXIT, **outcome)
    return JobResult(Status.OK, **outcome)
