"""The front ends' metrics and /health entries, on a real ``twistd mathrun``
with all three front ends: a Maxima request, an Asymptote run and a Why3
prover each show in the counters; a front end that cannot serve turns
/health not-ok."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request

from .asyclient import connect, messages
from .helpers import async_test, within
from .test_twistd import TwistdServer, free_port
from .test_why3_server import Client


def sample(metrics: str, name: str, **labels) -> float:
    """The value of one sample of the Prometheus text."""
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(name + (f"{{{label_text}}}" if labels else "")) + r" (\S+)$"
    match = re.search(pattern, metrics, re.MULTILINE)
    if match is None:
        raise AssertionError(f"no sample {name} {labels}")
    return float(match.group(1))


class FrontEndHealthTests(TwistdServer):
    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    async def one_asy_run(self):
        factory = connect(f"ws://127.0.0.1:{self.port}/asy")
        client = await within(factory.opened)
        client.add("main.asy", b"draw(unitcircle);", main=True, hashed=True)
        client.send("run")
        return messages(await within(factory.closed), "complete")[0][1]

    @async_test(timeout=240)
    async def test_every_front_end_counts_its_jobs_and_reports(self):
        sock = os.path.join(self.dir, "why3.sock")
        args = [a for a in self.common() if a not in ("--no-why3", "--no-maxima")]
        proc = self.start(
            "mathrun", *args, "--why3-socket", sock, "--jobs", "4", "--maxima-ready", "1", "--asy-local", "2"
        )
        body = urllib.parse.urlencode({"input": "1+1;", "timeout": "10000"}).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/maxima", body, timeout=60) as r:
            self.assertEqual(r.status, 200)
        self.assertTrue((await self.one_asy_run())["success"])
        c = Client(sock)
        c.send("run;1;5;0;/bin/true")
        self.assertTrue(c.read(2)[-1].startswith("F;1;0;"))
        c.close()

        code, health = self.get("/health")
        state = json.loads(health)
        self.assertEqual((code, state["status"]), (200, "ok"), state)
        self.assertEqual(state["maxima"]["default"]["mother"], "ready")
        self.assertEqual((state["asy"]["backends_up"], state["asy"]["queue_length"]), (2, 0))
        self.assertEqual((state["why3"]["queue_length"], state["why3"]["tasks"]["done"]), (0, 1))
        self.assertEqual(state["job_users"]["quarantined"], 0)

        _, text = self.get("/metrics")
        metrics = text.decode()
        for frontend in ("maxima", "asy", "why3"):
            self.assertEqual(sample(metrics, "mathrun_jobs_total", frontend=frontend, status="ok"), 1, frontend)
            self.assertEqual(sample(metrics, "mathrun_job_wall_seconds_count", frontend=frontend), 1, frontend)
        self.assertEqual(sample(metrics, "mathrun_why3_tasks_total", status="done"), 1)
        self.assertEqual(sample(metrics, "mathrun_why3_queue_length"), 0)
        self.assertEqual(sample(metrics, "mathrun_asy_queue_length"), 0)
        self.assertEqual(sample(metrics, "mathrun_asy_backends_up"), 2)
        self.assertEqual(sample(metrics, "mathrun_job_users", state="quarantined"), 0)
        self.assertEqual(sample(metrics, "mathrun_maxima_responses_total", result="success"), 1)
        self.stop(proc)

    @async_test(timeout=120)
    async def test_asy_without_a_back_end_in_rotation_is_not_ok(self):
        dead = f"ws://127.0.0.1:{free_port()}/"  # nobody listens there
        proc = self.start("mathrun", *self.common(), "--asy-backends", dead)
        complete = await self.one_asy_run()
        self.assertFalse(complete["success"])
        self.assertIn("Back end failed", complete["error"])
        code, health = self.get("/health")
        state = json.loads(health)
        self.assertEqual((code, state["status"], state["asy"]["backends_up"]), (503, "failing", 0), state)
        self.assertIn("no Asymptote back end", state["asy"]["failing"])
        _, text = self.get("/metrics")
        self.assertEqual(sample(text.decode(), "mathrun_asy_backends_up"), 0)
        self.stop(proc)
