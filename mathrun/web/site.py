"""The root of the HTTP site: /health, /metrics, the front ends' paths, and
the page (``/``, its files under ``/static/``; see docs/web.md)."""

from __future__ import annotations

import email.parser
import json
import os

from prometheus_client.twisted import MetricsResource
from twisted.internet import defer
from twisted.web import http, pages, resource, server, static

from .. import paths
from .channel import DateHeader, LeanChannel, Route
from .lean import parse_form
from .perclient import PerClientResource

FORM = b"application/x-www-form-urlencoded"
MULTIPART = b"multipart/form-data"


class HealthResource(resource.Resource):
    """``/health``: the server answers and the sandbox has its users.

    ``/health?deep=1`` also runs ``/bin/true`` in the sandbox, so that a
    monitor sees a broken jail or exhausted job users.
    """

    isLeaf = True

    def __init__(self, sandbox, reports=None):
        super().__init__()
        self.sandbox = sandbox
        self.reports = reports or {}  # name -> callable giving a front end's state

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if request.args.get(b"deep") == [b"1"]:
            gone = []  # the client left before the probe ended
            request.notifyFinish().addErrback(gone.append)
            d = defer.ensureDeferred(self._deep())
            d.addCallback(lambda body: self._finish(request, gone, *body))
            d.addErrback(lambda f: self._finish(request, gone, 503, {"status": "failing", "error": str(f.value)}))
            return server.NOT_DONE_YET
        status, body = self._state()
        request.setResponseCode(status)
        return json.dumps(body).encode() + b"\n"

    def _state(self):
        pool = self.sandbox.pool
        refusal = self.sandbox.refusal
        body = {
            "status": "refusing jobs" if refusal else "ok" if pool is not None else "starting",
            "job_users": {
                "busy": pool.busy,
                "free": pool.free,
                "waiting": pool.waiting,
                "quarantined": pool.quarantined,
            }
            if pool
            else None,
            "privileged": self.sandbox.privileged,
            "warnings": self.sandbox.warnings,
        }
        if refusal:
            body["error"] = refusal
        failing = bool(refusal)
        for name, report in self.reports.items():
            body[name] = report()
            failing = failing or bool(body[name].get("failing"))
        if failing and not refusal:
            body["status"] = "failing"  # a front end cannot serve
        return (200 if pool is not None and not failing else 503), body

    async def _deep(self):
        status, body = self._state()
        result = await self.sandbox.run(["/bin/true"])
        body["probe"] = result.describe()
        if not result.ok:
            status, body["status"] = 503, "failing"
        return status, body

    @staticmethod
    def _finish(request, gone, status, body):
        if request.finished or gone:
            return
        request.setResponseCode(status)
        request.write(json.dumps(body).encode() + b"\n")
        request.finish()


class BoundedRequest(server.Request):
    """A request whose body may not exceed ``max_body`` bytes: refused with
    413 as soon as its length (or the data so far) says so.  Twisted would
    otherwise take any body, spooling it into a temporary file first.

    The site leaves form bodies unparsed (``parsePOSTFormSubmission=False``):
    ``process`` parses them, reading the Content-Type without the email
    package Twisted uses (a third of a millisecond per request)."""

    max_body = 4 << 20
    _refused = False
    _received = 0

    def gotLength(self, length):
        if length is not None and length > self.max_body:
            self._refuse(length)
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse(self._received)
            return
        super().handleContentChunk(data)

    def process(self):
        if self._refused:
            return  # answered already
        if self.method == b"POST" and not self._parse_form():
            self.setResponseCode(http.BAD_REQUEST)
            self.setHeader(b"Content-Type", b"text/plain;charset=UTF-8")
            self.write(b"400 - bad form body\n")
            self.finish()
            return
        super().process()

    def _parse_form(self) -> bool:
        """The body's fields into ``args``, as Twisted would parse them;
        False for a multipart body that is not one."""
        ctype = self.requestHeaders.getRawHeaders(b"content-type", [b""])[0]
        kind = ctype.split(b";", 1)[0].strip().lower()
        body = self.content.read() if kind in (FORM, MULTIPART) else b""
        self.content.seek(0)
        if not body:
            return True  # as Twisted: an empty body has no fields
        if kind == FORM:
            self.args.update(parse_form(body))
            return True
        fields = multipart_fields(ctype, body)
        if fields is not None:
            self.args.update(fields)
        return fields is not None

    def _refuse(self, size: int) -> None:
        """The 413, through the request's own response methods; the channel
        closes after it (the rest of the body is not read)."""
        self._refused = True
        self.clientproto = b"HTTP/1.1"  # not parsed yet: what the answer says it speaks
        self.channel.persistent = False
        self.setResponseCode(http.REQUEST_ENTITY_TOO_LARGE)
        body = f"413 - request body too large ({size} bytes, at most {self.max_body})\n".encode()
        self.setHeader(b"Content-Type", b"text/plain;charset=UTF-8")
        self.setHeader(b"Connection", b"close")
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        # Not finish(): the channel would drop the request while the rest of
        # a chunked body already read is still being decoded into it.
        self.channel.loseConnection()


