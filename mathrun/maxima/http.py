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

from twisted.internet import defer, tcp
from twisted.logger import Logger
from twisted.web import resource, server

from .. import __version__
from ..sandbox.result import JobResult, Status
from .mother import maxima_string
from .pool import PoolBusy

TEXT = b"text/plain;charset=UTF-8"
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


class MaximaResource(resource.Resource):
    """goemaxima's HTTP API at /maxima and /goemaxima: fields to an evaluation
    in a version's pool, its result to a status and body."""

    isLeaf = True
    log = Logger()

    def __init__(self, pools: dict, config, reactor, metrics=None):
        """``pools``: version -> MaximaPool; the first is the default."""
        super().__init__()
        self.pools = pools
        self.default = next(iter(pools.values()))
        self.config = config
        self.reactor = reactor
        self.metrics = metrics
        self.hostname = socket.gethostname()

    def render(self, request):
        def field(name: bytes):
            values = request.args.get(name)
            return values[0] if values else None

        text = field(b"input")
        health = field(b"health") == b"1"
        if text is None and not health and request.method in (b"GET", b"HEAD"):
            return self._text(request, 200, f"Hostname: {self.hostname}, version: mathrun {__version__}\n")
        if health:
            text, seconds = HEALTH_CHECK, HEALTH_TIMEOUT
        else:
            raw = field(b"timeout")
            if raw is None or not raw.isdigit():
                self._count("bad_request")
                self.log.warn("maxima: invalid timeout {raw!r}", raw=raw)
                return self._text(request, 400, "400 - bad request (invalid timeout)\n")
            ms = int(raw)
            if ms > self.config.max_timeout_ms:
                self.log.warn("maxima: timeout {ms} ms reduced to {cap} ms", ms=ms, cap=self.config.max_timeout_ms)
                ms = self.config.max_timeout_ms
            seconds = ms / 1000
            text = text or b""
            if len(text) > self.config.max_input_bytes:
                self._count("too_large")
                return self._text(
                    request,
                    413,
                    f"413 - input too large ({len(text)} bytes, at most {self.config.max_input_bytes})\n",
                )
            # As goemaxima: a missing ploturlbase counts as an empty one
            # (URL_BASE: ""$ runs first, and takes a label).
            if not text.endswith(b"\n"):
                text += b"\n"
        # As goemaxima (the health check included): a missing ploturlbase
        # counts as an empty one, so URL_BASE: ""$ runs first (and takes a label).
        ploturl = field(b"ploturlbase") or b""
        if ploturl != b"!ploturl!":
            text = b"URL_BASE: " + maxima_string(ploturl) + b"$\n" + text
        version = field(b"version")
        pool = self.pools.get(version.decode(errors="replace"), self.default) if version else self.default
        started = self.reactor.seconds()
        d = defer.ensureDeferred(pool.evaluate(text, seconds))  # (a Deferred passes as it is)
        request.notifyFinish().addErrback(self._gone, request, d)
        d.addCallback(self._answer, request, health, started)
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    @staticmethod
    def _gone(failure, request, d) -> None:
        """The client went away: stop its job."""
        request.mathrun_gone = True
        d.cancel()

    def _answer(self, result: JobResult, request, health: bool, started: float) -> None:
        if getattr(request, "mathrun_gone", False) or result.status is Status.CANCELLED:
            return
        if self.metrics:
            self.metrics.response.observe(self.reactor.seconds() - started)
        request.access_logged = False  # the job's log line stands for it (web/site.py)
        output = result.stdout
        if health:
            ok = result.ok and b"healthcheck successful" in output
            self._count("success" if ok else "error")
            body = output if ok else f"500 - health check failed ({result.describe()})\n".encode() + output
            self._finish(request, 200 if ok else 500, TEXT, body)
        elif result.ok:
            self._count("success")
            if result.files:
                self._finish(request, 200, b"application/zip", make_zip(output, result.files))
            else:
                self._finish(request, 200, TEXT, output)
        elif result.status is Status.TIME_LIMIT:
            self._count("timeout")
            self._finish(request, 416, TEXT, output or b"416 - timeout\n")
        else:
            self._count("error")
            self.log.warn("maxima: job ended with {status}", status=result.describe())
            self._finish(request, 500, TEXT, f"500 - internal server error ({result.describe()})\n".encode())

    def _failed(self, failure, request) -> None:
        if failure.check(defer.CancelledError) or getattr(request, "mathrun_gone", False):
            return
        if failure.check(PoolBusy):
            self._count("busy")
            request.setHeader(b"Retry-After", str(math.ceil(self.config.queue_wait)).encode())
            self._finish(request, 503, TEXT, f"503 - service unavailable ({failure.value})\n".encode())
            return
        self._count("error")
        self.log.failure("maxima: request failed", failure)
        self._finish(request, 500, TEXT, b"500 - internal server error\n")

    def _count(self, result: str) -> None:
        if self.metrics:
            self.metrics.responses.labels(result).inc()

    @staticmethod
    def _text(request, code: int, body: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", TEXT)
        return body.encode()

    @staticmethod
    def _finish(request, code: int, content_type: bytes, body: bytes) -> None:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Content-Length", str(len(body)).encode())
        request.write(body)
        request.finish()
        send_now(request)


def send_now(request) -> None:
    """Send the answer in this turn of the reactor, not the next: the
    child's cleanup (which the pool schedules after the answer) and the
    next poll then come after it.  Only on a plain TCP connection that
    stays open; anything else (TLS, closing) is left to the reactor, and
    so is an error, which the next write attempt reports again."""
    transport = getattr(getattr(request, "channel", None), "transport", None)
    if isinstance(transport, tcp.Connection) and transport.connected:
        if not (transport.disconnecting or transport._writeDisconnecting):
            transport.doWrite()
