"""The Asymptote queue front end: WebSocket at "/asy" on the shared site.

The protocol checks and collects a client's files (verifying each SHA-256,
restoring recent ones from the cache, asking for re-upload of what it lost)
and options, then hands the task to the :class:`~.queue.AsyQueue`, which
decides when and where it runs; the protocol relays what comes back.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.logger import Logger

from .cache import sha256_hex
from .protocol import FileSet, ProtocolError, Reassembler, RunOptions, parse_add, parse_options
from .runner_ws import SendLimit, send_frames

# Not a class attribute "log": on an Autobahn protocol that would replace
# Autobahn's own logger, which drops its per-frame debug events.
_log = Logger()

QUEUE_TIMEOUTS = (3000, 10000, 30000, None)


class QueueProtocol(SendLimit, WebSocketServerProtocol):
    """One client of /asy: its frames to messages, its replies to frames."""

    def onOpen(self):
        queue = self.factory.queue
        self.frames = Reassembler(queue.config.max_upload)
        self.fileset = FileSet(queue.config.max_files, queue.config.max_upload)
        self.options = RunOptions()
        self.missing: list[dict] = []
        self.submitted = False
        self.finished = False

    # -- to the client ----------------------------------------------------------
    def send(self, verb, body=None, payload: bytes | None = None):
        send_frames(self, verb, body, payload)

    def queued(self, estimate_ms: int | None):
        body = {"passed": False}
        if estimate_ms is not None:
            body["estimate"] = int(estimate_ms)
        self.send("queue", body)

    def passed(self):
        self.send("queue", {"passed": True})

    def output(self, stream, data):
        self.send("output", {"stream": stream}, data)

    def result(self, fmt, data):
        self.send("result", {"format": fmt}, data)

    def complete(self, success, error, time_ms):
        self.finished = True
        body = {"success": success, "time": time_ms}
        if error:
            body["error"] = error
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
            entry = parse_add(message.body, require_hash=True)
            if entry.restore:
                data = queue.cache.get(entry.hash)
                if data is None:
                    self.missing.append({"filename": entry.filename, "hash": entry.hash})
                    return
            else:
                data = message.payload
                if sha256_hex(data) != entry.hash:
                    raise ProtocolError(f"hash of {entry.filename} does not match its contents")
                queue.cache.put(entry.hash, data)
            self.fileset.add(entry, data)
        elif message.verb == "options":
            self.options = parse_options(message.body, self.options, QUEUE_TIMEOUTS)
        elif message.verb == "run":
            if self.missing:
                missing, self.missing = self.missing, []
                self.send("missing", missing)
                return
            if not self.options.interactive and self.fileset.main is None:
                raise ProtocolError("no main file: add one with main: true")
            self.submitted = True
            queue.submit(self)
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
