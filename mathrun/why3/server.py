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
import signal
from dataclasses import dataclass

from twisted.internet import defer, protocol
from twisted.logger import Logger

from ..sandbox import Limits, Status
from . import protocol as wire
from .config import Why3Config
from .files import ClientFiles, Credentials, OwnFiles, make_output_file, peer_credentials

__all__ = ["Credentials", "Why3Config", "Why3Server", "c_server_status", "make_output_file"]


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


class Why3Server(protocol.Factory):
    """The policy: queue, ``parallel``, per-client bookkeeping, limits; the
    request's files through ``files`` (files.py)."""

    protocol = wire.Why3Protocol
    log = Logger()
    log_queries = False  # a debug line per request: only for --logging

    def __init__(self, sandbox, config: Why3Config | None = None, reactor=None, on_empty=None, files=None, caller=None):
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
        limit = self.config.output_limit
        if files is None:
            kind = ClientFiles if sandbox.privileged else OwnFiles
            files = kind(sandbox, limit, self.config.output_dir)
        self.files = files
        self.caller = caller  # a hand-off's Credentials: every client acts as the caller
        self.tasks = 0
        self.stopped = False
        self._idle: list = []  # called once nothing runs (a hand-off's end)
        self._limits_cache: dict[tuple[int, int], Limits] = {}
        self.answered: collections.Counter[str] = collections.Counter()  # requests by how they ended

    # -- clients ----------------------------------------------------------------
    def client_connected(self, client) -> None:
        self.clients[client] = {}
        client.creds = self.caller
        if client.creds is None and self.sandbox.privileged:
            handle = getattr(client.transport, "getHandle", None)
            peer = peer_credentials(handle()) if handle else None
            client.creds = Credentials.of(peer[1], peer[2]) if peer else None

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
            self.tasks += 1
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
        # else: still waiting for a job user or its files; answered then

    def _answer_interrupted(self, request: Request) -> None:
        """As 1.8 answers, but with a file that exists: 1.5.1 clients open it."""
        self._with_output(request, lambda: self._answer(request, 0, 0.0, False))

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
            now = getattr(self.sandbox, "try_acquire", None)  # (a job user free: no Deferred)
            lease = now(limits.workspace_bytes) if now is not None else None
            d = self.sandbox.acquire(limits.workspace_bytes) if lease is None else None
        except Exception:
            self._failed(request)
            self._done(request, None)
            return None
        if d is None:
            return self._leased(lease, request, limits)
        d.addCallbacks(self._leased, self._lease_failed, callbackArgs=(request, limits), errbackArgs=(request,))

    def _lease_failed(self, reason, request: Request) -> None:
        self.log.failure("why3 request {id} failed", reason, id=request.run.id)
        self._failed(request, logged=True)
        self._done(request, None)

    def _leased(self, lease, request: Request, limits: Limits) -> None:
        client, run = request.client, request.run
        try:
            if self._gone_or_interrupted(request, lease):
                return
            create = self.files.spawn_output(client)
            if create is not None:  # (the spawn server makes the output file with the spawn)
                inputs = self.files.inputs(lease, client, run)
                if not isinstance(inputs, defer.Deferred):
                    return self._start(request, lease, limits, *inputs, create)
                inputs.addCallbacks(
                    self._inputs_read, self._prepare_failed, (request, lease, limits, create), None, (request, lease)
                )
                return None
            if self.files.synchronous:
                args, stdin = self.files.inputs(lease, client, run)
                request.fd, request.path = self.files.output(client)
                self._start(request, lease, limits, args, stdin)
                return None
            d = defer.DeferredList(
                [defer.maybeDeferred(self.files.inputs, lease, client, run), self.files.output(client)]
            )
        except Exception:
            self._failed(request)
            return self._done(request, lease)
        d.addCallback(self._prepared, request, lease, limits)
        return None

    def _inputs_read(self, inputs, request: Request, lease, limits: Limits, create) -> None:
        if not self._gone_or_interrupted(request, lease):
            self._start(request, lease, limits, *inputs, create)

    def _prepare_failed(self, reason, request: Request, lease) -> None:
        self.log.failure("why3 request {id} failed", reason, id=request.run.id)
        self._failed(request, logged=True)
        self._done(request, lease)

    def _gone_or_interrupted(self, request: Request, lease) -> bool:
        if request.client not in self.clients or self.stopped:
            self._done(request, lease)
            return True
        if request.interrupted:  # while it waited for a job user or its files
            self._answer_interrupted(request)
            self._done(request, lease)
            return True
        return False

    def _prepared(self, results, request: Request, lease, limits: Limits) -> None:
        """The files opened as the client (privileged): now the prover."""
        (inputs_ok, inputs), (output_ok, output) = results
        if output_ok:
            request.fd, request.path = output
        try:
            if not inputs_ok:
                inputs.raiseException()
            if not output_ok:
                output.raiseException()
            if not self._gone_or_interrupted(request, lease):
                self._start(request, lease, limits, *inputs)
        except Exception:
            self._failed(request)
            self._done(request, lease)

    def _start(self, request: Request, lease, limits: Limits, args: list[str], stdin: bytes, create=None) -> None:
        run = request.run
        try:
            # The prover writes its output file itself, as the C server's do.
            extra = {"output_create": create} if create is not None else {"output_fd": request.fd}
            request.job = lease.spawn([run.cmd, *args], limits, frontend="why3", stdin=stdin, **extra)
            request.client.send(wire.started(run.id))
        except Exception:
            self._failed(request)
            return self._done(request, lease)
        request.job.on_end = lambda: self._ended(request)
        request.job.done.addCallback(self._ran, request, lease)
        return None

    def _ended(self, request: Request) -> None:
        """The prover is gone: the next request may start (in another slot)
        before this one's answer and its lease's release."""
        self.running.discard(request)
        self._schedule()

    def _ran(self, result, request: Request, lease) -> None:
        try:
            self._output_of(request)
            if request.path is None:  # (its output file was never made: the job did not start)
                self._with_output(request, lambda: self._finish(request, result))
            else:
                self._finish(request, result)
        except Exception:
            self._failed(request)
        self._done(request, lease)

    def _output_of(self, request: Request) -> None:
        """The path of the output file the spawn server made, once known."""
        job = request.job
        if request.path is None and job is not None and job.output_name is not None:
            request.path = self.files.created_path(job.output_name)

    def _failed(self, request: Request, logged: bool = False) -> None:
        """Every request gets its F, even when the server failed it."""
        client, run = request.client, request.run
        if not logged:
            self.log.failure("why3 request {id} failed", id=run.id)
        self._output_of(request)
        if request.state == "answered" or client not in self.clients:
            return
        request.state = "failing"
        if request.fd is None and request.path is not None:
            self.files.discard(request.path)  # (made by the spawn server: a new one to write to)
            request.path = None

        def answer():
            try:
                self._write(request, f"{run.cmd}: mathrun could not run it (see the server log)\n".encode())
            except OSError:
                self.log.failure("why3 request {id}: no output file either", id=run.id)
            self._answer(request, 1, 0.0, False, "failed")

        self._with_output(request, answer)

    def _with_output(self, request: Request, then) -> None:
        """``then()`` once the request has an output file (made now if it
        has none; as the caller, through the spawn server, after a hand-off)."""
        if request.path is not None:
            return then()
        try:
            made = self.files.output(request.client)
        except OSError:
            self.log.failure("why3 request {id}: no output file", id=request.run.id)
            return then()
        if not isinstance(made, defer.Deferred):
            request.fd, request.path = made
            return then()

        def ready(output):
            request.fd, request.path = output
            if request.client not in self.clients:
                self._close_output(request)
                self.files.discard(request.path)
                return
            then()

        def failed(reason):
            self.log.failure("why3 request {id}: no output file", reason, id=request.run.id)
            then()

        made.addCallbacks(ready, failed)
        return None

    def _done(self, request: Request, lease) -> None:
        self._output_of(request)
        if request.state != "failing":
            self._close_output(request)
            if request.state != "answered" and request.path is not None:
                self.files.discard(request.path)
        self.running.discard(request)
        # The prover is gone: the next may start while this lease is released.
        self._schedule()
        if not self.running and self._idle:
            idle, self._idle = self._idle, []
            for then in idle:
                then()
        if lease is not None:
            lease.release().addErrback(lambda f: self.log.failure("why3 server: releasing a job user failed", f))

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
            return  # nobody to read it: its file goes in _done
        exitcode, killed = c_server_status(result)  # (the sandbox logs the job's one line)
        self._answer(request, exitcode, result.user_cpu, killed)

    def when_idle(self, then) -> None:
        """``then()`` once no request runs (every prover has ended)."""
        if self.running:
            self._idle.append(then)
        else:
            then()

    def stop(self) -> None:
        """Shutting down: drop the queue, kill what runs, start nothing more."""
        self.stopped = True
        self.queue.clear()
        for request in list(self.running):
            if request.job is not None:
                request.job.stop(Status.CANCELLED)


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
