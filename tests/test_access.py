"""Access control against real ``twistd mathrun`` servers: basic auth on
every front end, the runner token and Origin refusal, TLS for the site and
for runner back ends (a self-signed certificate made here), per-client
limits.  The pure parts: test_access_logic.py."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, connectWS
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from mathrun.maxima.config import DEFAULT_CORE

from .asyclient import Session, messages
from .helpers import ROOT, async_test, server_args, stop_process, within
from .test_twistd import TWISTD, free_port

TOKEN = "queue-and-runner-share-this-0123456789"
ALICE = ("alice", "s3cret")  # --auth memory:
STACK = ("stack", "m\u00f6\u00f6dle")  # --auth file: (UTF-8)
CIRCLE = b"draw(unitcircle);"


class Server:
    """``twistd mathrun`` in a directory of its own, on the suite's users."""

    def __init__(self, args, health_url, ready=lambda state: True, ssl_context=None, headers=None):
        self.dir = tempfile.mkdtemp(prefix="mathrun-access-")
        self.log = open(os.path.join(self.dir, "twistd.log"), "wb")
        args = [*args, "--no-why3", *server_args()]
        if not ROOT:
            args += ["--job-root", os.path.join(self.dir, "jobs")]
        self.proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "mathrun", *args], cwd=self.dir, stdout=self.log,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                request = urllib.request.Request(health_url, headers=headers or {})
                with urllib.request.urlopen(request, timeout=5, context=ssl_context) as r:
                    if ready(json.load(r)):
                        return
            except (OSError, KeyError):
                pass
            time.sleep(0.1)
        log = self.text()
        self.stop()
        raise RuntimeError("the server did not get ready: " + log[-3000:])

    def text(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def stop(self):
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, True)


def write(directory, name, data: bytes) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def basic(user, password) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def ws_connect(url, headers=None, origin=None, tls=None):
    """An asy Session factory (asyclient's, with headers, origin and TLS)."""
    factory = WebSocketClientFactory(url, headers=headers or {}, origin=origin)
    factory.protocol = Session
    factory.received, factory.waiters = [], []
    factory.opened, factory.closed = defer.Deferred(), defer.Deferred()
    factory.setProtocolOptions(openHandshakeTimeout=10)
    connectWS(factory, tls)
    return factory


async def refusal(factory) -> str:
    """The reason a WebSocket connection was refused (fails if it opened)."""
    result = await within(factory.opened.addErrback(lambda f: f.value))
    assert isinstance(result, ConnectionError), f"opened: {result!r}"
    return str(result)


async def render(factory, program=CIRCLE):
    """Run a program (a circle) on an open Session; its messages."""
    client = await within(factory.opened)
    client.add("main.asy", program, main=True, hashed=True)
    client.send("run")
    return await within(factory.closed)


def jobs_of(metrics: bytes, frontend: str) -> float:
    pattern = rb'mathrun_jobs_total\{frontend="%s",status="[^"]*"\} ([0-9.e+]+)' % frontend.encode()
    return sum(float(n) for n in re.findall(pattern, metrics))


class Sink:
    """What a queue's task gets from a back end: here only its end."""

    def __init__(self):
        self.done = defer.Deferred()

    def output(self, stream, data):
        pass

    def result(self, fmt, data):
        pass

    def complete(self, success, error, time_ms):
        self.done.callback((success, error))


def start_remote(backend) -> Sink:
    """A circle on a RemoteBackend, as the queue starts one."""
    from mathrun.asy.protocol import RunOptions

    sink = Sink()
    backend.start({"main.asy": CIRCLE}, "main.asy", RunOptions(), sink)
    return sink


