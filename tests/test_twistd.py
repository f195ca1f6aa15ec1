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
import urllib.parse
import urllib.request

from autobahn.twisted.websocket import WebSocketClientFactory, connectWS
from twisted.internet import defer
from twisted.trial import unittest

from .asyclient import Session, connect, messages
from .helpers import PYTHON, ROOT, USER_PREFIX, async_test, server_args, within

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwistdServer(unittest.TestCase):
    """A ``twistd mathrun`` process per test, in a directory of its own."""

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
        args = ["--http", f"tcp:{self.port}:interface=127.0.0.1", "--jobs", "2", "--no-why3", "--no-maxima"]
        args += server_args()
        if not ROOT:
            args += ["--job-root", os.path.join(self.dir, "jobs")]
        return args


class TwistdTests(TwistdServer):
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
        self.assertIn(f"job {USER_PREFIX}-" if ROOT else "job self-", self.log())

    def test_no_tls_library_without_a_tls_option(self):
        """pyOpenSSL, and cryptography's library behind it, stay out of a
        server that needs no TLS (mathrun/lean_imports.py: ~12 MB of PSS)."""
        proc = self.start("mathrun", *self.common(), "--no-asy")
        with open(f"/proc/{proc.pid}/maps") as f:
            self.assertNotIn("cryptography", f.read())
        self.stop(proc)

    def test_second_server_on_the_same_job_users_exits(self):
        """One server per job-user set: the second one says who holds them,
        and the first one's running job is not disturbed."""
        first = self.start("mathrun", *self.common())
        second_args = [a if a != f"tcp:{self.port}:interface=127.0.0.1" else "tcp:0:interface=127.0.0.1"
                       for a in self.common()]  # fmt: skip
        second = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "mathrun", *second_args], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(second.returncode, 1, second.stdout + second.stderr)
        self.assertIn(f"another mathrun server (pid {first.pid})", second.stdout + second.stderr)
        self.assertIsNone(first.poll())
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health?deep=1", timeout=30) as r:
            self.assertEqual(json.load(r)["status"], "ok")
        self.stop(first)

    def test_maxima_next_to_the_other_front_ends(self):
        """The default service tree: Maxima keeps one job user free for the rest."""
        args = [a for a in self.common() if a != "--no-maxima"]
        proc = self.start("mathrun", *args)
        body = urllib.parse.urlencode({"input": "integrate(x^2,x);", "timeout": "10000"}).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/goemaxima", body, timeout=30) as r:
            self.assertEqual(r.headers["Content-Type"], "text/plain;charset=UTF-8")
            # goemaxima's form by default: Maxima's REPL labels and prompts
            # (and URL_BASE: ""$ first, since the request has no ploturlbase).
            self.assertEqual(r.read().split(), [b"(%i1)", b"(%i2)", b"3", b"x", b"(%o2)", b"--", b"3", b"(%i3)"])
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health?deep=1", timeout=30) as r:
            self.assertEqual(json.load(r)["probe"], "ok")
        self.stop(proc)
        self.assertIn("maxima mother default ready", self.log())

    def start_with_why3(self):
        """A server with its Why3 socket in the test's directory."""
        sock = os.path.join(self.dir, "why3.sock")
        args = [a for a in self.common() if a != "--no-why3"]
        return self.start("mathrun", *args, "--why3-socket", sock), sock

    def root_only_file(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)
        return path

    def test_why3_socket_runs_provers_as_job_users(self):
        from .test_why3_server import Client

        proc, sock = self.start_with_why3()
        secret = self.root_only_file("goal.smt2", "(check-sat)\n")
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
        self.assertRegex(outputs["2"], rf"^{USER_PREFIX}-\d+\n$" if ROOT else r"^\w")
        self.stop(proc)
        self.assertFalse(os.path.exists(sock))

    def test_why3_files_the_client_may_not_read_stay_unread(self):
        if not ROOT or not shutil.which("setpriv"):
            raise unittest.SkipTest("needs root and setpriv to connect as another user")
        proc, sock = self.start_with_why3()
        secret = self.root_only_file("secret", "root only\n")
        os.chmod(self.dir, 0o755)
        client = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "s.sendall(('run;1;5;0;/bin/cat;' + sys.argv[2] + '\\n').encode())\n"
            "data = b''\n"
            "while data.count(b'\\n') < 2: data += s.recv(4096)\n"
            "path = data.split(b'\\n')[1].split(b';')[5].decode()\n"
            "print(open(path).read(), end='')\n"
        )
        r = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PYTHON, "-c", client, sock, secret],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        # The output file is the client's (it could open it), and cat could
        # not read the file: the server did not copy it in for this client.
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("root only", r.stdout)
        self.assertIn("/bin/cat:", r.stdout)
        self.stop(proc)

    @async_test
    async def test_asy_queue_and_runner_endpoints(self):
        runner_port = free_port()
        proc = self.start("mathrun", *self.common(), "--asy-runner", f"tcp:{runner_port}:interface=127.0.0.1")
        for url in (f"ws://127.0.0.1:{self.port}/asy", f"ws://127.0.0.1:{runner_port}/"):
            factory = connect(url)
            client = await within(factory.opened)
            client.add("main.asy", b"draw(unitcircle);", main=True, hashed=True)
            client.send("run")
            received = await within(factory.closed)
            self.assertTrue(messages(received, "complete")[0][1]["success"], received)
            self.assertIn(b"<svg", messages(received, "result")[0][2])
        # A browser page from an origin not allowed is refused at the handshake.
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{self.port}/asy", origin="http://evil.example")
        factory.protocol = Session
        factory.received, factory.waiters = [], []
        factory.opened, factory.closed = defer.Deferred(), defer.Deferred()
        connectWS(factory)
        error = await within(factory.opened.addErrback(lambda f: f.value))
        self.assertIsInstance(error, ConnectionError)
        self.assertIn("origin 'http://evil.example' not allowed", str(error))
        self.stop(proc)

    @async_test
    async def test_asy_upgrade_beside_the_lean_channel(self):
        """With Maxima mounted, connections start on the lean channel: the
        /asy WebSocket upgrade is handed to twisted.web and autobahn."""
        proc = self.start("mathrun", *[a for a in self.common() if a != "--no-maxima"])
        body = urllib.parse.urlencode({"input": "6*7;", "timeout": "10000"}).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/maxima", body, timeout=30) as r:
            self.assertIn(b"42", r.read())
        factory = connect(f"ws://127.0.0.1:{self.port}/asy")
        client = await within(factory.opened)
        client.add("main.asy", b"draw(unitcircle);", main=True, hashed=True)
        client.send("run")
        received = await within(factory.closed)
        self.assertTrue(messages(received, "complete")[0][1]["success"], received)
        self.stop(proc)

    def test_configuration_file(self):
        path = os.path.join(self.dir, "mathrun.ini")
        with open(path, "w") as f:
            f.write(f"[mathrun]\nhttp = tcp:{self.port}:interface=127.0.0.1\njobs = 2\nno-why3 = true\n")
        extra = server_args() if ROOT else ["--job-root", os.path.join(self.dir, "jobs")]
        self.stop(self.start("mathrun", "--config", path, *extra))

    def test_tac_example(self):
        env_port = f"tcp:{self.port}:interface=127.0.0.1"
        os.environ["MATHRUN_HTTP"] = env_port
        self.addCleanup(os.environ.pop, "MATHRUN_HTTP")
        os.environ["MATHRUN_USER_PREFIX"] = USER_PREFIX
        self.addCleanup(os.environ.pop, "MATHRUN_USER_PREFIX")
        if not ROOT:
            os.environ["MATHRUN_JOB_ROOT"] = os.path.join(self.dir, "jobs")
            self.addCleanup(os.environ.pop, "MATHRUN_JOB_ROOT")
        self.stop(self.start("-y", os.path.join(PROJECT, "docs", "examples", "mathrun.tac")))