# The page talks to its own server only; asy's SVG is put inline (scripts
# removed), a PDF shown from a blob: URL, CodeMirror adds style elements.
PAGE_POLICY = (
    b"default-src 'self'; connect-src 'self' blob:; img-src 'self' blob: data:; object-src 'self' blob:; "
    b"frame-src 'self' blob:; style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)


def default_static_dir() -> str:
    """The checkout's ``web/static`` (the bundle made there by the set-up
    step), or an installed wheel's copy of it (mathrun/paths.py)."""
    return os.path.join(paths.source_root(), "web", "static")


class StaticFiles(static.File):
    """The page's files: revalidated on each load (no hashed names), never a
    directory listing."""

    def directoryListing(self):
        return pages.notFound()

    def render_GET(self, request):
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return super().render_GET(request)


def multipart_fields(ctype: bytes, body: bytes) -> dict[bytes, list[bytes]] | None:
    """The fields of a multipart/form-data body, or None if it is not one."""
    head = b"MIME-Version: 1.0\r\nContent-Type: " + ctype + b"\r\n\r\n"
    message = email.parser.BytesParser().parsebytes(head + body)
    if not message.is_multipart():
        return None
    fields: dict[bytes, list[bytes]] = {}
    for part in message.get_payload():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields.setdefault(name.encode(), []).append(part.get_payload(decode=True) or b"")
    return fields


class Root(resource.Resource):
    """``/``: the page when there is one (``static_dir/index.html``), else a
    line saying what is served here."""

    def __init__(self, static_dir: str | None = None):
        super().__init__()
        self.index = os.path.join(static_dir, "index.html") if static_dir else None

    def getChild(self, path, request):
        if path == b"":
            return self
        return pages.notFound()

    def render_GET(self, request):
        if self.index is not None and os.path.isfile(self.index):
            with open(self.index, "rb") as f:
                page = f.read()
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            request.setHeader(b"Cache-Control", b"no-cache")
            request.setHeader(b"Content-Security-Policy", PAGE_POLICY)
            request.setHeader(b"X-Content-Type-Options", b"nosniff")
            return page
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        paths = sorted(p.decode() for p in self.children)
        return ("mathrun: " + " ".join("/" + p for p in paths) + "\n").encode()


class Site(server.Site):
    """A site where a front end may leave a request out of the access log
    (``request.access_logged = False``): the Maxima front end's job log
    line already says what each of its requests did, and a second line per
    request costs the reactor ~0.1 ms of formatting at hundreds a second.

    With ``lean_routes`` (first path segment -> channel.Route), each
    connection starts on the lean channel (web/channel.py), which answers
    those paths' plain requests itself and hands the rest to twisted.web."""

    lean_routes: dict = {}
    max_body = BoundedRequest.max_body

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.date = DateHeader(self.reactor)

    def buildProtocol(self, addr):
        if not self.lean_routes:
            return super().buildProtocol(addr)
        channel = LeanChannel(self, addr)
        channel.factory = self
        return channel

    def log(self, request):
        if getattr(request, "access_logged", True):
            super().log(request)


def lean_route(child) -> Route | None:
    """The lean channel's route to a front end's resource: its ``handler``
    (maxima/http.py), behind its per-client limit if it has one."""
    policy, retry_after = None, 1
    if isinstance(child, PerClientResource):
        policy, retry_after, child = child.policy, child.retry_after, child.inner
    handler = getattr(child, "handler", None)
    if handler is None or not hasattr(handler, "answer"):
        return None
    return Route(handler, policy, retry_after)


def build_site(
    sandbox,
    registry,
    front_ends=(),
    max_body: int = BoundedRequest.max_body,
    reports=None,
    static_dir=None,
    lean: bool = True,
) -> server.Site:
    """The site: health, metrics, plus ``(path, resource)`` of each front end;
    request bodies of at most ``max_body`` bytes; ``reports`` (name ->
    callable) add front ends' states to /health; the page from ``static_dir``;
    ``lean``: the front ends' plain requests on the lean channel."""
    root = Root(static_dir)
    if static_dir:
        root.putChild(b"static", StaticFiles(static_dir))
    root.putChild(b"health", HealthResource(sandbox, reports))
    root.putChild(b"metrics", MetricsResource(registry=registry))
    for path, child in front_ends:
        root.putChild(path.encode(), child)
    site = Site(root, parsePOSTFormSubmission=False)
    site.requestFactory = type("SiteRequest", (BoundedRequest,), {"max_body": max_body})
    site.max_body = max_body
    if lean:
        routes = ((path.encode(), lean_route(child)) for path, child in front_ends)
        site.lean_routes = {path: route for path, route in routes if route is not None}
    site.displayTracebacks = False
    return site
