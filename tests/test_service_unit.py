"""docs/examples/mathrun.service: systemd accepts it, and the sandbox works
with no more than the capabilities it grants."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from twisted.trial import unittest

from .helpers import ROOT, server_args, stop_process
from .test_twistd import PROJECT, free_port

UNIT = os.path.join(PROJECT, "docs", "examples", "mathrun.service")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def unit_values(key: str) -> list[str]:
    with open(UNIT) as f:
        return [line.split("=", 1)[1].strip() for line in f if line.startswith(key + "=")]


class UnitFileTests(unittest.TestCase):
    def setUp(self):
        if shutil.which("systemd-analyze") is None:
            raise unittest.SkipTest("systemd-analyze is not installed (Debian's systemd package)")
        self.dir = tempfile.mkdtemp(prefix="mathrun-unit-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def verify(self, text: str) -> str:
        """systemd-analyze verify's complaints (it exits 0 on unknown keys and
        bad values: it only warns)."""
        path = os.path.join(self.dir, "mathrun.service")
        with open(path, "w") as f:
            f.write(text)
        done = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", path], capture_output=True, text=True, timeout=60
        )
        return (done.stdout + done.stderr).strip() + ("" if done.returncode == 0 else f"\nexit {done.returncode}")

    def test_verify_accepts_the_example(self):
        with open(UNIT) as f:
            text = f.read()
        # The example's ExecStart must exist on the host that verifies it.
        (exec_start,) = unit_values("ExecStart")
        text = text.replace(exec_start.split()[0], TWISTD)
        self.assertEqual(self.verify(text), "")

    def test_verify_complains_of_a_broken_unit(self):
        """The check above can fail: a misspelt key and a bad value are reported."""
        with open(UNIT) as f:
            text = f.read().replace("ProtectSystem=strict", "ProtectSystem=strictest\nProtectSytem=yes")
        (exec_start,) = unit_values("ExecStart")
        complaints = self.verify(text.replace(exec_start.split()[0], TWISTD))
        self.assertIn("ProtectSytem", complaints)
        self.assertIn("strictest", complaints)


class CapabilityTests(unittest.TestCase):
    """A server started as root with the unit's capability bounding set and
    no_new_privs, as systemd would start it."""

    def setUp(self):
        if not ROOT or shutil.which("setpriv") is None:
            raise unittest.SkipTest("needs root and setpriv (util-linux)")
        self.dir = tempfile.mkdtemp(prefix="mathrun-caps-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.port = free_port()

    def start(self, caps: list[str]) -> subprocess.Popen:
        bounding = ",".join(["-all"] + ["+" + c.lower().removeprefix("cap_") for c in caps])
        argv = ["setpriv", "--no-new-privs", "--bounding-set", bounding, "--inh-caps", "-all", "--"]
        argv += [TWISTD, "-n", "--pidfile=", "mathrun", "--http", f"tcp:{self.port}:interface=127.0.0.1"]
        argv += ["--jobs", "3", "--no-why3", "--asy-local", "1", "--maxima-ready", "1"] + server_args()
        log = open(os.path.join(self.dir, "twistd.log"), "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen(argv, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(stop_process, proc)  # SIGTERM: it unmounts what it mounted
        return proc

    def log(self) -> str:
        with open(os.path.join(self.dir, "twistd.log"), errors="replace") as f:
            return f.read()

    def get(self, path: str, body: bytes | None = None) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", body, timeout=30) as r:
            return r.read()

    def wait_healthy(self, proc):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                return self.get("/health")
            except OSError:
                time.sleep(0.2)
        self.fail("no /health: " + self.log())

    def test_jobs_run_with_the_units_capabilities(self):
        (line,) = unit_values("CapabilityBoundingSet")
        proc = self.start(line.split())
        self.wait_healthy(proc)
        self.assertIn(b'"probe": "ok"', self.get("/health?deep=1"))
        body = urllib.parse.urlencode({"input": "integrate(x^2,x);", "timeout": "10000"}).encode()
        self.assertEqual(self.get("/maxima", body).split()[2:7], [b"3", b"x", b"(%o2)", b"--", b"3"])
        with open(os.path.join(self.dir, "pic.asy"), "w") as f:
            f.write("draw(unitcircle);")
        client = [
            os.path.join(os.path.dirname(sys.executable), "mathrun"),
            "asy",
            "--url",
            f"http://127.0.0.1:{self.port}",
        ]
        subprocess.run(client + ["-q", "pic.asy"], cwd=self.dir, check=True, timeout=60)
        with open(os.path.join(self.dir, "pic.svg"), "rb") as f:
            self.assertIn(b"<svg", f.read())
        with open(f"/proc/{proc.pid}/status") as f:
            status = dict(line.split(":\t", 1) for line in f if ":\t" in line)
        # The server really ran bounded: no capability beyond the unit's.
        self.assertEqual(status["NoNewPrivs"].strip(), "1")
        self.assertEqual(int(status["CapBnd"], 16), int(status["CapEff"], 16))
        self.assertLess(int(status["CapBnd"], 16).bit_count(), 12)
        proc.terminate()
        proc.wait(timeout=30)
        self.assertIn("maxima mother default ready", self.log())

    def test_without_sys_admin_jobs_fail(self):
        """The bound is real: with less than the unit grants, the server
        starts but no job runs (its workspace cannot be mounted)."""
        (line,) = unit_values("CapabilityBoundingSet")
        proc = self.start([c for c in line.split() if c != "CAP_SYS_ADMIN"])
        self.wait_healthy(proc)
        with self.assertRaises(urllib.error.HTTPError) as caught:
            self.get("/health?deep=1")
        self.assertEqual(caught.exception.code, 503)
        answer = json.loads(caught.exception.read())
        self.assertEqual(answer["status"], "failing")
        self.assertIn("mount tmpfs", answer["error"])
        self.assertIn("Operation not permitted", answer["error"])
