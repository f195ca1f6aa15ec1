"""``/maxima`` and ``/goemaxima``: goemaxima's HTTP API, which STACK's
server connection speaks.

Fields come from the query string or the body (urlencoded or multipart):
``input`` (Maxima text), ``timeout`` (milliseconds), ``ploturlbase`` (sets
``URL_BASE`` unless it is ``!ploturl!``), ``version`` (picks a library
version when several are configured) and ``health=1``.  Answers: 200 with
the output as text, or a zip with ``OUTPUT`` and the plot files; 416 with the
output so far on timeout; 400 for a bad timeout; 413 for an oversized input;
503 with Retry-After when no child is free in time.  Every text answer says
``text/plain``: STACK takes anything else for a zip.
"""

from __future__ import annotations

import io
import math
import socket
import zipfile

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from .. import __version__
from ..sandbox.result import JobResult, Status
from ..web.channel import flush_now
from ..web.lean import TEXT, Answer, text_answer
from .mother import maxima_string
from .pool import PoolBusy

# goemaxima's health check, word for word: it writes a file into
# maxima_tempdir and prints it back, so the fork, the job user's workspace
# and the pipes all work when the answer holds "healthcheck successful".
HEALTH_CHECK = b"""
\tf: concat(maxima_tempdir, "/test")$
\tstringout(f, concat("healthcheck ", "successful"))$
\tprintfile(f)$
"""
HEALTH_TIMEOUT = 1.0


def make_zip(output: bytes, files: list[tuple[str, bytes]]) -> bytes:
    """Output and plot files as one zip, as goemaxima answers with plots."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("OUTPUT", output)
        for name, data in files:
            z.writestr(name, data)
    return buffer.getvalue()


class MaximaHandler:
    """goemaxima's API without its framing: a request's fields to an
    evaluation in a version's pool, its result to an :class:`Answer`.
    Framed by :class:`MaximaResource` (twisted.web) and by the lean
    channel (web/channel.py)."""

    log = Logger()

    def __init__(self, pools: dict, config, reactor, metrics=None):
        """``pools``: version -> MaximaPool; the first is the default."""
        self.pools = pools
        self.default = next(iter(pools.values()))
        self.config = config
        self.reactor = reactor
        self.metrics = metrics
        self.hostname = socket.gethostname()

    def answer(self, fields: dict, method: bytes):
        """An Answer, or a Deferred of one (None if it was cancelled:
        cancelling stops the job)."""

        def field(name: bytes):
            values = fields.get(name)
            return values[0] if values else None

        text = field(b"input")
        health = field(b"health") == b"1"
        if text is None and not health and method in (b"GET", b"HEAD"):
            return text_answer(200, f"Hostname: {self.hostname}, version: mathrun {__version__}\n")
        if health:
            text, seconds = HEALTH_CHECK, HEALTH_TIMEOUT
        else:
            raw = field(b"timeout")
            if raw is None or not raw.isdigit():
                self._count("bad_request")
                self.log.warn("maxima: invalid timeout {raw!r}", raw=raw)
                return text_answer(400, "400 - bad request (invalid timeout)\n")
            ms = int(raw)
            if ms > self.config.max_timeout_ms:
                self.log.warn("maxima: timeout {ms} ms reduced to {cap} ms", ms=ms, cap=self.config.max_timeout_ms)
                ms = self.config.max_timeout_ms
            seconds = ms / 1000
            text = text or b""
            if len(text) > self.config.max_input_bytes:
                self._count("too_large")
                size, cap = len(text), self.config.max_input_bytes
                return text_answer(413, f"413 - input too large ({size} bytes, at most {cap})\n")
            if not text.endswith(b"\n"):
                text += b"\n"
        # As goemaxima (the health check included): a missing ploturlbase
        # counts as an empty one, so URL_BASE: ""$ runs first (and takes a label).
        ploturl = field(b"ploturlbase") or b""
        if ploturl != b"!ploturl!":
            text = b"URL_BASE: " + maxima_string(ploturl) + b"$\n" + text
        version = field(b"version")
        pool = self.pools.get(version.decode(errors="replace"), self.default) if version else self.default
        d = pool.evaluate(text, seconds)
        if not isinstance(d, defer.Deferred):
            d = defer.ensureDeferred(d)  # a coroutine's (the tests' fake pools)
        d.addCallbacks(self._result, self._failed, (health, self.reactor.seconds()))
        return d

    def _result(self, result: JobResult, health: bool, started: float) -> Answer | None:
        if result.status is Status.CANCELLED:
            return None
        if self.metrics:
            self.metrics.response.observe(self.reactor.seconds() - started)
        output = result.stdout
        if health:
            ok = result.ok and b"healthcheck successful" in output
            self._count("success" if ok else "error")
            body = output if ok else f"500 - health check failed ({result.describe()})\n".encode() + output
            return Answer(200 if ok else 500, TEXT, body, job=True)
        if result.ok:
            self._count("success")
            if result.files:
                return Answer(200, b"application/zip", make_zip(output, result.files), job=True)
            return Answer(200, TEXT, output, job=True)
        if result.status is Status.TIME_LIMIT:
            self._count("timeout")
            return Answer(416, TEXT, output or b"416 - timeout\n", job=True)
        self._count("error")
        self.log.warn("maxima: job ended with {status}", status=result.describe())
        return Answer(500, TEXT, f"500 - internal server error ({result.describe()})\n".encode(), job=True)

    def _failed(self, failure) -> Answer | None:
        if failure.check(defer.CancelledError):
            return None
        if failure.check(PoolBusy):
            self._count("busy")
            retry = ((b"Retry-After", str(math.ceil(self.config.queue_wait)).encode()),)
            return text_answer(503, f"503 - service unavailable ({failure.value})\n", retry)
        self._count("error")
        self.log.failure("maxima: request failed", failure)
        return text_answer(500, "500 - internal server error\n")

    def _count(self, result: str) -> None:
        if self.metrics:
            self.metrics.response_counts[result].inc()


class MaximaResource(resource.Resource):
    """The handler at /maxima and /goemaxima through twisted.web: the
    requests the lean channel leaves to it (chunked bodies, Expect, HEAD,
    TLS without the lean channel...)."""

    isLeaf = True

    def __init__(self, pools: dict, config, reactor, metrics=None):
        super().__init__()
        self.handler = MaximaHandler(pools, config, reactor, metrics)

    def render(self, request):
        answer = self.handler.answer(request.args, request.method)
        if isinstance(answer, Answer):
            return self._headers(request, answer)
        request.notifyFinish().addErrback(self._gone, request, answer)
        answer.addCallback(self._finish, request)
        return server.NOT_DONE_YET

    @staticmethod
    def _gone(failure, request, d) -> None:
        """The client went away: stop its job."""
        request.mathrun_gone = True
        d.cancel()

    @staticmethod
    def _headers(request, answer: Answer) -> bytes:
        request.setResponseCode(answer.code)
        request.setHeader(b"Content-Type", answer.content_type)
        for name, value in answer.headers:
            request.setHeader(name, value)
        if answer.job:
            request.access_logged = False  # the job's log line stands for it (web/site.py)
        return answer.body

    def _finish(self, answer: Answer | None, request) -> None:
        if answer is None or getattr(request, "mathrun_gone", False):
            return
        body = self._headers(request, answer)
        request.setHeader(b"Content-Length", str(len(body)).encode())
        request.write(body)
        request.finish()
        send_now(request)


def send_now(request) -> None:
    """The answer sent in this turn of the reactor (web/channel.py)."""
    flush_now(getattr(getattr(request, "channel", None), "transport", None))
