"""The policy of the VC server: one global FIFO of requests, at most
``parallel`` provers at once, per-client bookkeeping (interrupts touch only
the sender's requests; a client that leaves loses its queued requests and
has its running provers killed), limits, and the output files.

Every prover runs in the sandbox.  As root, provers run as job users: the
files named on their command line are copied into the job's workspace (when
the connecting client may read them), and each output file is given to the
client (SO_PEERCRED).  Unprivileged, provers run as the server's own user,
like the C server's.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pwd
import random
import signal
import socket
import stat
import struct
import tempfile
from dataclasses import dataclass

from twisted.internet import protocol
from twisted.logger import Logger

from ..sandbox import Limits, Status
from . import protocol as wire
from .config import Why3Config

__all__ = ["Why3Config", "Why3Server", "c_server_status", "make_output_file", "read_as"]


@dataclass(eq=False)
class Request:
    """One run request from its arrival to its single ``F`` line."""

    client: object
    run: wire.Run
    state: str = "queued"  # queued → running → answered
    job: object = None
    path: str | None = None
    fd: int | None = None
    interrupted: bool = False


def peer_credentials(transport) -> tuple[int, int] | None:
    """The connecting process's (uid, gid), from SO_PEERCRED."""
    try:
        sock = transport.getHandle()
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, gid = struct.unpack("3i", creds)
    return uid, gid


