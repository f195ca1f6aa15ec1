"""A client of the Asymptote queue (WebSocket at /asy).

One :meth:`AsyClient.render` is one connection: the files (each with its
SHA-256, or only its hash when the server may still hold it), the options,
``run``; then the queue's progress, asy's output, the images and
``complete``.  Protocol: docs/asymptote.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer

from .common import (
    AuthRequired,
    ClientError,
    ConnectionFailed,
    Credentials,
    basic_header,
    client_credentials,
    default_url,
    endpoint,
    ws_tls,
)

# The queue's task classes, by the timeout (ms) a task asks for.
TIMEOUT_CLASSES = {"fast": 3000, "medium": 10000, "slow": 30000, "default": None}
# Autobahn accepts any message size by default; a client should not.  The
# runner ships images of at most 32 MiB (its max_image), so 64 MiB leaves room.
MAX_MESSAGE = 64 << 20
WITH_PAYLOAD = ("result", "output")
LOCATION = re.compile(
    r"^(?P<file>[A-Za-z0-9_][A-Za-z0-9_-]*\.asy): (?P<line>\d+)\.(?P<col>\d+): (?P<message>.*)$", re.M
)


class AsyDenied(ClientError):
    """The queue refused the task before any Asymptote code ran."""


@dataclass(frozen=True)
class Progress:
    """A ``queue`` message: waiting (with the expected wait and the place in
    the queue, when the server says them) or started."""

    passed: bool
    estimate_ms: int | None = None
    position: int | None = None


@dataclass(frozen=True)
class Location:
    """Where asy reported an error (file, line, column)."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.line}.{self.column}: {self.message}"


@dataclass
class AsyResult:
    """What a run gave: success, error, images, output, as the server sent them."""

    success: bool = False
    error: str | None = None
    time_ms: int | None = None
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (format, data), as shipped out
    stdout: bytes = b""
    stderr: bytes = b""
    progress: list[Progress] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)  # files whose contents were sent (not restored)

    @property
    def image(self) -> bytes | None:
        """The first image, if any."""
        return self.images[0][1] if self.images else None

    @property
    def output(self) -> str:
        """The run's text output, decoded."""
        return (self.stdout + self.stderr).decode("utf-8", "replace")

    @property
    def location(self) -> Location | None:
        """Where asy's first error is (``main.asy: 2.1: syntax error``)."""
        m = LOCATION.search(self.output)
        return m and Location(m["file"], int(m["line"]), int(m["col"]), m["message"].strip())


class _Session(WebSocketClientProtocol):
    """Moves one render's frames; the render holds the state."""

    def onOpen(self):
        self.factory.render.opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.render.frame(payload, isBinary)

    def onClose(self, wasClean, code, reason):
        # Before the upgrade, the HTTP status the server answered (401: credentials).
        status = (getattr(self, "http_status_line", None) or "").split()[1:2]
        self.factory.render.closed(code, reason, status[0] if status else None)


