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
import os
import socket
import stat
import struct
import tempfile
from dataclasses import dataclass, field

from twisted.internet import defer, protocol
from twisted.logger import Logger

from ..sandbox import Limits, Status
from . import protocol as wire


@dataclass(frozen=True)
class Why3Config:
    jobs: int = 1
    time_format: str = "%.2f"  # what Debian's why3 1.5.1 reads; "%.6f" for 1.7+
    output_dir: str = "."
    output_limit: int = 64 << 20
    wall_factor: float = 2.0
    wall_margin: float = 5.0


@dataclass(eq=False)
class Request:
    client: object
    run: wire.Run
    job: object = None
    path: str | None = None
    interrupted: bool = False
    fd: int | None = None
    written: int = 0
    extra: dict = field(default_factory=dict)


def peer_uid(transport) -> int | None:
    """The connecting process's uid, from SO_PEERCRED."""
    try:
        sock = transport.getHandle()
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[1]
    except (OSError, AttributeError):
        return None


def may_read(path: str, uid: int | None) -> bool:
    """Whether ``uid`` may read the regular file ``path`` (owner or other
    bits; root may read anything)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if uid == 0:
        return True
    return (st.st_uid == uid and st.st_mode & stat.S_IRUSR) or bool(st.st_mode & stat.S_IROTH)


class Why3Server(protocol.Factory):
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

    # -- clients ----------------------------------------------------------------
    def client_connected(self, client) -> None:
        self.clients[client] = {}
        client.uid = peer_uid(client.transport)

    def client_lost(self, client) -> None:
        requests = self.clients.pop(client, {})
        for request in requests.values():
            if request in self.queue:
                self.queue.remove(request)
            elif request.job is not None:
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
        if request in self.queue:
            # Answered as 1.8 does, but with a file that exists: 1.5.1
            # clients open it.
            self.queue.remove(request)
            del self.clients[client][id]
            path = self._output_file(request)
            os.close(request.fd)
            client.send(wire.finished(id, 0, 0.0, False, path, self.config.time_format))
        elif request.job is not None:
            request.job.stop(Status.CANCELLED)

    # -- running ----------------------------------------------------------------
    def _schedule(self) -> None:
        while self.queue and len(self.running) < self.parallel:
            request = self.queue.popleft()
            self.running.add(request)
            d = defer.ensureDeferred(self._run(request))
            d.addErrback(lambda f, r=request: self.log.failure("why3 request {id} failed", f, id=r.run.id))

    def _limits(self, run: wire.Run) -> Limits:
        base = self.sandbox.config.limits
        timeout = run.timeout if run.timeout > 0 else None
        return Limits(
            cpu_seconds=timeout,
            wall_seconds=timeout * self.config.wall_factor + self.config.wall_margin if timeout else None,
            memory_bytes=None,
            address_space_bytes=run.memlimit << 20 if run.memlimit > 0 else None,
            file_size_bytes=base.file_size_bytes,
            open_files=base.open_files,
            processes=base.processes,
            output_bytes=self.config.output_limit,
            workspace_bytes=base.workspace_bytes,
        )

    async def _run(self, request: Request) -> None:
        client, run = request.client, request.run
        lease = None
        try:
            stdin = None
            if run.stdin is not None:
                stdin = self._read_input(client, run.stdin)
            limits = self._limits(run)
            lease = await self.sandbox.acquire(limits.workspace_bytes)
            if client not in self.clients:
                return
            if request.interrupted:  # while it waited for a job user
                self.clients[client].pop(run.id, None)
                client.send(wire.finished(run.id, 0, 0.0, False, self._output_file(request), self.config.time_format))
                return
            args = self._stage_files(lease, client, run)
            self._output_file(request)
            request.job = lease.spawn([run.cmd, *args], limits, on_output=lambda _s, data: self._write(request, data))
            client.send(wire.started(run.id))
            if stdin is not None:
                request.job.write(stdin)
            request.job.close_stdin()
            result = await request.job.done
            self._finish(request, result)
        finally:
            if request.fd is not None:
                os.close(request.fd)
                request.fd = None
            self.running.discard(request)
            if lease is not None:
                await lease.release()
            self._schedule()

    def _read_input(self, client, path: str) -> bytes:
        if self.sandbox.privileged and not may_read(path, getattr(client, "uid", None)):
            return b""
        try:
            with open(path, "rb") as f:
                return f.read(self.config.output_limit)
        except OSError:
            return b""

    def _stage_files(self, lease, client, run: wire.Run) -> list[str]:
        """As root, files named on the command line that the client may read
        are copied into the workspace, where the job user can read them."""
        if not self.sandbox.privileged:
            return list(run.args)
        uid = getattr(client, "uid", None)
        args = []
        for n, arg in enumerate(run.args):
            if arg.startswith("/") and may_read(arg, uid):
                with open(arg, "rb") as f:
                    data = f.read()
                name = f"in{n}-{os.path.basename(arg)}"
                lease.workspace.write_file(name, data)
                arg = os.path.join(lease.workspace.path, name)
            args.append(arg)
        return args

    def _output_file(self, request: Request) -> str:
        fd, path = tempfile.mkstemp(prefix="why3", dir=self.config.output_dir)
        uid = getattr(request.client, "uid", None)
        if self.sandbox.privileged and uid not in (None, 0):
            os.fchown(fd, uid, -1)
        request.fd, request.path = fd, os.path.abspath(path)
        return request.path

    def _write(self, request: Request, data: bytes) -> None:
        if request.fd is not None:
            view = memoryview(data)
            while view:
                view = view[os.write(request.fd, view) :]

    def _finish(self, request: Request, result) -> None:
        client, run = request.client, request.run
        if self.clients.get(client, {}).get(run.id) is request:
            del self.clients[client][run.id]
        if client not in self.clients:
            os.unlink(request.path)  # nobody to read it
            return
        if result.status is Status.INTERNAL_ERROR and "starting the program failed" in result.detail:
            exitcode, killed = 1, False  # exec failure, as the C server reports it
        elif result.signal is not None:
            exitcode, killed = result.signal, True
        elif result.status in (Status.OK, Status.NONZERO_EXIT):
            exitcode, killed = result.exit_code, False
        else:
            exitcode, killed = 9, True  # killed before it could report a signal
        self.log.info(
            "why3 {id}: {cmd} {status}, {t:.3f}s CPU",
            id=run.id,
            cmd=run.cmd,
            status=result.describe(),
            t=result.user_cpu,
        )
        client.send(wire.finished(run.id, exitcode, result.user_cpu, killed, request.path, self.config.time_format))

    def stop(self) -> None:
        """Shutting down: drop the queue, kill what runs."""
        self.queue.clear()
        for request in list(self.running):
            if request.job is not None:
                request.job.stop(Status.CANCELLED)
