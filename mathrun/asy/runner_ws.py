"""The Asymptote runner back end: WebSocket at "/", one job per connection.

The protocol moves frames between the client and an :class:`AsyRun`; the
factory owns policy: one connection at a time (a second one is refused with
503 at the handshake), message sizes, handshake timeout, allowed origins.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger
from zope.interface import implementer

from ..interfaces import IRunSink
from .protocol import ProtocolError, Reassembler, encode, parse_add, parse_options, parse_timeout_update
from .runner import AsyRun, RunnerConfig
from .token import accept, check_runner_request

# Not a class attribute "log": on an Autobahn protocol that would replace
# Autobahn's own logger, which drops its per-frame debug events.
_log = Logger()


# Room for a text frame (at most MAX_TEXT_FRAME) on top of the largest payload.
FRAME_SLACK = 64 << 10
HANDSHAKE_SECONDS = 10  # to open a connection (a client that never finishes it holds a socket)
CLOSE_SECONDS = 5
PING_SECONDS = 30  # a ping every 30 s, and a peer silent 30 s more is gone (lost tabs, dead NAT)
# The runner serves one connection; a second may connect only to be refused with 503.
RUNNER_CONNECTIONS = 2


def limit_websocket(factory, max_message: int, origins, max_connections: int | None, max_send: int | None = None):
    """Autobahn's defaults are no size limit, any origin, no connection cap.
    ``max_message`` bounds what is received, ``max_send`` (default the same)
    what is sent, for protocols with :class:`SendLimit`."""
    factory.max_send = max_send or max_message
    factory.setProtocolOptions(
        maxFramePayloadSize=max_message,
        maxMessagePayloadSize=max_message,
        openHandshakeTimeout=HANDSHAKE_SECONDS,
        closeHandshakeTimeout=CLOSE_SECONDS,
        allowedOrigins=list(origins),
        maxConnections=max_connections,
        autoPingInterval=PING_SECONDS,
        autoPingTimeout=PING_SECONDS,
    )


class SendLimit:
    """Autobahn checks a message sent against the same limit as one received,
    but uploads are small and images large: sends get ``factory.max_send``."""

    def sendMessage(self, payload, isBinary=False, *args, **kwargs):
        received = self.maxMessagePayloadSize
        self.maxMessagePayloadSize = getattr(self.factory, "max_send", received)
        try:
            return super().sendMessage(payload, isBinary, *args, **kwargs)
        finally:
            self.maxMessagePayloadSize = received


def send_frames(ws, verb, body=None, payload: bytes | None = None) -> None:
    """One message: its text frame, and its binary frame if it has a payload."""
    if ws.state != ws.STATE_OPEN:
        return
    ws.sendMessage(encode(verb, body).encode(), isBinary=False)
    if payload is not None:
        ws.sendMessage(payload, isBinary=True)


@implementer(IRunSink)
class FrameSink:
    """Turns a run's events into the runner protocol's frames."""

    def __init__(self, protocol):
        self.protocol = protocol

    def output(self, stream, data):
        """Text the run wrote, as an ``output`` message."""
        self.protocol.send("output", {"stream": stream}, data)

    def result(self, fmt, data):
        """An image, as a ``result`` message."""
        self.protocol.send("result", {"format": fmt}, data)

    def complete(self, success, error, time_ms):
        """The end, as a ``complete`` message; then the connection closes."""
        body = {"success": success, "time": time_ms}
        if error:
            body["error"] = error
        self.protocol.send("complete", body)
        self.protocol.sendClose(1000)


class RunnerProtocol(SendLimit, WebSocketServerProtocol):
    """One connection of the runner back end: frames to an AsyRun and back."""

    def onConnect(self, request):
        check_runner_request(request.headers, self.factory.token)  # before it may take the one connection
        if self.factory.busy is not None:
            raise ConnectionDeny(503, "runner busy: it serves one connection at a time")
        self.factory.busy = self
        return accept(request.headers, self.factory.token)  # with a token, the runner proves it holds it too

    def onOpen(self):
        self.frames = Reassembler(self.factory.config.max_upload)
        self.run = AsyRun(self.factory.sandbox, FrameSink(self), self.factory.config)

    def send(self, verb, body=None, payload: bytes | None = None):
        """One message to the client (dropped once the connection closes)."""
        send_frames(self, verb, body, payload)

    def onMessage(self, data, isBinary):
        try:
            message = self.frames.feed(data, isBinary)
            if message is not None:
                self.handle(message)
        except ProtocolError as e:
            _log.info("asy runner: refused message from {peer}: {error}", peer=self.peer, error=str(e))
            if self.run.started:
                self.run.abort("aborted: " + str(e))
            else:
                self.send("complete", {"success": False, "error": str(e)})
                self.sendClose(1000)

    def handle(self, message):
        """A whole message: set-up before ``run``, then only input and timeouts."""
        run = self.run
        if message.verb == "add" and not run.started:
            run.add(parse_add(message.body), message.payload)
        elif message.verb == "options" and not run.started:
            run.options = parse_options(message.body, run.options)
        elif message.verb == "options":
            run.lower_timeout(parse_timeout_update(message.body))
        elif message.verb == "run" and not run.started:
            run.start().addErrback(lambda f: _log.failure("asy runner: run failed", f))
        elif message.verb == "input" and run.started:
            run.write_input(message.payload)
        else:
            raise ProtocolError(f"unexpected {message.verb!r} message")

    def onClose(self, wasClean, code, reason):
        run = getattr(self, "run", None)
        if run is not None and run.started and not run.finished:
            run.abort("aborted: connection closed")
        if self.factory.busy is self:
            self.factory.busy = None


class RunnerFactory(WebSocketServerFactory):
    """The runner back end's policy: one connection at a time, message size
    limits, allowed origins, the runner settings."""

    protocol = RunnerProtocol

    def __init__(self, sandbox, config: RunnerConfig | None = None, url=None, origins=("*",), token=None):
        super().__init__(url)
        self.sandbox = sandbox
        self.config = config or RunnerConfig()
        self.token = token  # bytes a queue must present (asy/token.py), None for none
        self.busy = None
        limit_websocket(
            self,
            self.config.max_upload + FRAME_SLACK,
            origins,
            max_connections=RUNNER_CONNECTIONS,
            max_send=self.config.max_image + FRAME_SLACK,
        )