class AuthTests(unittest.TestCase):
    """One server: --auth memory: and file:, Maxima, /asy through a runner
    back end on its own port with a token, per-client limits of 1."""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(DEFAULT_CORE):
            raise unittest.SkipTest(f"no Maxima mother core at {DEFAULT_CORE}: run the set-up step")
        cls.files = tempfile.mkdtemp(prefix="mathrun-access-files-")
        users = write(cls.files, "users", f"{STACK[0]}:{STACK[1]}\n".encode())
        token = write(cls.files, "token", TOKEN.encode() + b"\n")
        port, runner = free_port(), free_port()
        cls.url, cls.runner = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{runner}/"
        args = ["--http", f"tcp:{port}:interface=127.0.0.1", "--jobs", "6", "--maxima-ready", "2"]
        args += ["--auth", "memory:{}:{}".format(*ALICE), "--auth", f"file:{users}", "--asy-runner-token-file", token]
        args += ["--asy-runner", f"tcp:{runner}:interface=127.0.0.1", "--asy-backends", cls.runner]
        args += ["--maxima-per-client", "1", "--asy-per-client", "1"]
        cls.server = Server(args, cls.url + "/health", lambda s: s["maxima"]["default"]["ready"] >= 1)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.files, True)

    async def request(self, method, path, auth=None, **kwargs):
        headers = {"Authorization": basic(*auth)} if auth else {}
        response = await within(treq.request(method, self.url + path, headers=headers, persistent=False, **kwargs))
        return response, await within(treq.content(response))

    async def maxima(self, path="/maxima", auth=ALICE, text="1+1;", timeout="10000"):
        return await self.request("POST", path, auth, data={"input": text, "timeout": timeout})

    async def metrics(self) -> bytes:
        response, body = await self.request("GET", "/metrics", ALICE)
        self.assertEqual(response.code, 200)
        return body

    @async_test(timeout=120)
    async def test_every_front_end_without_wrong_and_right_credentials(self):
        before = await self.metrics()
        wrong = [None, (ALICE[0], "wrong"), ("bob", ALICE[1]), (STACK[0], ALICE[1]), (ALICE[0], "")]
        for auth in wrong:
            for method, path in (("POST", "/maxima"), ("POST", "/goemaxima"), ("GET", "/"), ("GET", "/metrics")):
                response, _ = await self.request(method, path, auth, data={"input": "1+1;", "timeout": "10000"})
                self.assertEqual(response.code, 401, (method, path, auth))
                self.assertEqual(response.headers.getRawHeaders("www-authenticate"), ['basic realm="mathrun"'])
            headers = {"Authorization": basic(*auth)} if auth else None
            reason = await refusal(ws_connect(self.url.replace("http", "ws") + "/asy", headers))
            self.assertIn("401", reason)
        # Nothing ran: no Maxima evaluation, no Asymptote job.
        after = await self.metrics()
        self.assertEqual(
            [jobs_of(after, f) for f in ("maxima", "asy")], [jobs_of(before, f) for f in ("maxima", "asy")]
        )
        for auth in (ALICE, STACK):  # the memory: and the file: checker
            for path in ("/maxima", "/goemaxima"):
                response, body = await self.maxima(path, auth)
                self.assertEqual(response.code, 200, body)
                self.assertIn(b"2", body)
            response, body = await self.request("GET", "/", auth)
            # the page (when built) or the one-line list of paths
            self.assertEqual(response.code, 200, body)
            self.assertTrue(body.startswith(b"mathrun: ") or b'data-testid="asy-editor"' in body, body[:200])
            received = await render(  # a program of its own: the render cache would answer a repeat
                ws_connect(self.url.replace("http", "ws") + "/asy", {"Authorization": basic(*auth)}),
                CIRCLE + b"// %s\n" % auth[0].encode(),
            )
            self.assertTrue(messages(received, "complete")[0][1]["success"], received)
        final = await self.metrics()
        self.assertEqual(jobs_of(final, "maxima") - jobs_of(after, "maxima"), 4)
        self.assertEqual(jobs_of(final, "asy") - jobs_of(after, "asy"), 2)

    @async_test
    async def test_health_stays_open(self):
        response, body = await self.request("GET", "/health")
        self.assertEqual((response.code, json.loads(body)["status"]), (200, "ok"))
        self.assertIn("HTTP site behind basic auth (open: /health)", self.server.text())

    @async_test(timeout=120)
    async def test_runner_token_and_origin(self):
        before = await self.metrics()
        right = {"Authorization": "Bearer " + TOKEN}
        cases = [
            ({}, None, "runner token missing"),
            ({"Authorization": "Bearer " + TOKEN[:-1] + "x"}, None, "runner token wrong"),
            ({"Authorization": basic(*ALICE)}, None, "runner token missing"),
            (right, "http://127.0.0.1:8000", "browsers (an Origin header) not allowed"),
        ]
        for headers, origin, why in cases:
            reason = await refusal(ws_connect(self.runner, headers, origin))
            self.assertIn("403", reason)
            self.assertIn(why, reason)
        self.assertEqual(jobs_of(await self.metrics(), "asy"), jobs_of(before, "asy"))
        received = await render(ws_connect(self.runner, right))
        self.assertTrue(messages(received, "complete")[0][1]["success"], received)
        self.assertIn(b"<svg", messages(received, "result")[0][2])

    @async_test
    async def test_queue_with_a_wrong_token_ends_its_task_with_the_reason(self):
        from mathrun.asy.backends import RemoteBackend

        backend = RemoteBackend(self.runner, reactor, token=b"not-the-token-0123456789")
        success, error = await within(start_remote(backend).done)
        self.assertFalse(success)
        self.assertIn("Back end failed", error)
        self.assertIn("runner token wrong", error)
        self.assertFalse(backend.available())

    @async_test(timeout=120)
    async def test_maxima_per_client_limit(self):
        """One request at a time per address: the second gets 429 while the
        first runs; the count is released when it ends and when its client
        goes away."""
        slow = defer.ensureDeferred(self.maxima(text="do x:1;", timeout="4000"))
        await task.deferLater(reactor, 1.5, lambda: None)
        response, body = await self.maxima()
        self.assertEqual(response.code, 429, body)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])
        response, _ = await within(slow)
        self.assertEqual(response.code, 416)  # the first one ran to its timeout
        response, body = await self.maxima()
        self.assertEqual((response.code, b"2" in body), (200, True))
        # A client that goes away releases its place (its job is stopped).
        gone = treq.post(self.url + "/maxima", data={"input": "do x:1;", "timeout": "8000"},
                         headers={"Authorization": basic(*ALICE)}, persistent=False)  # fmt: skip
        await task.deferLater(reactor, 1.5, lambda: None)
        gone.cancel()
        await within(gone.addErrback(lambda f: None))
        deadline = reactor.seconds() + 6  # less than the gone request's own timeout
        while True:
            response, body = await self.maxima()
            if response.code != 429 or reactor.seconds() > deadline:
                break
            await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(response.code, 200, body)

    @async_test(timeout=120)
    async def test_asy_per_client_limit(self):
        url, headers = self.url.replace("http", "ws") + "/asy", {"Authorization": basic(*ALICE)}
        first = ws_connect(url, headers)
        held = await within(first.opened)
        second = ws_connect(url, headers)
        await within(second.opened)
        received = await within(second.closed)
        self.assertIn("too many connections from 127.0.0.1 (at most 1)", messages(received, "denied")[0][1]["error"])
        held.sendClose(1000)
        await within(first.closed)
        received = await render(ws_connect(url, headers))
        self.assertTrue(messages(received, "complete")[0][1]["success"], received)


