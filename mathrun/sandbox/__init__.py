"""The sandbox core shared by every front end: job users, workspaces, limits,
kill-everything cleanup and accounting."""

from .limits import Limits
from .pool import JobUser, SlotPool
from .result import JobResult, Status
from .sandbox import Job, Lease, Sandbox, SandboxConfig

__all__ = [
    "Job",
    "JobResult",
    "JobUser",
    "Lease",
    "Limits",
    "Sandbox",
    "SandboxConfig",
    "SlotPool",
    "Status",
]
