"""The client of the C spawn server (ext/mathrun-spawn.c), and its keeper.

The sandbox starts one spawn server and keeps it running (restarted with
backoff when it dies, as Twisted's procmon does); every job is one request on
a unix socket.  The server forks, the job enters its jail and execs the tool
once, and the job's stdio pipes come back over SCM_RIGHTS, then its exit
report: no process spawn and no jail exec per job on the reactor's side.
The frames are in framing.py.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket

from twisted.internet import defer, protocol
from twisted.logger import Logger
from zope.interface import Interface, implementer

from .framing import MAX_FRAME, FrameError, FrameParser, Message, encode, option_fields, spawn_request
from .spawnsocket import SpawnProtocol, SpawnSocket

__all__ = [
    "MAX_FRAME",
    "FrameError",
    "FrameParser",
    "Message",
    "SpawnProtocol",
    "SpawnSocket",
    "encode",
    "option_fields",
    "spawn_request",
]


class IJobEvents(Interface):
    """What a job hears from its starter, in this order: ``spawned`` (unless
    the start failed, or the job has no pipe to be handed: no stdin and its
    output to a file), then ``exited``; or ``lost`` at any time instead."""

    def spawned(pid, fds):
        """The job runs; ``fds`` (stdin, stdout, stderr[, pidfd], without the
        stdin or the output pipes it asked not to have) are now the receiver's."""

    def exited(report):
        """The job's main process ended and its leftovers were killed; ``report``
        is the jail's report line (bytes)."""

    def lost(problem):
        """The starter died (or was down) with the job: nothing more will come."""

    def output_created(name):
        """The name of the output file the starter made for the job (only
        for a job that asked for one: ``output_create``)."""

    def output(stream, data):
        """Output the starter read itself ("stdout" or "stderr"): from a
        starter that keeps the job's pipes instead of handing them over (a
        Maxima child, whose readiness is read on them first)."""


class IJobStarter(Interface):
    """Starts job processes for the sandbox."""

    def start():
        """Begin serving (may start a process)."""

    def spawn(argv, env, options, events, output_fd=None, stdin=True, output_create=None):
        """Ask for one job (``options``: the jail's ``--key value`` list);
        ``events`` (an IJobEvents) hears how it goes.  Returns the job's id.
        ``output_fd`` (optional): a file the job's stdout and stderr go to
        instead of pipes; ``stdin=False``: no stdin pipe (/dev/null).
        ``output_create``: (directory fd, creds, prefix): such a file made
        for the job by the starter, as ``creds`` (see SpawnServer.spawn)."""

    def kill(job_id):
        """Kill the job and everything it started (it then reports as usual)."""

    def stop():
        """Kill what runs and end; a Deferred firing once ended."""


class _ServerProcess(protocol.ProcessProtocol):
    """The spawn server process: its stderr to the log, its end to the keeper."""

    log = Logger()

    def __init__(self, on_ended):
        self._on_ended = on_ended

    def errReceived(self, data: bytes) -> None:
        for line in data.decode(errors="replace").splitlines():
            self.log.warn("spawn server: {line}", line=line)

    def processEnded(self, reason) -> None:
        self._on_ended(reason)


