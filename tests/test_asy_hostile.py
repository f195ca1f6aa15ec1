"""Hostile Asymptote programs against the real runner: the sandbox stops
each, and the runner keeps serving."""

from __future__ import annotations

import os
import re
import socket

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mathrun.asy.runner import RunnerConfig
from mathrun.asy.runner_ws import RunnerFactory

from .asyclient import connect, messages
from .helpers import PYTHON, ROOT, USER_PREFIX, async_test, make_sandbox, temp_dir, within


def postscript_command(command: str) -> bytes:
    """A label whose PostScript special makes Ghostscript (run by dvisvgm for
    svg output) pipe into a shell command: '%' is put in by PostScript, so
    that TeX does not read it as a comment."""
    return b'label("\\special{ps: (Xpipe%s) dup 0 37 put dup 5 37 put (w) file closefile}");\ndraw(unitcircle);\n' % (
        b"X" + command.encode()
    )


class AsyHostileTests(unittest.TestCase):
    if not ROOT:
        skip = "needs root: without job users the sandbox cannot stop these"

    def setUp(self):
        self.sandbox = make_sandbox(self, jobs=3)
        port = reactor.listenTCP(
            0, RunnerFactory(self.sandbox, RunnerConfig(default_timeout_ms=20000)), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        self.url = f"ws://127.0.0.1:{port.getHost().port}/"
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.setblocking(False)
        self.addCleanup(self.listener.close)
        self.port = self.listener.getsockname()[1]

    def assert_no_connection(self):
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.close()
        self.fail("a job reached the server's loopback")

    async def run_asy(self, source: bytes, timeout_ms=20000):
        factory = connect(self.url)
        client = await within(factory.opened)
        client.add("main.asy", source, main=True)
        client.send("options", {"timeout": timeout_ms})
        client.send("run")
        received = await within(factory.closed)
        return messages(received, "complete")[0][1], received

    async def still_serving(self):
        complete, _ = await self.run_asy(b"draw(unitcircle);")
        self.assertTrue(complete["success"])

    @async_test
    async def test_postscript_special_cannot_harm_the_host(self):
        target = os.path.join(temp_dir(self), "pwned")
        os.chmod(os.path.dirname(target), 0o755)
        probe = f"{PYTHON} -c \"import socket; socket.create_connection(('127.0.0.1', {self.port}), 2)\""
        for command in (f"touch {target}", "touch /var/tmp/mathrun-pwned", probe):
            complete, received = await self.run_asy(postscript_command(command))
            self.assertFalse(os.path.exists(target))
            self.assertFalse(os.path.exists("/var/tmp/mathrun-pwned"))
            self.assert_no_connection()
        await self.still_serving()

    @async_test
    async def test_postscript_special_runs_only_as_the_job_user(self):
        # The attack is real: the command runs (its file comes back as an
        # "image" of the output directory), but as the job user.
        complete, received = await self.run_asy(postscript_command("id -un > $HOME/out/zz.svg"))
        results = [m[2] for m in messages(received, "result")]
        self.assertEqual(len(results), 2, received)
        self.assertRegex(results[1], rb"^" + re.escape(USER_PREFIX).encode() + rb"-\d+\n$")

    @async_test
    async def test_http_input_cannot_reach_the_network(self):
        complete, received = await self.run_asy(
            b'string s = input("http://127.0.0.1:%d/x"); draw(unitcircle);' % self.port
        )
        self.assert_no_connection()
        await self.still_serving()

    @async_test
    async def test_reading_another_jobs_files(self):
        second = reactor.listenTCP(0, RunnerFactory(self.sandbox, RunnerConfig()), interface="127.0.0.1")
        self.addCleanup(second.stopListening)
        other = connect(f"ws://127.0.0.1:{second.getHost().port}/")
        holder = await within(other.opened)
        holder.add("main.asy", b"// the answer is 4242\nwhile(true) {}\n", main=True)
        holder.send("options", {"timeout": 15000})
        holder.send("run")
        while not self.sandbox.pool.busy:
            await deferLater(reactor, 0.05, lambda: None)
        (lease,) = self.sandbox.leases
        path = os.path.join(lease.workspace.path, "main.asy").encode()
        for source in (
            b'string s = input("%s"); write(s); draw(unitcircle);' % path,
            b'label("\\input{%s}"); draw(unitcircle);' % path,
            postscript_command(f"cat {path.decode()}"),
        ):
            # A TeX \input of a file it may not read makes TeX wait for
            # another name: the time limit ends it.
            complete, received = await self.run_asy(source, timeout_ms=3000)
            text = b"".join(m[2] or b"" for m in received if m[0] in ("output", "result"))
            self.assertNotIn(b"4242", text)
        holder.sendClose()
        await within(other.closed)
        await self.still_serving()
