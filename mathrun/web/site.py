"""The root of the HTTP site: /health, /metrics, and the front ends' paths."""

from __future__ import annotations

import json

from prometheus_client.twisted import MetricsResource
from twisted.internet import defer
from twisted.web import pages, resource, server


class HealthResource(resource.Resource):
    """``/health``: the server answers and the sandbox has its users.

    ``/health?deep=1`` also runs ``/bin/true`` in the sandbox, so that a
    monitor sees a broken jail or exhausted job users.
    """

    isLeaf = True

    def __init__(self, sandbox):
        super().__init__()
        self.sandbox = sandbox

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if request.args.get(b"deep") == [b"1"]:
            d = defer.ensureDeferred(self._deep())
            d.addCallback(lambda body: self._finish(request, *body))
            d.addErrback(lambda f: self._finish(request, 503, {"status": "failing", "error": str(f.value)}))
            return server.NOT_DONE_YET
        status, body = self._state()
        request.setResponseCode(status)
        return json.dumps(body).encode() + b"\n"

    def _state(self):
        pool = self.sandbox.pool
        body = {
            "status": "ok" if pool is not None else "starting",
            "job_users": {"busy": pool.busy, "free": pool.free, "waiting": pool.waiting} if pool else None,
            "privileged": self.sandbox.privileged,
            "warnings": self.sandbox.warnings,
        }
        return (200 if pool is not None else 503), body

    async def _deep(self):
        status, body = self._state()
        result = await self.sandbox.run(["/bin/true"])
        body["probe"] = result.describe()
        if not result.ok:
            status, body["status"] = 503, "failing"
        return status, body

    @staticmethod
    def _finish(request, status, body):
        if request.finished or request._disconnected:
            return
        request.setResponseCode(status)
        request.write(json.dumps(body).encode() + b"\n")
        request.finish()


class Root(resource.Resource):
    """``/``: says what is served here."""

    def getChild(self, path, request):
        if path == b"":
            return self
        return pages.notFound()

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        paths = sorted(p.decode() for p in self.children)
        return ("mathrun: " + " ".join("/" + p for p in paths) + "\n").encode()


def build_site(sandbox, registry, front_ends=()) -> server.Site:
    """The site: health, metrics, plus ``(path, resource)`` of each front end."""
    root = Root()
    root.putChild(b"health", HealthResource(sandbox))
    root.putChild(b"metrics", MetricsResource(registry=registry))
    for path, child in front_ends:
        root.putChild(path.encode(), child)
    site = server.Site(root)
    site.displayTracebacks = False
    return site
