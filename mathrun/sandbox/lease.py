"""A :class:`Lease`: one job user and its fresh workspace, held by a front
end from ``Sandbox.acquire`` until ``release``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet import defer

from .config import DEFAULT_PATH
from .job import Job
from .limits import Limits
from .pool import JobUser
from .result import Status
from .workspace import Workspace

if TYPE_CHECKING:
    from .sandbox import Sandbox


class Lease:
    """A job user and a workspace, held until ``release``."""

    def __init__(self, sandbox: Sandbox, user: JobUser, workspace: Workspace, cgroup):
        self.sandbox = sandbox
        self.user = user
        self.workspace = workspace
        self.cgroup = cgroup
        self.job: Job | None = None
        self.external_processes = False
        self._released = None

    def spawn(
        self,
        argv: list[str],
        limits: Limits | None = None,
        env: dict | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
        frontend: str = "jobs",
        stdin: bytes | None = None,
        output_fd: int | None = None,
        output_create=None,
    ) -> Job:
        """Start ``argv`` in the sandbox.  Output is collected into the
        result unless ``on_output(stream, data)`` takes it as it comes, or
        ``output_fd`` (a file) takes it straight from the job, or
        ``output_create`` (IJobStarter.spawn: a file the starter makes, as
        someone, in a directory; its name in ``job.output_name``).  ``stdin``:
        the whole input, given now (b"": none, /dev/null); None: a pipe
        that the caller writes and closes."""
        sandbox = self.sandbox
        if self.job is not None and not self.job._ended:
            raise RuntimeError("this lease already runs a job")
        limits, options = sandbox.spawn_settings(self, limits or sandbox.config.limits)
        self.prepare_limits(limits)
        job = self.job = Job(self, limits, on_output, frontend)
        if stdin is not None:
            if stdin:
                job.write(stdin)
            job.close_stdin()
        environment = {"PATH": DEFAULT_PATH, "HOME": self.workspace.path, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
        if env:
            environment.update(env)
        job.start(sandbox.starter, list(argv), environment, options, output_fd, output_create)
        return job

    def capped(self, limits: Limits | None) -> Limits:
        """``limits`` (default: the sandbox's) lowered to the operator's maxima."""
        return (limits or self.sandbox.config.limits).capped_by(self.sandbox.config.max_limits)

    def prepare_limits(self, limits: Limits) -> None:
        """Set the cgroup's limits before a process of this lease starts."""
        if self.cgroup:
            # The slot's keeper sits in its pids cgroup: one process more.
            extra = 1 if limits.processes and self.sandbox.uses_keeper else 0
            self.cgroup.prepare(limits.memory_bytes, limits.processes and limits.processes + extra)

    def adopt(self, starter, limits: Limits, on_output=None, frontend: str = "jobs") -> Job:
        """A Job whose process comes from ``starter`` (an IJobStarter) instead
        of the spawn server: a Maxima child, forked by its mother into this
        lease, starts itself this way."""
        if self.job is not None and not self.job._ended:
            raise RuntimeError("this lease already runs a job")
        self.job = Job(self, self.capped(limits), on_output, frontend)
        self.job.start(starter, [], {}, [])
        return self.job

    def release(self) -> defer.Deferred:
        """Stop what runs, kill what is left, remove the workspace, free the user."""
        if self._released is None:
            if self.job is not None and not self.job._ended:
                self.job.stop(Status.CANCELLED)
                self._released = self.job.done.addCallback(lambda _: self.sandbox._cleanup(self))
            else:
                self._released = self.sandbox._cleanup(self)
        return self._released
