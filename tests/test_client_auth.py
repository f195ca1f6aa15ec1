"""Credentials and TLS trust in ``mathrun.client`` and the ``mathrun``
command: against real servers with ``--auth memory:``/``file:`` (one on
plain http, one on https with a self-signed certificate made here), and
the URL and credential parsing as properties."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import tempfile
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.trial import unittest

from mathrun.client import AsyClient, AuthRequired, MaximaClient, cli, endpoint, health, split_url
from mathrun.client.common import NO_CREDENTIALS, basic_header, client_credentials
from mathrun.maxima.config import DEFAULT_CORE

from .helpers import async_test, temp_dir, within
from .test_access import Server, basic, self_signed, write
from .test_client import MAGIC, MATHRUN
from .test_twistd import free_port

# memory: takes name:password with no further colon; these need percent-encoding in a URL.
ALICE = ("alice", "p@ss/w%rd?#")
STACK = ("stack", "m\u00f6\u00f6dle")  # file: (UTF-8)
PASSWORDS = (ALICE[1], STACK[1], quote(ALICE[1], safe=""), quote(STACK[1], safe=""))


class Tty(io.StringIO):
    def isatty(self):
        return True


class Console(cli.Console):
    def __init__(self, environ=None, stdin=None, ask=None):
        super().__init__(io.StringIO(), io.StringIO(), stdin or io.StringIO(), environ or {}, ask)


def with_userinfo(url: str, user: str, password: str | None) -> str:
    scheme, rest = url.split("://", 1)
    userinfo = quote(user, safe="") + ("" if password is None else ":" + quote(password, safe=""))
    return f"{scheme}://{userinfo}@{rest}"


# -- pure parts ------------------------------------------------------------------

users = st.text(min_size=1, max_size=20).filter(lambda s: ":" not in s)
hosts = st.sampled_from(["http://127.0.0.1:8080", "https://maxima.example.org", "http://[::1]:9/proxy/maxima"])


class ParsingTests(unittest.TestCase):
    @given(users, st.text(max_size=30), hosts)
    def test_percent_encoded_userinfo_round_trip(self, user, password, url):
        clean, got_user, got_password = split_url(with_userinfo(url, user, password))
        self.assertEqual((clean, got_user, got_password), (url, user, password))
        # What travels: the header carries them, the URL of every front end does not.
        for path, ws in (("/maxima", False), ("/asy", True), ("/health", False)):
            self.assertNotIn("@", endpoint(with_userinfo(url, user, password), path, websocket=ws))
        header = basic_header(client_credentials(with_userinfo(url, user, password), None)[1])["Authorization"]
        self.assertEqual(base64.b64decode(header.removeprefix("Basic ")).decode(), f"{user}:{password}")

    def test_userinfo_forms(self):
        self.assertEqual(split_url("http://h:1"), ("http://h:1", None, None))
        self.assertEqual(split_url("http://bob@h:1/x"), ("http://h:1/x", "bob", None))
        self.assertEqual(client_credentials("http://bob@h:1", None), ("http://h:1", ("bob", "")))
        # Given credentials win over the URL's; the URL still loses its userinfo.
        self.assertEqual(client_credentials("http://bob:x@h", ("ann", "y")), ("http://h", ("ann", "y")))
        for bad in (("a:b", "c"), ("", "c")):
            self.assertRaises(ValueError, client_credentials, "http://h", bad)
        with self.assertRaises(ValueError) as caught:
            endpoint("ftp://bob:hunter2@h/", "/maxima")
        self.assertNotIn("hunter2", str(caught.exception))

    def test_where_the_command_finds_credentials(self):
        def creds(argv, environ=None, stdin=None):
            asked = []
            console = Console(environ, stdin, ask=lambda prompt: asked.append(prompt) or "typed")
            args = cli.parser().parse_args(["health", *argv])
            return cli.credentials_of(args, console), asked

        url = "http://alice:from%20url@h"
        self.assertEqual(creds(["--url", "http://h"]), (None, []))
        self.assertEqual(creds(["--url", url]), (("alice", "from url"), []))
        env = {"MATHRUN_USER": "eve", "MATHRUN_PASSWORD": "from env"}
        self.assertEqual(creds(["--url", url], env), (("alice", "from url"), []))
        self.assertEqual(creds(["--url", "http://h"], env), (("eve", "from env"), []))
        self.assertEqual(creds(["--url", url, "--user", "bob"], env), (("bob", "from env"), []))
        self.assertEqual(creds(["--url", "http://h", "--user", "bob"], stdin=Tty()),
                         (("bob", "typed"), ["mathrun: password for bob: "]))  # fmt: skip
        with self.assertRaises(cli.UsageError):  # not a terminal, and no password anywhere
            creds(["--url", "http://h", "--user", "bob"])

    @async_test
    async def test_usage_errors_never_show_the_password(self):
        for argv in (["--url", "http://:hunter2@h"], ["--url", "http://a%3Ab:hunter2@h"], ["--ca", "/nonexistent"]):
            console = Console()
            self.assertEqual(await within(defer.ensureDeferred(cli.run(reactor, ["health", *argv], console))), 2)
            self.assertNotIn("hunter2", console.stderr.getvalue())
            self.assertTrue(console.stderr.getvalue().startswith("mathrun: "), console.stderr.getvalue())


# -- a real server with --auth -----------------------------------------------------


class CommandMixin:
    async def cli(self, *argv, url=None, environ=None):
        console = Console(environ)
        argv = [argv[0], "--url", url or self.url, *argv[1:]]
        code = await within(defer.ensureDeferred(cli.run(reactor, argv, console)), 60)
        out, err = console.stdout.getvalue(), console.stderr.getvalue()
        for secret in PASSWORDS:
            self.assertNotIn(secret, out + err)
        return code, out, err

    def setUp(self):
        self.dir = temp_dir(self, "mathrun-client-auth-")
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.dir)
        self.circle = write(self.dir, "c.asy", b"draw(unitcircle);")


class AuthTests(CommandMixin, unittest.TestCase):
    """One server: --auth memory: and file:, --auth-health, Maxima and one local asy runner."""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(DEFAULT_CORE):
            raise unittest.SkipTest(f"no Maxima mother core at {DEFAULT_CORE}: run the set-up step")
        cls.files = tempfile.mkdtemp(prefix="mathrun-client-auth-files-")
        users = write(cls.files, "users", f"{STACK[0]}:{STACK[1]}\n".encode())
        port = free_port()
        cls.url = f"http://127.0.0.1:{port}"
        args = ["--http", f"tcp:{port}:interface=127.0.0.1", "--jobs", "4", "--maxima-ready", "1"]
        args += ["--asy-local", "1", "--auth", "memory:{}:{}".format(*ALICE), "--auth", f"file:{users}"]
        args += ["--auth-health"]
        cls.server = Server(args, cls.url + "/health", lambda s: s["maxima"]["default"]["ready"] >= 1,
                            headers={"Authorization": basic(*ALICE)})  # fmt: skip

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.files, True)

    def ways(self):
        """The three ways of giving credentials, as (url, extra argv, environment)."""
        yield with_userinfo(self.url, *ALICE), [], {}
        yield self.url, ["--user", STACK[0]], {"MATHRUN_PASSWORD": STACK[1]}
        yield self.url, [], {"MATHRUN_USER": ALICE[0], "MATHRUN_PASSWORD": ALICE[1]}

    @async_test(timeout=180)
    async def test_right_credentials_work_everywhere(self):
        for i, (url, extra, env) in enumerate(self.ways()):
            code, out, err = await self.cli("maxima", *extra, "display2d:false$ 6*7;", url=url, environ=env)
            self.assertEqual((code, out, err), (0, "42\n", ""))
            code, out, err = await self.cli("health", *extra, url=url, environ=env)
            self.assertEqual(code, 0, err)
            self.assertTrue(out.startswith("ok; job users"), out)
            program = write(self.dir, f"p{i}.asy", b"draw(unitcircle); // %d\n" % i)  # past the render cache
            code, _, err = await self.cli("asy", *extra, "-q", "-f", "png", program, url=url, environ=env)
            self.assertEqual(code, 0, err)
            self.assertTrue(open(os.path.join(self.dir, f"p{i}.png"), "rb").read().startswith(MAGIC["png"]))

    @async_test(timeout=120)
    async def test_missing_and_wrong_credentials(self):
        cases = [
            (self.url, {}, "the server wants credentials: use --user or user:pass@ in the URL"),
            (with_userinfo(self.url, ALICE[0], STACK[1]), {}, "credentials refused (user alice)"),
            (with_userinfo(self.url, "bob", ALICE[1]), {}, "credentials refused (user bob)"),
            (self.url, {"MATHRUN_USER": STACK[0], "MATHRUN_PASSWORD": ALICE[1]}, "credentials refused (user stack)"),
        ]
        for url, env, message in cases:
            for command in (["maxima", "1+1;"], ["asy", self.circle], ["health"]):
                code, out, err = await self.cli(*command, url=url, environ=env)
                self.assertEqual((code, out), (cli.EXIT_AUTH, ""), err)
                self.assertEqual(err, f"mathrun: {command[0]}: {message}\n")
        self.assertFalse(os.path.exists(os.path.join(self.dir, "c.svg")))

    @async_test(timeout=120)
    async def test_python_classes_take_credentials(self):
        def soon(coroutine):
            return within(defer.ensureDeferred(coroutine))

        answer = await soon(MaximaClient(reactor, self.url, credentials=STACK).evaluate("display2d:false$ 2^10;"))
        self.assertEqual(answer.output, "1024\n")
        asy = AsyClient(reactor, self.url, credentials=ALICE)
        result = await soon(asy.render({"m.asy": b"dot((1,2));"}, "m.asy"))
        self.assertTrue(result.success, result.error)
        self.assertTrue((await soon(health(reactor, self.url, credentials=ALICE))).ok)
        for creds, sent in ((None, False), ((ALICE[0], "nope"), True)):
            for attempt in (
                MaximaClient(reactor, self.url, credentials=creds).evaluate("1;"),
                AsyClient(reactor, self.url, credentials=creds).render({"m.asy": b""}, "m.asy"),
                health(reactor, self.url, credentials=creds),
            ):
                error = await soon(attempt).addErrback(lambda f: f.value)
                self.assertIsInstance(error, AuthRequired)
                self.assertEqual(error.sent, sent)

    @async_test
    async def test_no_password_in_a_connection_error(self):
        code, _, err = await self.cli("health", url=with_userinfo(f"http://127.0.0.1:{free_port()}", *ALICE))
        self.assertEqual(code, cli.EXIT_CONNECTION, err)
        self.assertIn("cannot reach http://127.0.0.1:", err)

    def test_console_script_status_and_terminal_prompt(self):
        env = {**os.environ, "MATHRUN_PASSWORD": "wrong"}
        env.pop("MATHRUN_USER", None)
        r = subprocess.run([MATHRUN, "maxima", "--url", self.url, "--user", "alice", "1;"], env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)  # fmt: skip
        self.assertEqual(
            (r.returncode, r.stdout, r.stderr),
            (cli.EXIT_AUTH, "", "mathrun: maxima: credentials refused (user alice)\n"),
        )
        # On a terminal the password is asked (getpass: not echoed).
        import pty

        env.pop("MATHRUN_PASSWORD")
        pid, fd = pty.fork()
        if pid == 0:  # the child: the command on the pty
            os.execve(MATHRUN, [MATHRUN, "maxima", "--url", self.url, "--user", "alice", "display2d:false$ 3*3;"], env)
        seen = b""
        while b"password for alice: " not in seen:
            seen += os.read(fd, 1024)
        os.write(fd, ALICE[1].encode() + b"\n")
        while True:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the pty
                break
            if not chunk:
                break
            seen += chunk
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, seen)
        self.assertIn(b"9", seen.split(b"password for alice: ", 1)[1])
        self.assertNotIn(ALICE[1].encode(), seen)


class TlsTests(CommandMixin, unittest.TestCase):
    """https/wss with a self-signed certificate: --ca, and credentials over TLS."""

    @classmethod
    def setUpClass(cls):
        import ssl

        cls.files = tempfile.mkdtemp(prefix="mathrun-client-tls-")
        cls.cert, key = self_signed(cls.files)
        port = free_port()
        cls.url = f"https://localhost:{port}"
        tls = f"privateKey={key}:certKey={cls.cert}:interface=127.0.0.1"
        args = ["--http", f"ssl:port={port}:{tls}", "--jobs", "2", "--no-maxima", "--asy-local", "1"]
        args += ["--auth", "memory:{}:{}".format(*ALICE), "--auth-health"]
        cls.server = Server(args, cls.url + "/health", ssl_context=ssl.create_default_context(cafile=cls.cert),
                            headers={"Authorization": basic(*ALICE)})  # fmt: skip

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.files, True)

    @async_test(timeout=120)
    async def test_ca_file_and_credentials_over_tls(self):
        url = with_userinfo(self.url, *ALICE)
        code, out, err = await self.cli("health", "--ca", self.cert, url=url)
        self.assertEqual((code, out.split(";")[0]), (0, "ok"), err)
        code, _, err = await self.cli("asy", "--ca", self.cert, "-q", self.circle, url=url)
        self.assertEqual(code, 0, err)
        self.assertIn(b"<svg", open(os.path.join(self.dir, "c.svg"), "rb").read())
        code, _, err = await self.cli("asy", "--ca", self.cert, self.circle)
        self.assertEqual((code, err), (cli.EXIT_AUTH, f"mathrun: asy: {NO_CREDENTIALS}\n"))
        # Without --ca the self-signed certificate is refused, before any credentials are sent.
        for command in (["health"], ["asy", self.circle], ["maxima", "1;"]):
            code, _, err = await self.cli(*command, url=url)
            self.assertEqual(code, cli.EXIT_CONNECTION, err)
            self.assertIn("certificate verify failed", err)
        code, _, err = await self.cli("health", "--ca", write(self.dir, "junk.pem", b"not a certificate"), url=url)
        self.assertEqual((code, err), (cli.EXIT_USAGE, f"mathrun: --ca {self.dir}/junk.pem holds no PEM certificate\n"))
