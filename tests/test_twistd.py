"""``twistd mathrun`` and the .tac example, as real server processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from twisted.trial import unittest

from .helpers import ROOT

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwistdTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="mathrun-twistd-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.port = free_port()

    def start(self, *args) -> subprocess.Popen:
        log = open(os.path.join(self.dir, "twistd.log"), "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", *args], cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    self.assertEqual(json.load(r)["status"], "ok")
                    return proc
            except OSError:
                self.assertIsNone(proc.poll(), self.log())
                time.sleep(0.1)
        self.fail("server did not answer: " + self.log())

    def log(self) -> str:
        with open(os.path.join(self.dir, "twistd.log"), errors="replace") as f:
            return f.read()

    def stop(self, proc):
        proc.send_signal(signal.SIGTERM)
        # twistd shuts down, then re-raises the signal for its parent to see.
        self.assertEqual(proc.wait(timeout=30), -signal.SIGTERM)
        self.assertIn("Server Shut Down", self.log())

    def common(self):
        args = ["--http", f"tcp:{self.port}:interface=127.0.0.1", "--jobs", "2", "--no-why3"]
        if not ROOT:
            args += ["--job-root", os.path.join(self.dir, "jobs")]
        return args

    def test_help_documents_every_option(self):
        out = subprocess.run([TWISTD, "mathrun", "--help"], capture_output=True, text=True, check=True).stdout
        from mathrun.options import Options

        for name in [f[0] for f in Options.optFlags] + [p[0] for p in Options.optParameters]:
            self.assertIn(f"--{name}", out)

    def test_serves_and_stops_cleanly(self):
        proc = self.start("mathrun", *self.common())
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health?deep=1", timeout=30) as r:
            self.assertEqual(json.load(r)["probe"], "ok")
        self.stop(proc)
        self.assertIn("job mathrun-" if ROOT else "job self-", self.log())

    def test_why3_socket_runs_provers_as_job_users(self):
        from .test_why3_server import Client

        sock = os.path.join(self.dir, "why3.sock")
        args = [a for a in self.common() if a != "--no-why3"]
        proc = self.start("mathrun", *args, "--why3-socket", sock)
        secret = os.path.join(self.dir, "goal.smt2")
        with open(secret, "w") as f:
            f.write("(check-sat)\n")
        os.chmod(secret, 0o600)
        c = Client(sock)
        c.send(f"run;1;5;0;/bin/cat;{secret}", "run;2;5;0;/usr/bin/id;-un")
        lines = c.read(4)
        c.close()
        finals = {line.split(";")[1]: line.split(";") for line in lines if line.startswith("F;")}
        outputs = {}
        for id, fields in finals.items():
            self.assertEqual(fields[2], "0", fields)
            with open(fields[5]) as f:
                outputs[id] = f.read()
            os.unlink(fields[5])
        # The prover read a file only root could read: it was copied in.
        self.assertEqual(outputs["1"], "(check-sat)\n")
        self.assertRegex(outputs["2"], r"^mathrun-\d+\n$" if ROOT else r"^\w")
        self.stop(proc)
        self.assertFalse(os.path.exists(sock))

    def test_configuration_file(self):
        path = os.path.join(self.dir, "mathrun.ini")
        with open(path, "w") as f:
            f.write(f"[mathrun]\nhttp = tcp:{self.port}:interface=127.0.0.1\njobs = 2\nno-why3 = true\n")
        extra = [] if ROOT else ["--job-root", os.path.join(self.dir, "jobs")]
        self.stop(self.start("mathrun", "--config", path, *extra))

    def test_tac_example(self):
        env_port = f"tcp:{self.port}:interface=127.0.0.1"
        os.environ["MATHRUN_HTTP"] = env_port
        self.addCleanup(os.environ.pop, "MATHRUN_HTTP")
        if not ROOT:
            os.environ["MATHRUN_JOB_ROOT"] = os.path.join(self.dir, "jobs")
            self.addCleanup(os.environ.pop, "MATHRUN_JOB_ROOT")
        self.stop(self.start("-y", os.path.join(PROJECT, "docs", "examples", "mathrun.tac")))
