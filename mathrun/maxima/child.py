"""One forked Maxima child: its pipes, its readiness, one evaluation.

The child's directory (the job user's workspace root) holds ``inpipe`` and
``outpipe`` (made here, root's), ``work/`` (its cwd and ``maxima_tempdir``),
``output/`` (``IMAGE_DIR``: what it writes there is returned as plots) and
``tmp/`` (its private /tmp).
"""

from __future__ import annotations

import dataclasses
import math
import os
import select
import signal

from twisted.internet import defer, main
from twisted.internet.interfaces import IReadDescriptor
from zope.interface import implementer

from ..sandbox.pipes import PipeReader, PipeWriter
from ..sandbox.result import JobResult, Status
from ..sandbox.spawner import IJobStarter
from ..sandbox.workspace import _empty, read_files

READY_MARKER = b"\x02mathrun-child-ready\n"
EXIT_WAIT = 2.0  # seconds a cleanup waits for the child's exit before it goes on anyway


class ChildDied(Exception):
    """The child ended before it was ready."""


@implementer(IJobStarter)
class Child:
    """A child the mother forked into a lease.  While it evaluates, it is the
    starter (IJobStarter) of a sandbox Job, the same Job every front end's
    processes have (timer, output cap, verdict, log line, accounting): it
    keeps its named pipes, passes the output on, kills on the Job's word,
    and reports when the child's output ends."""

    def __init__(self, reactor, lease, config):
        self.reactor = reactor
        self.lease = lease
        self.config = config
        self.limits = lease.capped(config.limits())
        self.job = None
        self.root = lease.workspace.root
        self.output_dir = os.path.join(self.root, "output")
        self.pid: int | None = None
        self._pidfd = -1
        self.state = "spawning"  # -> ready -> running -> done
        self.ready = defer.Deferred()
        self.on_death = None  # called if a ready child dies while waiting
        self._before = b""
        self._early: list[bytes] = []  # output after the ready marker, before the input
        self._keep = -1
        self._reader = self._writer = None
        self._input = -1  # our read-write end of inpipe, until the input is in
        self._started = 0.0

    # -- set-up -------------------------------------------------------------
    def prepare(self) -> None:
        """Set the job's cgroup limits, make the output directory and the
        pipes, and open our ends: the child opens its ends without
        blocking, and a keep-alive writer stands in for it until it is
        ready (a FIFO without writers reads as EOF)."""
        user = self.lease.user
        self.lease.prepare_limits(self.limits)
        if not self.lease.workspace.privileged:
            _remove_leftovers(self.root)  # a privileged workspace is a fresh tmpfs
        os.mkdir(self.output_dir, 0o700)
        if self.lease.workspace.privileged:
            os.chown(self.output_dir, user.uid, user.gid)
        inpipe, outpipe = (os.path.join(self.root, n) for n in ("inpipe", "outpipe"))
        os.mkfifo(inpipe, 0o600)
        os.mkfifo(outpipe, 0o600)
        flags = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
        read_fd = os.open(outpipe, os.O_RDONLY | flags)
        self._keep = os.open(outpipe, os.O_WRONLY | flags)
        write_fd = os.open(inpipe, os.O_RDWR | flags)
        self._reader = OutputReader(self.reactor, read_fd, self._data, self._eof, nonblocking=True)
        self._input = write_fd
        self._reader.startReading()

    def fork_fields(self) -> list[str]:
        """The fork request's fields after the token."""
        limits, lease = self.limits, self.lease
        privileged = lease.workspace.privileged
        uid = str(lease.user.uid) if privileged else "-1"
        gid = str(lease.user.gid) if privileged else "-1"
        fields = [uid, gid, self.root] + [
            "-1" if v is None else str(math.ceil(v))
            for v in (limits.cpu_seconds, limits.file_size_bytes, limits.open_files)
        ]
        # Unprivileged, the child's own user namespace makes its RLIMIT_NPROC
        # count only its own processes: the same limit as a job user's.
        fields.append(str(limits.processes) if limits.processes else "-1")
        if lease.cgroup is not None:
            fields += lease.cgroup.dirs
        if privileged and not lease.sandbox.config.network:
            fields.append("netns=" + lease.sandbox.job_netns(lease.user))
        for f in fields:
            if f.split() != [f]:  # empty, or with blanks: the line would not parse
                raise ValueError(f"unusable fork request field {f!r}")
        return fields

    def forked(self, pid: int) -> None:
        """The mother's answer: hold the child by a pidfd, which cannot
        come to name another process."""
        self.pid = pid
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:
            pass  # already gone: its pipes will say so

    def hurry(self) -> None:
        """A request waits for this child: start at normal priority."""
        if self._pidfd >= 0 and self.state == "spawning":
            try:
                os.setpriority(os.PRIO_PROCESS, self.pid, 0)
            except OSError:
                pass

    def _kill_process(self) -> None:
        """Kill the child, if it still lives.  Unprivileged, it is the init
        of its own PID namespace, so that every process it started dies
        with it; as root the sandbox's cleanup kills everything of the user
        anyway.  The pidfd stays open for ``exited``."""
        if self._pidfd < 0:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        except OSError:
            pass  # already gone

    def exited(self) -> defer.Deferred:
        """Fires once the child's process has ended (its pidfd turns
        readable), or after EXIT_WAIT seconds: the cleanup that follows
        then finds the user's processes gone at its first count, instead
        of killing and counting again while the child still tears down its
        memory (a Maxima child's exit takes a fraction of a millisecond)."""
        fd, self._pidfd = self._pidfd, -1
        if fd < 0:
            return defer.succeed(None)
        if select.select([fd], [], [], 0)[0]:
            os.close(fd)
            return defer.succeed(None)
        return _ExitWatch(self.reactor, fd).done

    # -- the pipes ------------------------------------------------------------
    def _data(self, data: bytes) -> None:
        if self.state == "spawning":
            self._before += data
            marker = self._before.find(READY_MARKER)
            if marker < 0:
                if len(self._before) > 65536:
                    self._fail_start(f"no ready marker in {len(self._before)} bytes")
                return
            rest = self._before[marker + len(READY_MARKER) :]
            self._before = b""
            os.close(self._keep)
            self._keep = -1
            self.state = "ready"
            if rest:
                self._collect(rest)
            self.ready.callback(self)
        elif self.state in ("ready", "running"):
            self._collect(data)

    def _collect(self, data: bytes) -> None:
        if self.job is not None:
            self.job.output("stdout", data)
        else:
            self._early.append(data)

    def _eof(self) -> None:
        if self.state == "spawning":
            self._fail_start(self._before.decode(errors="replace").strip() or "it exited at start")
        elif self.state == "ready":
            self.state = "done"
            if self.on_death is not None:
                self.on_death(self)
        elif self.state == "running":
            self._end()

    def _fail_start(self, why: str) -> None:
        self.close()
        if not self.ready.called:
            self.ready.errback(ChildDied(f"the Maxima child did not start: {why}"))

    # -- one evaluation ---------------------------------------------------------
    def evaluate(self, text: bytes, timeout: float) -> defer.Deferred:
        """Send the input, end it, and collect the output until the child
        ends or the timeout; fires with the Job's JobResult, its plot
        files in ``files`` (cancel: stops it)."""
        assert self.state == "ready"
        self.state = "running"
        self._started = self.reactor.seconds()
        limits = self.limits.with_wall_seconds(min(timeout, self.limits.wall_seconds or timeout))
        self.job = self.lease.adopt(self, limits, frontend="maxima")
        for data in self._early:
            self.job.output("stdout", data)
        self._early = []
        # Children wait at the mother's low priority; a job runs at normal.
        try:
            os.setpriority(os.PRIO_PROCESS, self.pid, 0)
        except OSError:
            pass
        self._send(text)
        done = defer.Deferred(lambda d: self.job.stop(Status.CANCELLED))

        def deliver(result):
            if not done.called:  # not when cancelled
                done.callback(self._with_files(result))

        self.job.done.addCallback(deliver)
        return done

    def _send(self, text: bytes) -> None:
        """The input goes into the pipe at once (it usually fits), not at the
        reactor's next turn: the child starts sooner, and the write costs no
        epoll registration (nor a reactor writer, made only for what does not
        fit).  Our end is read-write, so the write never fails for want of a
        reader."""
        fd, self._input = self._input, -1
        try:
            sent = os.write(fd, text)
        except BlockingIOError:
            sent = 0
        if sent == len(text):
            os.close(fd)
        else:
            self._writer = PipeWriter(self.reactor, fd, nonblocking=True)
            self._writer.write(text[sent:])
            self._writer.loseConnection()

    def _with_files(self, result: JobResult) -> JobResult:
        """The plot files of a job that ended well; reading them may fail."""
        if result.status is not Status.OK:
            return result
        try:
            files = read_files(self.output_dir, self.config.plot_files, self.config.plot_bytes)
        except (OSError, ValueError) as e:
            return dataclasses.replace(
                result, status=Status.INTERNAL_ERROR, detail=f"the plot files could not be returned: {e}"
            )
        # No plots (most requests): the result as it is, not a copy.
        return dataclasses.replace(result, files=tuple(files)) if files else result

    def _end(self) -> None:
        """The child is done (or was killed): close the pipes and give the
        Job its report.  The mother reaps the child, so its exit status is
        not known here ("ended"); CPU time is not measured for Maxima
        children."""
        if self.state == "done":
            return
        self.state = "done"
        self.close()
        if self.job is not None:
            self.job.exited(b"status=ended wall=%.6f" % (self.reactor.seconds() - self._started))

    # -- IJobStarter: the Job's view of this child ----------------------------
    def start(self) -> None:
        """Already running (the mother forked it)."""

    def spawn(self, argv, env, options, events, output_fd=None, stdin=True, output_create=None) -> int:
        """The Job attaches itself; the child runs already (with its own pipes)."""
        return self.pid or 0

    def kill(self, job_id=None) -> None:
        """Any stop is a kill: the answer so far is all the client gets.
        The Job's verdict follows in the next turn of the reactor, once the
        output that caused it has been counted."""
        self._kill_process()
        if self.state == "running":
            self.reactor.callLater(0, self._end)

    def stop(self) -> defer.Deferred:
        """IJobStarter: the child's end is its kill (it serves one job)."""
        self.kill()
        return defer.succeed(None)

    def close(self) -> None:
        """Close our ends of the pipes (a child still writing gets SIGPIPE).
        A child given up while starting just ends: nobody awaits it then."""
        if self.state == "spawning":
            self.state = "done"
        for name in ("_keep", "_input"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        for end in (self._reader, self._writer):
            if end is not None:
                end.close()


@implementer(IReadDescriptor)
class _ExitWatch:
    """A child's pidfd in the reactor until it turns readable (the process
    has ended) or EXIT_WAIT has passed; then closed."""

    def __init__(self, reactor, fd: int):
        self.reactor = reactor
        self.fd = fd
        self.done = defer.Deferred()
        self._timer = reactor.callLater(EXIT_WAIT, self._finish)
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self._finish()

    def connectionLost(self, reason) -> None:
        self._finish()

    def logPrefix(self) -> str:
        return "maxima-child"

    def _finish(self) -> None:
        if self.fd < 0:
            return
        self.reactor.removeReader(self)
        if self._timer.active():
            self._timer.cancel()
        os.close(self.fd)
        self.fd = -1
        self.done.callback(None)


class OutputReader(PipeReader):
    """A child's outpipe, read until it is empty: a child closes it right
    after its last write, so the end of the job is seen in the turn its
    output came in, not one turn of the reactor later (a few reads a turn
    at most)."""

    def doRead(self):
        for _ in range(4):  # a child writing without pause does not hold the reactor
            if not self.connected:
                break
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return None
            except InterruptedError:
                continue
            except OSError:
                return main.CONNECTION_LOST
            if not data:
                return main.CONNECTION_DONE
            self._on_data(data)  # may close us (the output limit)
        return None


def _remove_leftovers(root: str) -> None:
    """A reused (unprivileged) workspace root may still hold the pipes and
    output directory of its last child; a privileged one is a fresh tmpfs."""
    for name in ("inpipe", "outpipe"):
        try:
            os.unlink(os.path.join(root, name))
        except FileNotFoundError:
            pass
    output = os.path.join(root, "output")
    if os.path.lexists(output):
        _empty(output)
        os.rmdir(output)