class _Render:
    def __init__(self, files, main, options, progress, restore, authenticated=False):
        self.files, self.main, self.options, self.on_progress = files, main, options, progress
        self.restore, self.authenticated = restore, authenticated
        self.problem = None
        self.result = AsyResult()
        self.done = defer.Deferred()
        self.pending = None  # a payload-carrying verb waiting for its binary frame
        self.denied = self.completed = None
        self.reuploaded = False

    def opened(self, session):
        """Connected: upload (or restore) the files, set the options, run."""
        self.session = session
        for name, data in self.files.items():
            self.add(name, data, restore=self.restore)
        self.send("options", self.options)
        self.send("run")

    def send(self, verb, body=None, payload=None):
        """One protocol message to the server."""
        text = verb if body is None else f"{verb} {json.dumps(body)}"
        self.session.sendMessage(text.encode(), isBinary=False)
        if payload is not None:
            self.session.sendMessage(payload, isBinary=True)

    def add(self, name, data, restore):
        """One file, by hash only when the server may have it cached."""
        body = {"filename": name, "main": name == self.main, "hash": hashlib.sha256(data).hexdigest()}
        if restore:
            self.send("add", {**body, "restore": True})
        else:
            self.send("add", body, data)
            self.result.uploaded.append(name)

    def frame(self, payload: bytes, binary: bool):
        """A frame from the server, into the result as messages complete."""
        if binary:
            if self.pending is None:
                return self.fail("a binary frame that follows no message")
            (verb, body), self.pending = self.pending, None
            if verb == "output":
                stream = "stderr" if body.get("stream") == "stderr" else "stdout"
                setattr(self.result, stream, getattr(self.result, stream) + payload)
            else:
                self.result.images.append((body.get("format"), payload))
            return
        verb, _, rest = payload.decode("utf-8", "replace").partition(" ")
        try:
            body = json.loads(rest) if rest.strip() else {}
        except ValueError:
            return self.fail(f"bad JSON in a {verb!r} message")
        if not isinstance(body, list if verb == "missing" else dict):
            return self.fail(f"a {verb!r} message of the wrong shape")
        if verb in WITH_PAYLOAD:
            self.pending = (verb, body)
        elif verb == "queue":
            event = Progress(bool(body.get("passed")), body.get("estimate"), body.get("position"))
            self.result.progress.append(event)
            if self.on_progress is not None:
                self.on_progress(event)
        elif verb == "missing":
            self.reupload(body)
        elif verb == "complete":
            self.completed = body
        elif verb == "denied":
            self.denied = body.get("error") or "denied"

    def reupload(self, missing):
        """The server lost some restored files: send them, then run again (once)."""
        if self.reuploaded:
            return self.fail("the server asked twice for the same files")
        self.reuploaded = True
        for entry in missing:
            name = entry.get("filename")
            if name in self.files:
                self.add(name, self.files[name], restore=False)
        self.send("run")

    def fail(self, why):
        """The render ends with a ClientError."""
        self.problem = why
        self.session.dropConnection(abort=True)

    def closed(self, code, reason, http_status=None):
        """The connection closed: the result, or why there is none."""
        if self.done.called:
            return
        if http_status == "401":
            self.done.errback(AuthRequired(self.authenticated))
        elif self.completed is not None:
            body, r = self.completed, self.result
            r.success, r.error, r.time_ms = bool(body.get("success")), body.get("error"), body.get("time")
            self.done.callback(r)
        elif self.denied is not None:
            self.done.errback(AsyDenied(self.denied))
        else:
            why = self.problem or reason or f"closed with code {code}"
            self.done.errback(ConnectionFailed(f"the connection ended before the result: {why}"))


class AsyClient:
    """Renders Asymptote files through a mathrun queue at ``url``;
    ``credentials`` (else the URL's ``user:pass@``) go with the upgrade
    request as HTTP basic auth, ``ca_file`` is trusted for ``wss://``."""

    def __init__(self, reactor, url: str | None = None, max_message: int = MAX_MESSAGE, wait: float = 300,
                 credentials: Credentials | None = None, ca_file: str | None = None):  # fmt: skip
        self.reactor = reactor
        url, self.credentials = client_credentials(url or default_url(), credentials)
        self.url = endpoint(url, "/asy", websocket=True)
        self.ca_file = ca_file
        self.max_message = max_message
        self.wait = wait  # seconds for the whole render, queue included: for a server that hangs

    async def render(self, files: dict[str, bytes], main: str, format: str = "svg", timeout: str = "default",
                     progress=None, separate_stderr: bool = True, restore: bool = False) -> AsyResult:  # fmt: skip
        """Render ``files`` (name → contents; ``main`` names the main one).

        ``timeout`` is a task class of :data:`TIMEOUT_CLASSES`; ``progress``
        is called with each :class:`Progress`; ``restore`` sends only hashes
        first (files the server saw recently need no upload).  A failed run
        is an :class:`AsyResult` with ``success`` false; :class:`AsyDenied`
        and :class:`ConnectionFailed` are raised."""
        if main not in files:
            raise ValueError(f"the main file {main!r} is not among the files")
        options = {"format": format, "stderr": "separate" if separate_stderr else "stdout"}
        if TIMEOUT_CLASSES[timeout] is not None:
            options["timeout"] = TIMEOUT_CLASSES[timeout]
        render = _Render(dict(files), main, options, progress, restore, self.credentials is not None)
        factory = WebSocketClientFactory(self.url, reactor=self.reactor, headers=basic_header(self.credentials))
        factory.protocol, factory.render = _Session, render
        factory.setProtocolOptions(
            maxMessagePayloadSize=self.max_message, maxFramePayloadSize=self.max_message,
            openHandshakeTimeout=10, autoPingInterval=10, autoPingTimeout=10,
        )  # fmt: skip
        factory.clientConnectionFailed = lambda _, reason: (
            render.done.called
            or render.done.errback(ConnectionFailed(f"cannot reach {self.url}: {reason.getErrorMessage()}"))
        )
        connector = connectWS(factory, ws_tls(self.url, self.ca_file), timeout=10)
        try:
            return await render.done.addTimeout(self.wait, self.reactor)
        except defer.TimeoutError as e:
            raise ConnectionFailed(f"no result from {self.url} within {self.wait:g} s") from e
        finally:
            connector.disconnect()
