"""The VC server as a service of ``twistd mathrun``: a unix socket, unlinked
again at shutdown, with every running prover killed; and the control socket
that standalone servers hand their sessions to (handoff.py)."""

from __future__ import annotations

import dataclasses
import os

from twisted.application import service
from twisted.internet import defer

from .handoff import ControlFactory
from .server import Why3Config, Why3Server


class Why3Service(service.Service):
    """``Why3Service(sandbox, path, Why3Config(...), reactor)``, or with
    ``jobs=`` and ``time_format=`` as keywords over the default config."""

    name = "why3"

    def __init__(
        self,
        sandbox,
        socket_path: str,
        config: Why3Config | None = None,
        reactor=None,
        *,
        jobs: int | None = None,
        time_format: str | None = None,
        control_path: str | None = None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        config = config or Why3Config()
        changes = {k: v for k, v in (("jobs", jobs), ("time_format", time_format)) if v is not None}
        self.reactor = reactor
        self.socket_path = socket_path
        self.server = Why3Server(sandbox, dataclasses.replace(config, **changes), reactor)
        self.port = None
        # The hand-off: standalone servers started by why3 pass their socket here.
        self.control_path = control_path
        self.control = ControlFactory(sandbox, self.server.config, reactor) if control_path else None
        self.control_port = None

    def startService(self):
        super().startService()
        directory = os.path.dirname(os.path.abspath(self.socket_path))
        os.makedirs(directory, exist_ok=True)
        # Clients delete their output files: sticky and writable, not listable.
        os.makedirs(self.server.config.output_dir, exist_ok=True)
        os.chmod(self.server.config.output_dir, 0o1733)
        if os.path.lexists(self.socket_path):
            os.unlink(self.socket_path)
        self.port = self.reactor.listenUNIX(self.socket_path, self.server, mode=0o666)
        if self.control is not None:
            if os.path.lexists(self.control_path):
                os.unlink(self.control_path)
            self.control_port = self.reactor.listenUNIX(self.control_path, self.control, mode=0o666)

    def stopService(self):
        super().stopService()
        self.server.stop()
        ports = [p for p in (self.port, self.control_port) if p is not None]
        if self.control is not None:
            self.control.stop()
        return defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in ports])
