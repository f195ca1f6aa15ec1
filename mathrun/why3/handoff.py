"""The daemon's side of the hand-off: ``mathrun-why3server`` (started by
``why3`` for one session) binds its socket, connects to this control socket
and passes the listening socket over SCM_RIGHTS; ``twistd mathrun`` then
serves that session with sandboxed provers (job users), and tells the
standalone when and how to exit.

Control lines (the client's first one brings two descriptors: its
listening socket and its working directory):

    -> handoff jobs=N single-client=0|1 time-format=1.5|1.7 cwd=HEX
    <- ok            (or ``refused REASON``: the standalone serves it itself)
    -> stop          (the standalone was told to end)
    <- end code=N    (then the connection closes)

Who the caller is comes from SO_PEERCRED on this socket, never from what the
client says.  Its output files are made in its directory (the descriptor it
sent) by the spawn server, as the caller: the daemon never changes its ids.
"""

from __future__ import annotations

import itertools
import os
import socket
import stat

from twisted.internet import protocol
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from . import protocol as wire
from .files import ClientFiles, Credentials, peer_credentials
from .server import Why3Config, Why3Server

SINGLE_CLIENT_EXIT = 1  # what the C server exits with when its last client has left
_sessions = itertools.count(1)


def parse_handoff(line: bytes) -> dict[str, str] | None:
    """The ``handoff`` line's fields, or None when it is not one."""
    words = line.split()
    if not words or words[0] != b"handoff":
        return None
    fields = {}
    for word in words[1:]:
        key, eq, value = word.partition(b"=")
        if not eq:
            return None
        fields[key.decode("ascii", "replace")] = value.decode("ascii", "replace")
    return fields


def listening_unix_socket(fd: int) -> bool:
    """Whether ``fd`` is a listening AF_UNIX stream socket."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        return (
            sock.family == socket.AF_UNIX
            and sock.type == socket.SOCK_STREAM
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        )
    finally:
        sock.close()


@implementer(IFileDescriptorReceiver)
class ControlProtocol(LineOnlyReceiver):
    """One standalone server's control connection: one session."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 16
    log = Logger()

    def __init__(self):
        self.fds: list[int] = []
        self.session: Session | None = None

    def fileDescriptorReceived(self, descriptor: int) -> None:
        if self.session is not None or len(self.fds) >= 2:
            os.close(descriptor)
        else:
            self.fds.append(descriptor)

    def lineReceived(self, line: bytes) -> None:
        if self.session is None:
            self._start(line)
        elif line.strip() == b"stop":
            self.session.end("the standalone server was told to stop")

    def _start(self, line: bytes) -> None:
        fields = parse_handoff(line)
        peer = peer_credentials(self.transport.getHandle())
        fds, self.fds = self.fds, []
        problem = self.factory.refusal(fields, peer, fds)
        if problem is not None:
            for fd in fds:
                os.close(fd)
            self.log.warn("why3 hand-off refused: {problem}", problem=problem)
            self.transport.write(b"refused " + problem.encode() + b"\n")
            self.transport.loseConnection()
            return
        self.session = Session(self.factory, self, fields, peer, fds)
        self.transport.write(b"ok\n")

    def finished(self, code: int) -> None:
        self.transport.write(b"end code=%d\n" % code)
        self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        if self.session is not None:
            self.session.end("the standalone server went away", notify=False)


class Session:
    """One hand-off: a Why3Server of its own on the caller's socket, its
    provers run as job users, its files opened as the caller."""

    log = Logger()

    def __init__(self, control: ControlFactory, proto: ControlProtocol, fields, peer, fds):
        listener, directory = fds
        self.control = control
        self.proto = proto
        self.number = next(_sessions)
        self.pid, uid, gid = peer
        self.directory = directory
        self.cwd = os.fsdecode(bytes.fromhex(fields.get("cwd", "")))
        self.single = fields.get("single-client") == "1"
        jobs = max(1, min(int(fields.get("jobs", "1") or 1), 1024))
        base = control.config
        config = Why3Config(
            jobs=jobs,
            time_format=wire.TIME_FORMATS.get(fields.get("time-format", "1.5"), wire.DEFAULT_TIME_FORMAT),
            output_dir=self.cwd,
            output_limit=base.output_limit,
            wall_factor=base.wall_factor,
            wall_margin=base.wall_margin,
        )
        caller = Credentials.of(uid, gid)
        files = ClientFiles(control.sandbox, config.output_limit, caller_dir=(directory, self.cwd))
        on_empty = self._last_client_left if self.single else None
        self.server = Why3Server(control.sandbox, config, control.reactor, on_empty, files, caller)
        self.port = control.reactor.adoptStreamPort(listener, socket.AF_UNIX, self.server)
        os.close(listener)
        self.ended = False
        control.sessions.add(self)
        self.log.info(
            "why3 hand-off {n}: uid {uid} (pid {pid}), -j {jobs}{single}, in {cwd}",
            n=self.number,
            uid=uid,
            pid=self.pid,
            jobs=jobs,
            single=", single client" if self.single else "",
            cwd=self.cwd,
        )

    def _last_client_left(self) -> None:
        self.end("its last client left", code=SINGLE_CLIENT_EXIT)

    def end(self, why: str, code: int = 0, notify: bool = True) -> None:
        """Stop listening, kill the session's provers, drop its clients;
        tell the standalone its exit status once every prover has ended."""
        if self.ended:
            return
        self.ended = True
        self.control.sessions.discard(self)
        self.port.stopListening()
        self.server.on_empty = None
        self.server.stop()
        for client in list(self.server.clients):
            client.transport.loseConnection()
        self.log.info("why3 hand-off {n} ended: {why} ({tasks} tasks)", n=self.number, why=why, tasks=self.server.tasks)

        def done():
            os.close(self.directory)
            if notify:
                self.proto.finished(code)

        self.server.when_idle(done)


class ControlFactory(protocol.ServerFactory):
    """The control socket: one Session per standalone that hands off."""

    protocol = ControlProtocol
    max_sessions = 256

    def __init__(self, sandbox, config: Why3Config, reactor):
        self.sandbox = sandbox
        self.config = config
        self.reactor = reactor
        self.sessions: set[Session] = set()

    def refusal(self, fields, peer, fds) -> str | None:
        """Why a hand-off cannot be served here, or None."""
        if fields is None:
            return "not a handoff line"
        if peer is None:
            return "no peer credentials"
        if len(fds) != 2 or not listening_unix_socket(fds[0]):
            return "a listening unix socket and a directory must come with the line"
        if not stat.S_ISDIR(os.fstat(fds[1]).st_mode):
            return "the second descriptor is not a directory"
        if not self.sandbox.privileged:
            return "this daemon runs unprivileged (no job users)"
        if len(self.sessions) >= self.max_sessions:
            return f"{len(self.sessions)} sessions already"
        try:
            bytes.fromhex(fields.get("cwd", ""))
            int(fields.get("jobs", "1") or 1)
        except ValueError:
            return "bad fields"
        return None

    def stop(self) -> None:
        """The daemon is stopping: every session ends (its standalone exits
        as a C server that was terminated would)."""
        for session in list(self.sessions):
            session.end("the daemon is stopping", code=143)
