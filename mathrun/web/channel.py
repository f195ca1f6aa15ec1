"""The lean HTTP/1.1 channel: a front end's plain requests (STACK's
``POST /maxima``) parsed and answered here, everything else handed to
twisted.web on the same connection.

twisted.web costs ~0.5 ms of CPU per request in its own layers (a Request
object with two Headers, its producer dance, the Date header, the
resource traversal, the site's log line).  This channel parses the head and
the body itself (web/lean.py), asks the route's handler for an answer and
writes it in one piece; keep-alive as twisted.web does it (HTTP/1.1 unless
``Connection: close``), one request at a time in order.  A request it does
not take (another path, a chunked body, ``Expect``, HEAD, anything unusual
in its head) switches the connection to twisted.web's channel with the
bytes read so far, for good: the page, /health, /metrics and the
WebSocket upgrade work as before on the same port.
"""

from __future__ import annotations

from typing import NamedTuple

from twisted.internet import defer, protocol, tcp
from twisted.logger import Logger
from twisted.python import failure
from twisted.web import server
from twisted.web.http import datetimeToString

from .lean import MAX_HEAD, Answer, Head, first_segment, form_fields, parse_head, response_bytes, text_answer
from .perclient import Lease, client_of, too_many

BAD_FORM = text_answer(400, "400 - bad form body\n")


class Route(NamedTuple):
    """A path's handler (``answer(fields, method)``: an Answer or a Deferred
    of one) and its per-client policy (web/perclient.py), if any."""

    handler: object
    policy: object = None
    retry_after: int = 1


class LogEntry(NamedTuple):
    """What the site's access-log formatter reads of a request."""

    address: object
    head: Head
    code: int
    sentLength: int
    access_logged: bool = True

    method = property(lambda self: self.head.method)
    uri = property(lambda self: self.head.target)
    clientproto = property(lambda self: self.head.version)

    def getClientAddress(self):
        return self.address

    def getHeader(self, name: bytes):
        return self.head.headers.get(name.lower())


def flush_now(transport) -> None:
    """Write what the transport holds in this turn of the reactor, not the
    next: the job's cleanup (scheduled after the answer) and the next poll
    come after it.  Only on a plain TCP connection that stays open;
    anything else (TLS, closing) is left to the reactor, and so is an
    error, which the next write attempt reports again."""
    if isinstance(transport, tcp.Connection) and transport.connected:
        if not (transport.disconnecting or transport._writeDisconnecting):
            transport.doWrite()


