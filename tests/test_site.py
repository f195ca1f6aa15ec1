"""The HTTP site on a real port: /health, /health?deep=1, /metrics, /."""

from __future__ import annotations

import json
import socket

import treq
from prometheus_client import CollectorRegistry
from twisted.internet import reactor, threads
from twisted.trial import unittest
from twisted.web import resource

from mathrun.metrics import SandboxMetrics
from mathrun.web.site import build_site

from .helpers import async_test, make_sandbox, within


class Echo(resource.Resource):
    """Answers with the request's fields, as the site parsed them."""

    isLeaf = True

    def render_POST(self, request):
        return json.dumps({k.decode(): [v.decode() for v in vs] for k, vs in sorted(request.args.items())}).encode()


class SiteClient:
    """A site on an ephemeral port of 127.0.0.1 and GETs to it."""

    def listen(self, site) -> None:
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"

    async def get(self, path):
        response = await within(treq.get(self.url + path, persistent=False))
        return response.code, response.headers, await within(treq.content(response))


class SiteTests(SiteClient, unittest.TestCase):
    def setUp(self):
        self.sandbox = make_sandbox(self, jobs=2)
        registry = CollectorRegistry()
        SandboxMetrics(registry, self.sandbox)
        site = build_site(self.sandbox, registry, [("echo", Echo())], max_body=1000)
        self.listen(site)

    @async_test
    async def test_health(self):
        code, headers, body = await self.get("/health")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        state = json.loads(body)
        self.assertEqual(
            (state["status"], state["job_users"]), ("ok", {"busy": 0, "free": 2, "waiting": 0, "quarantined": 0})
        )

    @async_test
    async def test_deep_health_runs_a_job_and_metrics_count_it(self):
        code, _, body = await self.get("/health?deep=1")
        self.assertEqual((code, json.loads(body)["probe"]), (200, "ok"))
        code, _, body = await self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b'mathrun_jobs_total{frontend="jobs",status="ok"} 1.0', body)
        self.assertIn(b'mathrun_job_users{state="free"} 2.0', body)
        self.assertIn(b"mathrun_job_wall_seconds_bucket", body)

    @async_test
    async def test_index_and_unknown(self):
        code, _, body = await self.get("/")
        self.assertEqual(code, 200)
        self.assertIn(b"/health", body)
        self.assertIn(b"/metrics", body)
        code, _, _ = await self.get("/nonexistent")
        self.assertEqual(code, 404)

    async def raw(self, head: bytes, body: bytes) -> bytes:
        """Send a request (the body possibly far shorter than announced) and
        read until the server closes."""
        port = int(self.url.rsplit(":", 1)[1])

        def talk():
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                s.sendall(head + body)
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
                return answer

        return await within(threads.deferToThread(talk))

    @async_test
    async def test_an_announced_oversized_body_is_refused_before_it_is_sent(self):
        answer = await self.raw(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n", b"x" * 10)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertIn(b"100000000 bytes, at most 1000", answer)

    @async_test
    async def test_an_oversized_chunked_body_is_refused(self):
        chunk = b"%x\r\n%s\r\n" % (600, b"y" * 600)
        answer = await self.raw(
            b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", chunk * 2 + b"0\r\n\r\n"
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)

    @async_test
    async def test_a_body_within_the_limit_is_served(self):
        answer = await self.raw(
            b"POST /nonexistent HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n",
            b"z" * 1000,
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 404 "), answer)

    @async_test
    async def test_form_bodies_are_parsed_as_twisted_would(self):
        response = await within(
            treq.post(self.url + "/echo?q=1", data={"input": "1+1;", "timeout": "10"}, persistent=False)
        )
        self.assertEqual(
            json.loads(await within(treq.content(response))), {"input": ["1+1;"], "q": ["1"], "timeout": ["10"]}
        )
        response = await within(
            treq.post(self.url + "/echo", files={"input": ("a.mac", b"x^2;")}, data={"t": "5"}, persistent=False)
        )
        self.assertEqual(json.loads(await within(treq.content(response))), {"input": ["x^2;"], "t": ["5"]})
        bad = b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: multipart/form-data\r\n"
        answer = await self.raw(bad + b"Content-Length: 5\r\n\r\n", b"hello")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)


class PageTests(SiteClient, unittest.TestCase):
    """The page: ``/`` serves ``index.html`` of the static directory (with its
    policy), ``/static/`` its files, never a listing; no page, the old line."""

    def setUp(self):
        import os

        from .helpers import temp_dir

        self.sandbox = make_sandbox(self, jobs=1)
        self.static = temp_dir(self, "mathrun-static-")
        with open(os.path.join(self.static, "index.html"), "w") as f:
            f.write("<!doctype html><title>t</title>")
        os.mkdir(os.path.join(self.static, "sub"))
        with open(os.path.join(self.static, "sub", "app.js"), "w") as f:
            f.write("console.log(1);")
        site = build_site(self.sandbox, CollectorRegistry(), static_dir=self.static)
        self.listen(site)

    @async_test
    async def test_index_and_static_files(self):
        code, headers, body = await self.get("/")
        self.assertEqual((code, body), (200, b"<!doctype html><title>t</title>"))
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        policy = headers.getRawHeaders("content-security-policy")[0]
        self.assertIn("default-src 'self'", policy)
        code, headers, body = await self.get("/static/sub/app.js")
        self.assertEqual((code, body), (200, b"console.log(1);"))
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/javascript"])
        self.assertEqual(headers.getRawHeaders("cache-control"), ["no-cache"])
        code, _, body = await self.get("/static/sub/")
        self.assertEqual(code, 404)
        self.assertNotIn(b"app.js", body)  # no listing
        code, _, _ = await self.get("/static/../health")
        self.assertNotEqual(code, 500)
        code, _, _ = await self.get("/static/missing.js")
        self.assertEqual(code, 404)

    @async_test
    async def test_no_page_built_gives_the_line(self):
        import os

        os.unlink(os.path.join(self.static, "index.html"))
        code, headers, body = await self.get("/")
        self.assertEqual(code, 200)
        self.assertTrue(body.startswith(b"mathrun: "), body)
        self.assertIn(b"/static", body)
