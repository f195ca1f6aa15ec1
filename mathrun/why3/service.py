"""The VC server as a service of ``twistd mathrun``: a unix socket, unlinked
again at shutdown, with every running prover killed; and the control socket
that standalone servers hand their sessions to (handoff.py)."""

from __future__ import annotations

import os

from prometheus_client import Gauge
from prometheus_client.core import CounterMetricFamily
from twisted.application import service
from twisted.internet import defer
from zope.interface import implementer

from ..interfaces import IFrontEnd
from .config import Why3Config
from .handoff import ControlFactory
from .server import Why3Server

TASK_STATUSES = ("done", "killed", "interrupted", "failed")
SOCKET_MODE = 0o666  # any local user may connect: the server checks what each may read
OUTPUT_DIR_MODE = 0o1733  # clients delete their output files: sticky and writable, not listable


@implementer(IFrontEnd)
class Why3Service(service.Service):
    """Owns the unix socket of ``Why3Server`` (the policy): listens at
    start, stops the server and the port at stop."""

    name = "why3"
    paths = ()  # its own unix socket

    def __init__(
        self,
        sandbox,
        socket_path: str,
        config: Why3Config | None = None,
        reactor=None,
        *,
        control_path: str | None = None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.socket_path = socket_path
        self.server = Why3Server(sandbox, config or Why3Config(), reactor)
        self.port = None
        # The hand-off: standalone servers started by why3 pass their socket here.
        self.control_path = control_path
        self.control = ControlFactory(sandbox, self.server.config, reactor) if control_path else None
        self.control_port = None

    def startService(self):
        super().startService()
        directory = os.path.dirname(os.path.abspath(self.socket_path))
        os.makedirs(directory, exist_ok=True)
        os.makedirs(self.server.config.output_dir, exist_ok=True)
        os.chmod(self.server.config.output_dir, OUTPUT_DIR_MODE)
        if os.path.lexists(self.socket_path):
            os.unlink(self.socket_path)
        self.port = self.reactor.listenUNIX(self.socket_path, self.server, mode=SOCKET_MODE)
        if self.control is not None:
            if os.path.lexists(self.control_path):
                os.unlink(self.control_path)
            self.control_port = self.reactor.listenUNIX(self.control_path, self.control, mode=SOCKET_MODE)

    def stopService(self):
        super().stopService()
        self.server.stop()
        ports = [p for p in (self.port, self.control_port) if p is not None]
        if self.control is not None:
            self.control.stop()
        return defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in ports])

    def snapshot(self) -> dict:
        """Requests waiting and running, clients, and requests answered by
        how they ended; failing when the socket is not listening."""
        server = self.server
        state = {
            "socket": self.socket_path,
            "queue_length": len(server.queue),
            "running": len(server.running),
            "clients": len(server.clients),
            "parallel": server.parallel,
            "tasks": {status: server.answered[status] for status in TASK_STATUSES},
        }
        if self.running and self.port is None:
            state["failing"] = "the Why3 socket is not listening"
        return state

    def register_metrics(self, registry) -> None:
        """Requests answered by status, and the queue's length."""
        registry.register(_TaskCollector(self))
        Gauge("mathrun_why3_queue_length", "Why3 requests waiting for a prover slot.", registry=registry).set_function(
            lambda: len(self.server.queue)
        )


class _TaskCollector:
    """``mathrun_why3_tasks_total{status}``, read from the server's counts
    when scraped (the server keeps one Counter of its answers)."""

    def __init__(self, why3: Why3Service):
        self.why3 = why3

    def describe(self):
        """The family's name, so that the registry checks for clashes."""
        return [CounterMetricFamily("mathrun_why3_tasks", "Why3 requests answered, by status.", labels=["status"])]

    def collect(self):
        """One sample per status, at its count."""
        family = CounterMetricFamily("mathrun_why3_tasks", "Why3 requests answered, by status.", labels=["status"])
        for status in TASK_STATUSES:
            family.add_metric([status], self.why3.server.answered[status])
        yield family


__all__ = ["Why3Service"]
