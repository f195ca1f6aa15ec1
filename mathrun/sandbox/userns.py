"""Unprivileged mode's bound: can a job get a user namespace of its own?

Without job users, a job's processes are bounded by RLIMIT_NPROC only because
each job runs in its own user namespace, where the kernel counts them apart
from every other process of the server's user (Linux 5.14 and later).  Where
that cannot be had, the sandbox refuses jobs rather than run them unbounded.
"""

from __future__ import annotations

import platform
import re
import subprocess

from .limits import Limits
from .result import ReportError, classify, parse_report

NPROC_PER_USERNS = (5, 14)


def kernel_version(release: str) -> tuple[int, int]:
    """The running kernel's (major, minor), for the user-namespace probe's advice."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def userns_refusal(jail: str, job_root: str, network: bool, release: str | None = None) -> str | None:
    """Why a job cannot get a user namespace here, or None when it can:
    one real job, with the namespaces and limits every job gets."""
    release = release or platform.release()
    if kernel_version(release) < NPROC_PER_USERNS:
        return f"Linux {release} counts RLIMIT_NPROC per user, not per user namespace (5.14 and later do)"
    argv = [jail, "run", "--userns", "--pidns", "--nproc", "4", "--dir", job_root]
    argv += [] if network else ["--unshare-net"]
    proc = subprocess.run(argv + ["--report-fd", "1", "--", "/bin/true"], capture_output=True, timeout=60)
    try:
        result = classify(parse_report(proc.stdout), Limits())
    except ReportError as e:
        return f"the jail's probe gave no report ({e}): {proc.stderr.decode(errors='replace').strip()}"
    if result.ok:
        return None
    return f"no user namespace for a job here ({result.describe()})"