class LeanChannel(protocol.Protocol):
    """One connection: lean requests answered here until one is not, then
    twisted.web's channel (``inner``) has it."""

    log = Logger()
    inner = None  # twisted.web's channel, once handed over
    current: Head | None = None  # the request being answered
    pending = None  # its Deferred, cancelled if the client goes away
    closing = False
    paused = False
    idle = None
    _serving = False

    def __init__(self, site, addr):
        self.site = site
        self.addr = addr
        self.chunks: list[bytes] = []  # received, not yet taken: joined only when enough is there
        self.size = 0
        self.need = 1  # bytes to have before parsing again (a whole body, once its head is read)

    def connectionMade(self):
        # GuardedRoot's check and 401 (web/auth.py), or None
        self.authorized = getattr(self.site.resource, "authorized", None)
        self.unauthorized = getattr(self.site.resource, "unauthorized", None)
        if self.site.timeOut:
            self.idle = self.site.reactor.callLater(self.site.timeOut, self._idle_out)

    def dataReceived(self, data):
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self.chunks.append(data)
        self.size += len(data)
        if self.current is None:
            if self.size >= self.need:
                self._serve()
        elif self.size > MAX_HEAD + self.site.max_body and not self.paused:
            self.paused = True  # pipelined requests piling up: let TCP hold them
            self.transport.pauseProducing()

    def connectionLost(self, reason=protocol.connectionDone):
        if self.inner is not None:
            self.inner.connectionLost(reason)
            return
        self.closing = True
        if self.idle is not None and self.idle.active():
            self.idle.cancel()
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()  # the client went away: stop its job

    # -- requests -------------------------------------------------------------
    def _serve(self) -> None:
        """Answer the buffered requests in order, as long as each is lean
        and answered at once; stop at one that waits or is handed over."""
        if self._serving:
            return  # an answer sent from inside the loop below
        self._serving = True
        try:
            while self.current is None and self.inner is None and not self.closing:
                buffer = self._joined()
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if self.size > MAX_HEAD:
                        self._hand_over()
                    self.need = self.size + 1
                    return
                head = parse_head(buffer[:end])
                route = self.site.lean_routes.get(first_segment(head.path)) if head is not None else None
                if route is None:
                    self._hand_over()
                    return
                if head.length > self.site.max_body:
                    self._too_large(head)
                    return
                total = end + 4 + head.length
                if self.size < total:
                    self.need = total
                    return
                body, rest = buffer[end + 4 : total], buffer[total:]
                self.chunks, self.size, self.need = [rest] if rest else [], len(rest), 1
                self._start(route, head, body)
        finally:
            self._serving = False

    def _start(self, route: Route, head: Head, body: bytes) -> None:
        self.current = head
        fields = form_fields(head, body)
        if fields is None:
            self._send(head, BAD_FORM)
            return
        if self.authorized is not None:
            d = self.authorized(head.headers.get(b"authorization"))
            outcome = []
            d.addCallback(outcome.append)
            if not outcome:  # a checker that answers later
                self.pending = d
                d.addCallback(lambda _: self._checked(outcome[0], route, head, fields))
                d.addErrback(self._answered, head, None)
                return
            if not outcome[0]:
                self._send(head, self.unauthorized)
                return
        self._run(route, head, fields)

    def _checked(self, allowed: bool, route: Route, head: Head, fields: dict) -> None:
        self.pending = None
        if self.closing:
            return
        if allowed:
            self._run(route, head, fields)
        else:
            self._send(head, self.unauthorized)

    def _run(self, route: Route, head: Head, fields: dict) -> None:
        lease = None
        if route.policy is not None:
            client = client_of(self.addr)
            if not route.policy.acquire(client):
                retry = ((b"Retry-After", b"%d" % route.retry_after),)
                self._send(head, text_answer(429, too_many(client, route.policy.limit), retry))
                return
            lease = Lease(route.policy, client)
        answer = route.handler.answer(fields, head.method)
        if isinstance(answer, Answer):
            if lease is not None:
                lease.release()
            self._send(head, answer)
            return
        self.pending = answer
        answer.addBoth(self._answered, head, lease)

    def _answered(self, answer, head: Head, lease) -> None:
        """The handler's answer (None: cancelled) or its failure."""
        if lease is not None:
            lease.release()
        self.pending = None
        if isinstance(answer, failure.Failure):
            if answer.check(defer.CancelledError):
                return
            self.log.failure("lean channel: answering a request failed", answer)
            if not self.closing:
                self._send(head, text_answer(500, "500 - internal server error\n"), persistent=False)
            return
        if answer is not None and not self.closing:
            self._send(head, answer)

    def _send(self, head: Head, answer: Answer, persistent: bool = True) -> None:
        persistent = persistent and head.persistent
        self.transport.write(response_bytes(answer, head.version, self.site.date(), persistent))
        if not answer.job:  # a job's log line stands for the request (web/site.py)
            self.site.log(LogEntry(self.addr, head, answer.code, len(answer.body)))
        self.current = None
        if not persistent:
            self.closing = True
            self.transport.loseConnection()
            return
        flush_now(self.transport)
        if self.idle is not None:
            self.idle.reset(self.site.timeOut)
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()
        if self.size:
            self._serve()

    def _too_large(self, head: Head) -> None:
        """As BoundedRequest's 413: answered, the connection closed (the
        body is not read)."""
        self.current = head
        size, cap = head.length, self.site.max_body
        self._send(head, text_answer(413, f"413 - request body too large ({size} bytes, at most {cap})\n"), False)

    def _joined(self) -> bytes:
        """What was received and not taken, as one string (joined once)."""
        if len(self.chunks) != 1:
            self.chunks = [b"".join(self.chunks)]
        return self.chunks[0]

    # -- the rest -------------------------------------------------------------
    def _hand_over(self) -> None:
        """twisted.web's channel takes the connection, with what was read."""
        if self.idle is not None and self.idle.active():
            self.idle.cancel()
        self.inner = server.Site.buildProtocol(self.site, self.addr)
        self.inner.makeConnection(self.transport)
        data = self._joined()
        self.chunks, self.size = [], 0
        if data:
            self.inner.dataReceived(data)

    def _idle_out(self) -> None:
        if self.current is not None:
            self.idle = self.site.reactor.callLater(self.site.timeOut, self._idle_out)
            return
        self.idle = None
        self.transport.loseConnection()


class DateHeader:
    """The Date header's value, made once a second."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.second = -1
        self.value = b""

    def __call__(self) -> bytes:
        now = int(self.reactor.seconds())
        if now != self.second:
            self.second, self.value = now, datetimeToString(now)
        return self.value
