"""Where the queue sends a task: a local runner in this process, or a runner
back end at a WebSocket URL (another host included).

Both take ``start(files, main, options, sink)`` and return a handle with
``lower_timeout(ms)``, ``write_input(data)`` and ``abort(reason)``; the sink
gets ``output``, ``result`` and exactly one ``complete``.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.logger import Logger
from zope.interface import implementer

from ..interfaces import IAsyBackend, IAsyHandle
from .config import AsyConfig, RunnerConfig
from .protocol import FileEntry, ProtocolError, Reassembler, RunOptions, encode
from .runner import AsyRun, output_limit_message
from .runner_ws import FRAME_SLACK, HANDSHAKE_SECONDS, SendLimit
from .token import bearer, runner_refusal, runner_tls

_log = Logger()


@implementer(IAsyBackend)
class LocalBackend:
    """An AsyRun in this process, in the shared sandbox."""

    def __init__(self, sandbox, config: RunnerConfig | None = None, name="local"):
        self.sandbox = sandbox
        self.config = config or RunnerConfig()
        self.name = name

    def available(self) -> bool:
        """A local runner is never out of rotation."""
        return True

    def start(self, files: dict, main: str | None, options: RunOptions, sink):
        """Run the task in this process's sandbox; the AsyRun is the handle."""
        run = AsyRun(self.sandbox, sink, self.config)
        for filename, data in files.items():
            run.add(FileEntry(filename, filename == main), data)
        run.options = options
        run.start().addErrback(lambda f: _log.failure("asy local back end {name}: run failed", f, name=self.name))
        return run


class _RemoteSession(SendLimit, WebSocketClientProtocol):
    def onConnect(self, response):
        backend = self.factory.task.backend
        refusal = runner_refusal(response.headers, self.websocket_key, backend.token)
        if refusal is not None:
            self.factory.task.failed(f"{backend.name}: {refusal}")  # onOpen then drops the connection

    def onOpen(self):
        task = self.factory.task
        if task.done:
            self.dropConnection(abort=True)
            return
        self.frames = Reassembler(task.backend.max_message)
        for filename, data in task.files.items():
            self.send("add", {"filename": filename, "main": filename == task.main}, data)
        o = task.options
        self.send(
            "options",
            {
                "interactive": o.interactive,
                "timeout": o.timeout,
                "format": o.format,
                "stderr": o.stderr,
                "verbosity": o.verbosity,
            },
        )
        self.send("run")
        task.opened(self)

    def send(self, verb, body=None, payload=None):
        """One message: its text frame, then its payload's binary frame."""
        self.sendMessage(encode(verb, body).encode(), isBinary=False)
        if payload is not None:
            self.sendMessage(payload, isBinary=True)

    def onMessage(self, data, isBinary):
        task = self.factory.task
        try:
            message = self.frames.feed(data, isBinary)
        except ProtocolError as e:
            task.failed(f"bad message from the back end: {e}")
            self.dropConnection(abort=True)
            return
        if message is not None:
            task.message(message)

    def onClose(self, wasClean, code, reason):
        if self.wasMaxMessagePayloadSizeExceeded:
            self.factory.task.too_large()
        self.factory.task.closed(reason or f"connection closed ({code})")