@dataclass(frozen=True)
class Credentials:
    """Who a client is, for opening files on its behalf."""

    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def of(cls, uid: int, gid: int) -> Credentials:
        try:
            groups = tuple(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
        except KeyError:
            groups = (gid,)
        return cls(uid, gid, groups)


def read_as(creds: Credentials | None, path: str, limit: int) -> bytes | None:
    """The regular file ``path`` as the client could read it, or None.

    The open runs with the client's effective uid, gid and groups, so the
    kernel does the whole check (every directory on the way, ACLs) at the
    moment of the open: no stat-then-open race with a swapped symlink.
    Only the server as root gets here; the reactor is single-threaded.
    """
    if creds is None:
        return None
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        if creds.uid == 0:
            fd = os.open(path, flags)
        else:
            saved_groups, saved_gid = os.getgroups(), os.getegid()
            os.setgroups(creds.groups)
            os.setegid(creds.gid)
            os.seteuid(creds.uid)
            try:
                fd = os.open(path, flags)
            finally:
                os.seteuid(0)
                os.setegid(saved_gid)
                os.setgroups(saved_groups)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, total = [], 0
        while total < limit:
            chunk = os.read(fd, min(1 << 20, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


class Why3Server(protocol.Factory):
    """The policy: queue, ``parallel``, per-client bookkeeping, limits, files."""

    protocol = wire.Why3Protocol
    log = Logger()

    def __init__(self, sandbox, config: Why3Config | None = None, reactor=None, on_empty=None):
        if reactor is None:
            from twisted.internet import reactor
        self.sandbox = sandbox
        self.config = config or Why3Config()
        self.reactor = reactor
        self.parallel = max(1, self.config.jobs)
        self.queue: collections.deque[Request] = collections.deque()
        self.running: set[Request] = set()
        self.clients: dict[object, dict[str, Request]] = {}
        self.on_empty = on_empty  # --single-client: called when the last client leaves
        self._limits_cache: dict[tuple[int, int], Limits] = {}
        self.answered: collections.Counter[str] = collections.Counter()  # requests by how they ended

    # -- clients ----------------------------------------------------------------
    def client_connected(self, client) -> None:
        self.clients[client] = {}
        client.creds = None
        if self.sandbox.privileged:
            peer = peer_credentials(client.transport)
            client.creds = Credentials.of(*peer) if peer else None

    def client_lost(self, client) -> None:
        # By client, not by id: a client may reuse an id while the first runs.
        del self.clients[client]
        if self.queue:
            self.queue = collections.deque(r for r in self.queue if r.client is not client)
        for request in list(self.running):
            if request.client is client and request.job is not None:
                request.job.stop(Status.CANCELLED)
        if not self.clients and self.on_empty is not None:
            self.on_empty()

    def request(self, client, request) -> None:
        if isinstance(request, wire.Parallel):
            self.parallel = request.jobs
            self._schedule()
        elif isinstance(request, wire.Interrupt):
            self._interrupt(client, request.id)
        else:
            entry = Request(client, request)
            self.clients[client][request.id] = entry
            self.queue.append(entry)
            self._schedule()

    def _interrupt(self, client, id: str) -> None:
        request = self.clients.get(client, {}).get(id)
        if request is None or request.interrupted:
            return
        request.interrupted = True
        if request.state == "queued":
            self.queue.remove(request)
            self._answer_interrupted(request)
        elif request.job is not None:
            request.job.stop(Status.CANCELLED)
        # else: still waiting for a job user; answered when it gets one

    def _answer_interrupted(self, request: Request) -> None:
        """As 1.8 answers, but with a file that exists: 1.5.1 clients open it."""
        self._open_output(request)
        self._answer(request, 0, 0.0, False)

    # -- running ----------------------------------------------------------------
    def _schedule(self) -> None:
        while self.queue and len(self.running) < self.parallel:
            request = self.queue.popleft()
            request.state = "running"
            self.running.add(request)
            self._run(request)

    def _limits(self, run: wire.Run) -> Limits:
        """The sandbox limits of a request: why3 sends the same few (timeout,
        memlimit) pairs over and over, so they are built once each."""
        key = (run.timeout, run.memlimit)
        limits = self._limits_cache.get(key)
        if limits is None:
            if len(self._limits_cache) > 256:
                self._limits_cache.clear()
            base = self.sandbox.config.limits
            timeout = run.timeout if run.timeout > 0 else None
            limits = self._limits_cache[key] = Limits(
                cpu_seconds=timeout,
                wall_seconds=timeout * self.config.wall_factor + self.config.wall_margin if timeout else None,
                memory_bytes=None,
                address_space_bytes=run.memlimit << 20 if run.memlimit > 0 else None,
                # The output file is the prover's stdout: the output cap is a file size limit.
                file_size_bytes=min(base.file_size_bytes or self.config.output_limit, self.config.output_limit),
                open_files=base.open_files,
                processes=base.processes,
                output_bytes=self.config.output_limit,
                workspace_bytes=base.workspace_bytes,
            )
        return limits

    def _run(self, request: Request) -> None:
        """Lease, stage, spawn, answer, release: plain callbacks, no
        coroutine per task (this is the hot path of a proof session)."""
        try:
            limits = self._limits(request.run)
            d = self.sandbox.acquire(limits.workspace_bytes)
        except Exception:
            self._failed(request)
            self._done(request, None)
            return
        d.addCallbacks(self._leased, self._lease_failed, callbackArgs=(request, limits), errbackArgs=(request,))

    def _lease_failed(self, reason, request: Request) -> None:
        self.log.failure("why3 request {id} failed", reason, id=request.run.id)
        self._failed(request, logged=True)
        self._done(request, None)

    def _leased(self, lease, request: Request, limits: Limits) -> None:
        client, run = request.client, request.run
        try:
            if client not in self.clients:
                return self._done(request, lease)
            if request.interrupted:  # while it waited for a job user
                self._answer_interrupted(request)
                return self._done(request, lease)
            stdin = self._input(client, run.stdin) if run.stdin is not None else None
            args = self._stage_files(lease, client, run)
            self._open_output(request)
            # The prover writes its output file itself, as the C server's do.
            request.job = lease.spawn(
                [run.cmd, *args], limits, frontend="why3", stdin=stdin or b"", output_fd=request.fd
            )
            client.send(wire.started(run.id))
        except Exception:
            self._failed(request)
            return self._done(request, lease)
        request.job.done.addCallback(self._ran, request, lease)

    def _ran(self, result, request: Request, lease) -> None:
        try:
            self._finish(request, result)
        except Exception:
            self._failed(request)
        self._done(request, lease)

    def _failed(self, request: Request, logged: bool = False) -> None:
        """Every request gets its F, even when the server failed it."""
        client, run = request.client, request.run
        if not logged:
            self.log.failure("why3 request {id} failed", id=run.id)
        if request.state != "answered" and client in self.clients:
            try:
                if request.path is None:
                    self._open_output(request)
                self._write(request, f"{run.cmd}: mathrun could not run it (see the server log)\n".encode())
            except OSError:
                self.log.failure("why3 request {id}: no output file either", id=run.id)
            self._answer(request, 1, 0.0, False, "failed")

    def _done(self, request: Request, lease) -> None:
        self._close_output(request)
        if request.state != "answered" and request.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(request.path)
        self.running.discard(request)
        # The prover is gone: the next may start while this lease is released.
        self._schedule()
        if lease is not None:
            lease.release().addErrback(lambda f: self.log.failure("why3 server: releasing a job user failed", f))

    def _input(self, client, path: str) -> bytes:
        """runstdin's file; as root, only what the client itself may read."""
        if self.sandbox.privileged:
            return read_as(client.creds, path, self.config.output_limit) or b""
        try:
            with open(path, "rb") as f:
                return f.read(self.config.output_limit)
        except OSError:
            return b""

    def _stage_files(self, lease, client, run: wire.Run) -> list[str]:
        """As root, files named on the command line (absolute paths) that the
        client may read are copied into the workspace, where the job user can
        read them; the job's /tmp is private, so the client's are not seen."""
        if not self.sandbox.privileged:
            return list(run.args)
        args = []
        for n, arg in enumerate(run.args):
            data = read_as(client.creds, arg, self.config.output_limit) if arg.startswith("/") else None
            if data is not None:
                name = f"in{n}-{os.path.basename(arg)}"
                lease.workspace.write_file(name, data)
                arg = os.path.join(lease.workspace.path, name)
            args.append(arg)
        return args

    def _open_output(self, request: Request) -> None:
        fd, path = make_output_file(self.config.output_dir)
        creds = getattr(request.client, "creds", None)
        if creds is not None and creds.uid != 0:
            os.fchown(fd, creds.uid, -1)
        request.fd, request.path = fd, path

    def _close_output(self, request: Request) -> None:
        if request.fd is not None:
            os.close(request.fd)
            request.fd = None

    def _write(self, request: Request, data: bytes) -> None:
        if request.fd is not None:
            view = memoryview(data)
            while view:
                view = view[os.write(request.fd, view) :]

    def _answer(self, request: Request, exitcode: int, time: float, killed: bool, status: str | None = None) -> None:
        """The one ``F`` of a request, to the client that sent it."""
        client, id = request.client, request.run.id
        request.state = "answered"
        self.answered[status or ("interrupted" if request.interrupted else "killed" if killed else "done")] += 1
        self._close_output(request)
        if self.clients.get(client, {}).get(id) is request:
            del self.clients[client][id]
        client.send(wire.finished(id, exitcode, time, killed, request.path or "", self.config.time_format))

    def _finish(self, request: Request, result) -> None:
        if request.client not in self.clients:
            return  # nobody to read it: its file goes in _run
        exitcode, killed = c_server_status(result)  # (the sandbox logs the job's one line)
        self._answer(request, exitcode, result.user_cpu, killed)

    def stop(self) -> None:
        """Shutting down: drop the queue, kill what runs."""
        self.queue.clear()
        for request in list(self.running):
            if request.job is not None:
                request.job.stop(Status.CANCELLED)


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_names = random.SystemRandom(), random.Random(random.SystemRandom().getrandbits(64))


def make_output_file(directory: str) -> tuple[int, str]:
    """A new ``why3XXXXXX`` file (0600, O_EXCL, as the C server's mkstemp):
    tempfile.mkstemp's name drawing costs more than the open itself."""
    if not os.path.isabs(directory):
        directory = os.path.abspath(directory)
    rng = _names[1]
    for _ in range(100):
        bits = rng.getrandbits(36)
        name = "why3" + "".join(_LETTERS[(bits >> (6 * i)) % 62] for i in range(6))
        path = os.path.join(directory, name)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            rng.seed(_names[0].getrandbits(64))  # someone guesses our names: draw anew
    fd, path = tempfile.mkstemp(prefix="why3", dir=directory)
    return fd, path


def c_server_status(result) -> tuple[int, bool]:
    """(exitcode, timeout flag) as the C server would report this end.

    The C server sets the hard CPU limit equal to the soft one, so a prover
    over its time dies of SIGKILL; the jail leaves a second between them
    (SIGXCPU first): reported as 9 all the same.  A prover's output goes
    straight to its file, capped by the file size limit: SIGXFSZ there is
    a kill at the cap, reported as 9 too.
    """
    if result.failed_stage == "exec":
        return 1, False  # exec failure: the jail wrote the C server's message to stderr
    if result.signal is not None:
        if result.signal == signal.SIGXCPU and result.status is Status.TIME_LIMIT:
            return signal.SIGKILL, True
        if result.signal == signal.SIGXFSZ and result.status is Status.OUTPUT_LIMIT:
            return signal.SIGKILL, True  # stopped at the output cap (its file's size limit)
        return result.signal, True
    if result.status in (Status.OK, Status.NONZERO_EXIT):
        return result.exit_code, False
    return signal.SIGKILL, True  # killed before it could report a signal
