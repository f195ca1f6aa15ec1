"""One forked Maxima child: its pipes, its readiness, one evaluation.

The child's directory (the job user's workspace root) holds ``inpipe`` and
``outpipe`` (made here, root's), ``work/`` (its cwd and ``maxima_tempdir``),
``output/`` (``IMAGE_DIR``: what it writes there is returned as plots) and
``tmp/`` (its private /tmp).
"""

from __future__ import annotations

import os
import select
import signal
from dataclasses import dataclass, field

from twisted.internet import defer

from ..sandbox.workspace import _empty, read_files
from .pipes import PipeReader, PipeWriter

READY_MARKER = b"\x02mathrun-child-ready\n"


class ChildDied(Exception):
    """The child ended before it was ready."""


@dataclass
class MaximaResult:
    """How one evaluation ended.  ``status``: ok, timeout, output-limit,
    memory, plots (unreadable plot files) or cancelled."""

    status: str
    output: bytes
    files: list[tuple[str, bytes]] = field(default_factory=list)
    seconds: float = 0.0
    message: str = ""


class Child:
    def __init__(self, reactor, lease, config):
        self.reactor = reactor
        self.lease = lease
        self.config = config
        self.root = lease.workspace.root
        self.output_dir = os.path.join(self.root, "output")
        self.pid: int | None = None
        self._pidfd = -1
        self.state = "spawning"  # -> ready -> running -> done
        self.ready = defer.Deferred()
        self.on_death = None  # called if a ready child dies while waiting
        self._before = b""
        self._chunks: list[bytes] = []
        self._size = 0
        self._keep = -1
        self._reader = self._writer = None
        self._timer = None
        self._started = 0.0
        self._done: defer.Deferred | None = None

    # -- set-up -------------------------------------------------------------
    def prepare(self) -> None:
        """Set the job's cgroup limits, make the output directory and the
        pipes, and open our ends: the child opens its ends without
        blocking, and a keep-alive writer stands in for it until it is
        ready (a FIFO without writers reads as EOF)."""
        user = self.lease.user
        if self.lease.cgroup is not None:
            self.lease.cgroup.prepare(self.config.memory_bytes, self.config.processes)
        _remove_leftovers(self.root)
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
        self._reader = PipeReader(self.reactor, read_fd, self._data, self._eof)
        self._writer = PipeWriter(self.reactor, write_fd)
        self._reader.startReading()

    def fork_fields(self) -> list[str]:
        """The fork request's fields after the token."""
        cfg, lease = self.config, self.lease
        privileged = lease.workspace.privileged
        uid = str(lease.user.uid) if privileged else "-1"
        gid = str(lease.user.gid) if privileged else "-1"
        cpu = int(cfg.max_timeout_ms / 1000) + 2
        fields = [uid, gid, self.root, str(cpu), str(cfg.workspace_bytes), str(cfg.open_files)]
        fields.append(str(cfg.processes) if privileged else "-1")
        if lease.cgroup is not None:
            fields += lease.cgroup.dirs
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

    def kill(self) -> None:
        """Kill the child's process group, if the child still lives.  For
        unprivileged mode, where no job user can be reaped; as root the
        sandbox's cleanup kills everything of the user anyway."""
        if self._pidfd < 0:
            return
        try:
            # poll, not select: with 1000+ connections open the pidfd is
            # past select's FD_SETSIZE (ValueError).
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            alive = not poller.poll(0)
            if alive:
                os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(self._pidfd)
            self._pidfd = -1

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
        room = self.config.output_bytes - self._size
        if len(data) > room:
            self._chunks.append(data[:room])
            self._size += room
            self._finish("output-limit", f"the output exceeded {self.config.output_bytes} bytes")
            return
        self._chunks.append(data)
        self._size += len(data)

    def _eof(self) -> None:
        if self.state == "spawning":
            self._fail_start(self._before.decode(errors="replace").strip() or "it exited at start")
        elif self.state == "ready":
            self.state = "done"
            if self.on_death is not None:
                self.on_death(self)
        elif self.state == "running":
            self._finish("ok")

    def _fail_start(self, why: str) -> None:
        self.close()
        if not self.ready.called:
            self.ready.errback(ChildDied(f"the Maxima child did not start: {why}"))

    # -- one evaluation ---------------------------------------------------------
    def evaluate(self, text: bytes, timeout: float) -> defer.Deferred:
        """Send the input, end it, and collect the output until the child
        ends or the timeout; fires with a MaximaResult (cancel: stops it)."""
        assert self.state == "ready"
        self.state = "running"
        self._started = self.reactor.seconds()
        self._done = defer.Deferred(lambda d: self._finish("cancelled"))
        self._timer = self.reactor.callLater(timeout, self._finish, "timeout", f"timeout after {timeout:g}s")
        # Children wait at the mother's low priority; a job runs at normal.
        try:
            os.setpriority(os.PRIO_PROCESS, self.pid, 0)
        except OSError:
            pass
        self._writer.write(text)
        self._writer.loseConnection()
        return self._done

    def _finish(self, status: str, message: str = "") -> None:
        if self.state == "done":
            return
        self.state = "done"
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.close()
        files = []
        cgroup = self.lease.cgroup
        if cgroup is not None and cgroup.oom_killed():
            status, message = "memory", "the job ran out of memory"
        if status == "ok":
            try:
                files = read_files(self.output_dir, self.config.plot_files, self.config.plot_bytes)
            except (OSError, ValueError) as e:
                status, message = "plots", f"the plot files could not be returned: {e}"
        result = MaximaResult(status, b"".join(self._chunks), files, self.reactor.seconds() - self._started, message)
        done = self._done
        if done is not None and not done.called:
            done.callback(result)

    def close(self) -> None:
        """Close our ends of the pipes (a child still writing gets SIGPIPE).
        A child given up while starting just ends: nobody awaits it then."""
        if self.state == "spawning":
            self.state = "done"
        if self._keep >= 0:
            os.close(self._keep)
            self._keep = -1
        for end in (self._reader, self._writer):
            if end is not None:
                end.close()


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
