"""The HTTP site on a real port: /health, /health?deep=1, /metrics, /."""

from __future__ import annotations

import json

import treq
from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.trial import unittest

from mathrun.metrics import SandboxMetrics
from mathrun.web.site import build_site

from .helpers import async_test, make_sandbox, within


class SiteTests(unittest.TestCase):
    def setUp(self):
        self.sandbox = make_sandbox(self, jobs=2)
        registry = CollectorRegistry()
        SandboxMetrics(registry, self.sandbox)
        port = reactor.listenTCP(0, build_site(self.sandbox, registry), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"

    async def get(self, path):
        response = await within(treq.get(self.url + path, persistent=False))
        return response.code, response.headers, await within(treq.content(response))

    @async_test
    async def test_health(self):
        code, headers, body = await self.get("/health")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        state = json.loads(body)
        self.assertEqual((state["status"], state["job_users"]), ("ok", {"busy": 0, "free": 2, "waiting": 0}))

    @async_test
    async def test_deep_health_runs_a_job_and_metrics_count_it(self):
        code, _, body = await self.get("/health?deep=1")
        self.assertEqual((code, json.loads(body)["probe"]), (200, "ok"))
        code, _, body = await self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b'mathrun_jobs_total{status="ok"} 1.0', body)
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