class OpenRulesTests(unittest.TestCase):
    """--auth-health and --metrics-open."""

    def setUp(self):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        args = ["--http", f"tcp:{port}:interface=127.0.0.1", "--jobs", "2", "--no-maxima", "--no-asy"]
        args += ["--auth", "memory:{}:{}".format(*ALICE), "--auth-health", "--metrics-open"]
        self.server = Server(args, self.url + "/health", headers={"Authorization": basic(*ALICE)})
        self.addCleanup(self.server.stop)

    @async_test
    async def test_health_protected_metrics_open(self):
        for path, auth, code in (("/health", None, 401), ("/health", ALICE, 200), ("/metrics", None, 200)):
            headers = {"Authorization": basic(*auth)} if auth else {}
            response = await within(treq.get(self.url + path, headers=headers, persistent=False))
            await within(treq.content(response))
            self.assertEqual(response.code, code, path)


def self_signed(directory) -> tuple[str, str]:
    """(certificate, key) PEM files for localhost and 127.0.0.1, the
    certificate its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return write(directory, "cert.pem", cert.public_bytes(serialization.Encoding.PEM)), write(
        directory, "key.pem", key_pem
    )


class TlsTests(unittest.TestCase):
    """The site on ssl: (https, wss /asy), the queue reaching its runner
    back end over wss:// with --asy-backends-ca, and a token."""

    @classmethod
    def setUpClass(cls):
        cls.files = tempfile.mkdtemp(prefix="mathrun-access-tls-")
        cls.cert, key = self_signed(cls.files)
        token = write(cls.files, "token", TOKEN.encode())
        port, runner = free_port(), free_port()
        cls.url, cls.runner = f"https://localhost:{port}", f"wss://localhost:{runner}/"
        tls = f"privateKey={key}:certKey={cls.cert}:interface=127.0.0.1"
        args = ["--http", f"ssl:port={port}:{tls}", "--jobs", "3", "--no-maxima", "--asy-runner-token-file", token]
        args += [
            "--asy-runner",
            f"ssl:port={runner}:{tls}",
            "--asy-backends",
            cls.runner,
            "--asy-backends-ca",
            cls.cert,
        ]
        context = ssl.create_default_context(cafile=cls.cert)
        cls.server = Server(args, cls.url + "/health", ssl_context=context)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.files, True)

    def trusted(self):
        from twisted.internet.ssl import Certificate, optionsForClientTLS
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

        with open(self.cert, "rb") as f:
            authority = Certificate.loadPEM(f.read())
        agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=authority))
        return agent, optionsForClientTLS("localhost", trustRoot=authority)

    @async_test
    async def test_https_site_with_its_certificate(self):
        agent, _ = self.trusted()
        response = await within(treq.get(self.url + "/health", agent=agent))
        self.assertEqual((response.code, json.loads(await within(treq.content(response)))["status"]), (200, "ok"))
        # Without the self-signed certificate trusted, the client refuses it.
        error = await within(treq.get(self.url + "/health", persistent=False).addErrback(lambda f: f.value))
        self.assertIn("certificate verify failed", str(error))

    @async_test(timeout=120)
    async def test_wss_asy_through_a_wss_runner(self):
        _, tls = self.trusted()
        received = await render(ws_connect(self.url.replace("https", "wss") + "/asy", tls=tls))
        self.assertTrue(messages(received, "complete")[0][1]["success"], received)
        self.assertIn(b"<svg", messages(received, "result")[0][2])
        # The runner itself, over wss: the token still decides.
        self.assertIn("runner token missing", await refusal(ws_connect(self.runner, tls=tls)))
        received = await render(ws_connect(self.runner, {"Authorization": "Bearer " + TOKEN}, tls=tls))
        self.assertTrue(messages(received, "complete")[0][1]["success"], received)

    @async_test
    async def test_queue_refuses_a_runner_it_does_not_trust(self):
        """A queue without --asy-backends-ca checks the runner's certificate
        against the system's CAs: the task fails, the back end leaves the rotation."""
        from mathrun.asy.backends import RemoteBackend

        backend = RemoteBackend(self.runner, reactor, token=TOKEN.encode())
        success, error = await within(start_remote(backend).done)
        self.assertFalse(success)
        self.assertIn("Back end failed", error)
        self.assertIn("certificate verify failed", error)
        self.assertFalse(backend.available())
