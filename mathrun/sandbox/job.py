"""One running program in a lease, fed by its job starter: the spawn server,
or a Maxima child that its mother forked (the same Job for every front end).

The starter hands over the job's stdio pipes and, once the job's main
process has ended and its leftovers were killed, the report; the job ends
when it has both the report and the end of its output.  It owns the timer,
the output cap and the stop causes, and turns the report into a JobResult.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet import defer
from zope.interface import implementer

from .limits import Limits
from .pipes import PipeReader, PipeWriter
from .result import JobResult, ReportError, Status, classify, parse_report
from .spawner import IJobEvents


@implementer(IJobEvents)
class Job:
    """One running program in a lease; ``done`` fires with its JobResult."""

    drain_seconds = 2.0  # how long output may still come after the report

    def __init__(self, lease, limits: Limits, on_output: Callable[[str, bytes], None] | None, frontend: str = "jobs"):
        self.lease = lease
        self.limits = limits
        self.frontend = frontend  # for the log line and mathrun_jobs_total
        self.result: JobResult | None = None
        self.pid: int | None = None
        self._reactor = lease.sandbox.reactor
        self._waiters: list[defer.Deferred] = []
        self._on_output = on_output
        self._chunks = {"stdout": [], "stderr": []}
        self._output = 0
        self._cause: Status | None = None
        self._capped = False
        self._starter = None
        self._id = None
        self._stdin: PipeWriter | None = None
        self._stdin_fd = -1
        self._stdin_queue: list[bytes] = []
        self._stdin_closed = False
        self._readers: dict[str, PipeReader] = {}
        self._pidfd = -1
        self._report: bytes | None = None
        self._problem = ""
        self._timer = None
        self._drain = None
        self._ended = False
        self._direct = False  # output straight to a file of the front end's
        self._no_stdin = False
        self.output_name: str | None = None  # the file the starter made for the output
        self.on_end: Callable[[], None] | None = None  # called as soon as the job has ended (see _finished)

    @property
    def done(self) -> defer.Deferred:
        """A new Deferred for each caller, firing with the JobResult (so
        that several parties can wait without taking it from each other)."""
        if self.result is not None:
            return defer.succeed(self.result)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def start(self, starter, argv, env, options, output_fd=None, output_create=None) -> None:
        """Ask ``starter`` (an IJobStarter) for the process; the wall-clock
        limit counts from now.  With ``output_fd`` the job's stdout and stderr
        go straight into that file (as the C why3server's provers' do): no
        pipes to read, no output cap but the file size limit; the same with
        ``output_create`` (IJobStarter.spawn), a file the starter makes, its
        name in ``output_name`` once known.  A job whose
        stdin was closed before the start gets /dev/null, not a pipe."""
        if self.limits.wall_seconds is not None:
            self._timer = self._reactor.callLater(self.limits.wall_seconds, self.stop, Status.TIME_LIMIT)
        self._starter = starter
        self._direct = output_fd is not None or output_create is not None
        extra = {}
        if output_fd is not None:
            extra["output_fd"] = output_fd
        if output_create is not None:
            extra["output_create"] = output_create
        if self._stdin_closed and not self._stdin_queue:
            extra["stdin"] = False
        self._no_stdin = "stdin" in extra
        self._id = starter.spawn(argv, env, options, self, **extra)

    # -- control ------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Bytes to the job's stdin (dropped once it is closed)."""
        if self._ended or self._stdin_closed:
            return
        if self._stdin is not None:
            self._stdin.write(data)
        else:
            self._stdin_queue.append(data)

    def close_stdin(self) -> None:
        """End of the job's input."""
        if self._ended or self._stdin_closed:
            return
        self._stdin_closed = True
        if self._stdin is not None:
            self._stdin.loseConnection()

    def stop(self, cause: Status = Status.CANCELLED) -> None:
        """Kill the job and all it started; ``cause`` becomes its status."""
        if self._ended or self._report is not None:
            return
        if self._cause is None:
            self._cause = cause
        if self._id is not None:
            self._starter.kill(self._id)

    def lower_wall_limit(self, seconds: float) -> None:
        """Shorten the wall-clock limit, counted from now (never lengthen)."""
        if self._ended:
            return
        if self._timer is not None:
            remaining = self._timer.getTime() - self._reactor.seconds()
            if remaining <= seconds:
                return
            self._timer.cancel()
        self._timer = self._reactor.callLater(seconds, self.stop, Status.TIME_LIMIT)

    # -- from the starter (IJobEvents) -----------------------------------------
    def spawned(self, pid: int, fds) -> None:
        """IJobEvents: the job runs; its pipes are read from now on."""
        fds = list(fds)
        stdin = -1 if self._no_stdin else fds.pop(0)
        outputs = () if self._direct else (("stdout", fds.pop(0)), ("stderr", fds.pop(0)))
        self.pid = pid
        self._pidfd = fds[0] if fds else -1
        if stdin < 0:
            pass
        elif self._stdin_closed and not self._stdin_queue:
            os.close(stdin)  # no input, no FileDescriptor for it
        else:
            self._stdin = PipeWriter(self._reactor, stdin, nonblocking=True)
            for data in self._stdin_queue:
                self._stdin.write(data)
            self._stdin_queue = []
            if self._stdin_closed:
                self._stdin.loseConnection()
        for name, fd in outputs:
            reader = PipeReader(self._reactor, fd, self._reading(name), self._eof(name), nonblocking=True)
            self._readers[name] = reader
            reader.startReading()

    def output_created(self, name: str) -> None:
        """IJobEvents: the output file the starter made (``output_create``)."""
        self.output_name = name

    def exited(self, report: bytes) -> None:
        """IJobEvents: the main process ended; the verdict once output is drained."""
        self._report = report
        if self._readers:
            # Everything of the job is dead: the pipes end as soon as they
            # are drained, unless a descriptor got out; then give up on them.
            self._drain = self._reactor.callLater(self.drain_seconds, self._close_readers)
        self._maybe_finished()

    def lost(self, problem: str) -> None:
        """IJobEvents: the starter died with the job: an internal error."""
        self._problem = problem
        self._close_readers()
        self._finished()

    def output(self, stream: str, data: bytes) -> None:
        """IJobEvents: output the starter read itself (a Maxima child's)."""
        self._data(stream, data)

    # -- output -------------------------------------------------------------
    def _reading(self, name: str):
        return lambda data: self._data(name, data)

    def _eof(self, name: str):
        def ended():
            self._readers.pop(name, None)
            self._maybe_finished()

        return ended

    def _data(self, name: str, data: bytes) -> None:
        if self._capped:
            return
        cap = self.limits.output_bytes
        if cap is not None and self._output + len(data) > cap:
            data = data[: cap - self._output]
            self._capped = True
            if self._cause is None:
                self._cause = Status.OUTPUT_LIMIT  # even when the job has already ended
            self.stop(Status.OUTPUT_LIMIT)
            # Not from inside the reader's own doRead.
            self._reactor.callLater(0, self._close_readers)
        self._output += len(data)
        if not data:
            return
        if self._on_output is not None:
            self._on_output(name, data)
        else:
            self._chunks[name].append(data)

    def _close_readers(self) -> None:
        for reader in list(self._readers.values()):
            reader.close()

    def _maybe_finished(self) -> None:
        if self._report is not None and not self._readers and not self._ended:
            self._finished()

    # -- the end --------------------------------------------------------------
    def _release_fds(self) -> None:
        for call in (self._timer, self._drain):
            if call is not None and call.active():
                call.cancel()
        if self._stdin is not None:
            self._stdin.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def _finished(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._release_fds()
        if self.on_end is not None:
            # Before the verdict, the log line and the observers: a front end
            # may start its next job in another slot first (its latency is
            # the rate of a queue that runs N at a time).
            self.on_end()
        report, problem = None, self._problem
        if self._report is not None:
            try:
                report = parse_report(self._report)
            except ReportError as e:
                problem = f"jail report unreadable: {e}"
        if report is None or report.get("remaining"):
            # The spawn server died, or processes survived it: reap at release.
            self.lease.external_processes = True
        cgroup = self.lease.cgroup
        streams = None
        if self._on_output is None and not self._direct:
            streams = {name: b"".join(chunks) for name, chunks in self._chunks.items()}
        result = classify(
            report,
            self.limits,
            cause=self._cause,
            oom_killed=cgroup.oom_killed() if cgroup else False,
            peak_memory=cgroup.peak_memory() if cgroup else None,
            problem=problem,
            streams=streams,
        )
        self.result = result
        self.lease.sandbox._job_finished(self, result)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(result)