@implementer(IJobStarter)
class SpawnServer:
    """Keeps one spawn server running and speaks for its jobs."""

    log = Logger()
    min_restart_delay = 0.1
    max_restart_delay = 30.0
    stable_after = 60.0  # seconds of life that reset the restart delay

    def __init__(self, reactor, executable: str, keeper: bool = False):
        self.reactor = reactor
        self.executable = executable
        self.keeper = keeper
        self.pid: int | None = None
        self.restarts = 0
        self.jobs: dict[int, object] = {}
        self._opens: dict[int, defer.Deferred] = {}  # open requests waiting for their answer
        self._ids = itertools.count(1)
        self._fields: dict[tuple, list[bytes]] = {}  # option fields of the jail options seen
        self._proto: SpawnProtocol | None = None
        self._process = None
        self._running = False
        self._delay = self.min_restart_delay
        self._restart_call = None
        self._started_at = 0.0
        self._ended: defer.Deferred | None = None

    @property
    def ready(self) -> bool:
        return self._proto is not None

    def start(self) -> None:
        self._running = True
        # A server shutting down gets no new spawn server (a signal to the
        # whole process group reaches ours first, at the same time).
        self.reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)
        self._launch()

    def _shutting_down(self) -> None:
        self._running = False
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()

    def _launch(self) -> None:
        self._restart_call = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ours.setblocking(False)
            self._ended = defer.Deferred()
            self._process = self.reactor.spawnProcess(
                _ServerProcess(self._process_ended),
                self.executable,
                [self.executable, "--fd", "3"] + (["--keeper"] if self.keeper else []),
                env={},
                childFDs={1: "r", 2: "r", 3: theirs.fileno()},
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        proto = SpawnProtocol(self._message, self._lost)
        SpawnSocket(self.reactor, ours, proto)
        self._proto = proto
        self._started_at = self.reactor.seconds()
        self.pid = getattr(self._process, "pid", None)

    def spawn(self, argv, env, options, events, output_fd: int | None = None, stdin: bool = True, output_create=None):
        """``output_fd``: the job's stdout and stderr go straight into it (no
        pipes); ``stdin=False``: its stdin is /dev/null (no pipe);
        ``output_create`` = (directory fd, creds, prefix): that file is made
        by the spawn server in the directory as ``creds`` (``open_as``'s
        create, the name drawn as mkstemp's) with the request itself, no
        round trip of its own; its name comes to ``events.output_created``
        before ``spawned``."""
        job_id = next(self._ids)
        if self._proto is None:
            events.lost("the spawn server is not running (it is being restarted)")
            return job_id
        self.jobs[job_id] = events
        key = tuple(options)
        fields = self._fields.get(key)
        if fields is None:
            if len(self._fields) > 1024:
                self._fields.clear()
            fields = self._fields[key] = option_fields(options)
        if not stdin:
            # With no pipe to hand over either, no ``spawned`` (IJobEvents).
            quiet = output_create is not None or output_fd is not None
            fields = [*fields, b"stdin=null", b"quiet=1"] if quiet else [*fields, b"stdin=null"]
        if output_create is not None:
            directory, creds, prefix = output_create
            fields = [*fields, b"output-create=" + os.fsencode(prefix), *_as_fields(creds)]
            self._proto.transport.write(spawn_request(job_id, argv, env, fields), (directory,))
        elif output_fd is not None:
            fields = [*fields, b"output-fd=1"]
            self._proto.transport.write(spawn_request(job_id, argv, env, fields), (output_fd,))
        else:
            self._proto.transport.write(spawn_request(job_id, argv, env, fields))
        return job_id

    def open_as(self, creds, path: str | None = None, directory: int | None = None, name: str | None = None):
        """A Deferred firing with a descriptor: the regular file ``path``
        opened for reading, or ``name`` created (0600, O_EXCL) in the
        directory ``directory`` (a descriptor, which stays the caller's), by
        the spawn server with ``creds``' file-system identity (uid, gid,
        groups): the kernel checks the open as that user's own.  Fails with
        OSError (its errno) when the open does."""
        if self._proto is None:
            return defer.fail(OSError(errno.EAGAIN, "the spawn server is not running"))
        open_id = next(self._ids)
        fields = [b"open", b"%d" % open_id, *_as_fields(creds)]
        if path is not None:
            fields.append(b"path=" + os.fsencode(path))
            frame, fds = encode(fields), ()
        else:
            fields += [b"create=" + os.fsencode(name), b"fds=1"]
            frame, fds = encode(fields), (directory,)
        d = self._opens[open_id] = defer.Deferred()
        self._proto.transport.write(frame, fds)
        return d

    def kill(self, job_id: int) -> None:
        if job_id in self.jobs and self._proto is not None:
            self._proto.transport.write(encode([b"kill", b"%d" % job_id]))

    def _message(self, m: Message) -> None:
        if m.verb == b"spawned":
            events = self.jobs.get(int(m.fields[0]))
            if events is None:
                for fd in m.fds:
                    os.close(fd)
            else:
                output = m.value(b"output")
                if output is not None:
                    events.output_created(os.fsdecode(output))
                events.spawned(int(m.value(b"pid")), m.fds)
        elif m.verb == b"exited":
            events = self.jobs.pop(int(m.fields[0]), None)
            if events is not None:
                output = m.value(b"output")  # (a quiet job's)
                if output is not None:
                    events.output_created(os.fsdecode(output))
                events.exited(m.value(b"report") or b"")
        elif m.verb == b"opened":
            d = self._opens.pop(int(m.fields[0]), None)
            code = m.value(b"errno")
            if d is None:
                for fd in m.fds:
                    os.close(fd)
            elif m.fds:
                d.callback(m.fds[0])
            else:
                d.errback(OSError(int(code or errno.EIO), os.strerror(int(code or errno.EIO))))
        elif m.verb == b"ready":
            self.log.info("spawn server ready ({pid})", pid=m.value(b"pid").decode())
        else:
            self.log.error("spawn server: {m}", m=b" ".join((m.verb, *m.fields)).decode(errors="replace"))

    def _lost(self, problem: str) -> None:
        """The socket is gone: every job that waits ends now, and the
        process (if it still runs) is made to end."""
        if self._proto is None:
            return
        self._proto = None
        jobs, self.jobs = self.jobs, {}
        opens, self._opens = self._opens, {}
        for d in opens.values():
            d.errback(OSError(errno.EIO, f"{problem}: the open was lost with it"))
        if self._running:
            self.log.error("spawn server lost: {problem}; {n} jobs failed", problem=problem, n=len(jobs))
        for events in jobs.values():
            events.lost(f"{problem}: the job was lost with it")
        if self._running and self._process is not None and self._ended is not None and not self._ended.called:
            _kill(self._process)  # (when stopping, it ends by itself, or stop's timer kills it)

    def _process_ended(self, reason) -> None:
        self._lost(f"the spawn server ended ({reason.getErrorMessage()})")
        self._process = None
        self.pid = None
        ended, self._ended = self._ended, None
        if self._running:
            self._schedule_restart()
        if ended is not None:
            ended.callback(None)

    def _schedule_restart(self) -> None:
        if self.reactor.seconds() - self._started_at > self.stable_after:
            self._delay = self.min_restart_delay
        delay, self._delay = self._delay, min(self._delay * 2, self.max_restart_delay)
        self.restarts += 1
        self.log.info("spawn server: restarting in {delay:.1f}s", delay=delay)
        self._restart_call = self.reactor.callLater(delay, self._launch)

    def stop(self) -> defer.Deferred:
        """Close the socket (the server kills its jobs and exits); kill it
        if it has not gone in 5 s."""
        self._running = False
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        ended = self._ended
        if ended is None or ended.called:
            return defer.succeed(None)
        if self._proto is not None:
            self._proto.transport.loseConnection()
        process = self._process
        killer = self.reactor.callLater(5, _kill, process)
        d = defer.Deferred()

        def done(_):
            if killer.active():
                killer.cancel()
            d.callback(None)

        ended.addCallback(done)
        return d


def _as_fields(creds) -> list[bytes]:
    """Who the spawn server opens or makes a file as."""
    groups = b"as-groups=" + ",".join(str(g) for g in creds.groups).encode()
    return [b"as-uid=%d" % creds.uid, b"as-gid=%d" % creds.gid, groups]


def _kill(process) -> None:
    try:
        process.signalProcess("KILL")
    except Exception:
        pass
