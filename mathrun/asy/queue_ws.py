"""The Asymptote queue front end: WebSocket at "/asy" on the shared site.

The protocol parses and frames: it hands each ``add`` and ``options`` to
the client's :class:`~.intake.Intake` and ``run`` to the
:class:`~.queue.AsyQueue` (the policy: hashes, restores, the render cache,
when and where the task runs), and sends what comes back.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.logger import Logger

from .protocol import ProtocolError, Reassembler, parse_add
from .runner_ws import SendLimit, send_frames

# Not a class attribute "log": on an Autobahn protocol that would replace
# Autobahn's own logger, which drops its per-frame debug events.
_log = Logger()


class QueueProtocol(SendLimit, WebSocketServerProtocol):
    """One client of /asy: its frames to messages, its replies to frames."""

    def onOpen(self):
        queue = self.factory.queue
        self.frames = Reassembler(queue.config.max_upload)
        self.intake = queue.intake()
        self.submitted = False
        self.finished = False

    # -- to the client ----------------------------------------------------------
    def send(self, verb, body=None, payload: bytes | None = None):
        send_frames(self, verb, body, payload)

    def queued(self, estimate_ms: int | None, position: int | None = None):
        body = {"passed": False}
        if estimate_ms is not None:
            body["estimate"] = int(estimate_ms)
        if position is not None:
            body["position"] = position
        self.send("queue", body)

    def missing(self, files: list[dict]):
        self.send("missing", files)

    def passed(self):
        self.send("queue", {"passed": True})

    def output(self, stream, data):
        self.send("output", {"stream": stream}, data)

    def result(self, fmt, data):
        self.send("result", {"format": fmt}, data)

    def complete(self, success, error, time_ms, cached: bool = False):
        self.finished = True
        body = {"success": success, "time": time_ms}
        if error:
            body["error"] = error
        if cached:
            body["cached"] = True
        self.send("complete", body)
        self.sendClose(1000)

    def denied(self, error: str):
        self.finished = True
        self.send("denied", {"error": error})
        self.sendClose(1000)

    # -- from the client --------------------------------------------------------
    def onMessage(self, data, isBinary):
        if self.finished:
            return
        try:
            message = self.frames.feed(data, isBinary)
            if message is not None:
                self.handle(message)
        except ProtocolError as e:
            _log.info("asy queue: refused message from {peer}: {error}", peer=self.peer, error=str(e))
            if self.submitted:
                self.factory.queue.leave(self)
                self.complete(False, f"Execution aborted: {e}")
            else:
                self.denied(str(e))

    def handle(self, message):
        queue = self.factory.queue
        if self.submitted:
            if message.verb == "input":
                return queue.input(self, message.payload)
            raise ProtocolError(f"unexpected {message.verb!r} message after run")
        if message.verb == "add":
            self.intake.add(parse_add(message.body, require_hash=True), message.payload)
        elif message.verb == "options":
            self.intake.set_options(message.body)
        elif message.verb == "run":
            self.submitted = queue.run(self, self.intake)
        else:
            raise ProtocolError(f"unexpected {message.verb!r} message")

    def onClose(self, wasClean, code, reason):
        if getattr(self, "submitted", False) and not self.finished:
            self.finished = True
            self.factory.queue.leave(self)


class QueueFactory(WebSocketServerFactory):
    """The /asy WebSocket factory: hands every connection the one queue."""

    protocol = QueueProtocol

    def __init__(self, queue, url=None):
        super().__init__(url)
        self.queue = queue