@implementer(IAsyHandle)
class RemoteTask:
    """One task on a remote runner: relays its messages to the sink."""

    def __init__(self, backend, files, main, options, sink):
        self.backend = backend
        self.files, self.main, self.options, self.sink = files, main, options, sink
        self.session = None
        self.connector = None
        self.pending = []  # what the client sent before the connection opened
        self.done = False

    def opened(self, session):
        """The connection is up: send what the client sent meanwhile."""
        self.session = session
        for verb, body, payload in self.pending:
            session.send(verb, body, payload)
        self.pending = []

    def _send(self, verb, body=None, payload=None):
        if self.session is not None:
            self.session.send(verb, body, payload)
        else:
            self.pending.append((verb, body, payload))

    def lower_timeout(self, timeout_ms: int) -> None:
        """Relayed as the runner protocol's later ``options {timeout}``."""
        self._send("options", {"timeout": timeout_ms})

    def write_input(self, data: bytes) -> None:
        """Relayed as an ``input`` message (queued until connected)."""
        self._send("input", None, data)

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection: the runner kills the run when it goes."""
        self.done = True
        if self.session is not None:
            self.session.dropConnection(abort=True)
        elif self.connector is not None:
            self.connector.disconnect()

    def message(self, message):
        """A runner message, to the sink; nothing after ``complete``."""
        if self.done:
            return
        if message.verb == "output":
            self.sink.output(message.body.get("stream", "stdout"), message.payload)
        elif message.verb == "result":
            self.sink.result(message.body.get("format", self.options.format), message.payload)
        elif message.verb == "complete":
            self.done = True
            body = message.body or {}
            self.sink.complete(bool(body.get("success")), body.get("error"), int(body.get("time", 0)))

    def too_large(self):
        """The runner sent an image over our limit (its own is larger): the
        task's output was too large, the back end is fine."""
        if not self.done:
            self.done = True
            limit = self.backend.max_image
            self.backend.log.warn(
                "asy back end {url}: a message over the image limit of {limit} B; task ended",
                url=self.backend.url,
                limit=limit,
            )
            self.sink.complete(False, output_limit_message(limit), 0)

    def failed(self, why: str):
        """The back end failed: out of rotation, and the task ends for the client."""
        if not self.done:
            self.done = True
            self.backend.mark_down(why)
            self.sink.complete(False, f"Back end failed: {why}", 0)

    def closed(self, why):
        """The connection ended before ``complete``: a back-end failure."""
        self.failed(f"{self.backend.name}: {why}")


@implementer(IAsyBackend)
class RemoteBackend:
    """A runner back end at ``url``; taken out of rotation when it fails and
    offered again after ``retry_seconds``."""

    log = Logger()

    def __init__(
        self,
        url: str,
        reactor,
        retry_seconds: float = AsyConfig.backend_retry_seconds,
        max_image: int = RunnerConfig.max_image,
        max_upload: int = RunnerConfig.max_upload,
        token: bytes | None = None,
        ca_file: str | None = None,
    ):
        self.url = url
        self.token = token  # sent to the runner (asy/token.py)
        self.tls = runner_tls(url, ca_file)  # None for ws://
        self.name = url
        self.reactor = reactor
        self.retry_seconds = retry_seconds
        self.max_image = max_image
        self.max_message = max_image + FRAME_SLACK  # received: results; sent: uploads
        self.max_send = max_upload + FRAME_SLACK
        self.down_until = 0.0

    def available(self) -> bool:
        """In rotation unless it failed less than ``retry_seconds`` ago."""
        return self.reactor.seconds() >= self.down_until

    def mark_down(self, why: str) -> None:
        """Out of rotation for ``retry_seconds`` (the queue re-enables its slot then)."""
        self.down_until = self.reactor.seconds() + self.retry_seconds
        self.log.warn(
            "asy back end {url} out of rotation for {s:g} s: {why}", url=self.url, s=self.retry_seconds, why=why
        )

    def start(self, files, main, options, sink):
        """Connect to the runner and stream the task to it; the RemoteTask is the handle."""
        task = RemoteTask(self, files, main, options, sink)
        factory = WebSocketClientFactory(self.url, reactor=self.reactor, headers=bearer(self.token))
        factory.protocol = _RemoteSession
        factory.task = task
        factory.max_send = self.max_send
        factory.setProtocolOptions(
            openHandshakeTimeout=HANDSHAKE_SECONDS,
            maxMessagePayloadSize=self.max_message,
            maxFramePayloadSize=self.max_message,
        )
        factory.clientConnectionFailed = lambda connector, reason: task.failed(reason.getErrorMessage())
        task.connector = connectWS(factory, self.tls)
        return task
