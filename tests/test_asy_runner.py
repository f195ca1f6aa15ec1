"""The Asymptote runner back end with real ``asy`` over a real WebSocket."""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mathrun.asy.config import RUN_LIMITS, RunnerConfig
from mathrun.asy.runner_ws import RunnerFactory

from .asyclient import connect, messages
from .helpers import async_test, make_sandbox, within

PICTURE = b'size(100); draw(unitcircle); label("$\\\\int_0^1 x\\\\,dx$", (0,0));'


class RunnerTests(unittest.TestCase):
    def setUp(self):
        self.sandbox = make_sandbox(self, jobs=2)
        self.factory = RunnerFactory(
            self.sandbox, RunnerConfig(default_timeout_ms=20_000, limits=replace(RUN_LIMITS, output_bytes=100_000))
        )
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"ws://127.0.0.1:{port.getHost().port}/"

    async def session(self, files, options=None, inputs=()):
        factory = connect(self.url)
        client = await within(factory.opened)
        for name, data, main in files:
            client.add(name, data, main)
        if options:
            client.send("options", options)
        client.send("run")
        for line in inputs:
            client.send("input", None, line)
        received = await within(factory.closed)
        complete = messages(received, "complete")
        self.assertEqual(len(complete), 1, received)
        return complete[0][1], received

    @async_test
    async def test_formats_with_a_latex_label(self):
        for fmt, magic in (("svg", b"<svg"), ("pdf", b"%PDF"), ("png", b"\x89PNG")):
            complete, received = await self.session([("main.asy", PICTURE, True)], {"format": fmt})
            self.assertEqual(complete["success"], True, received)
            results = messages(received, "result")
            self.assertEqual(len(results), 1)
            self.assertEqual(results[0][1], {"format": fmt})
            self.assertIn(magic, results[0][2][:200])
            self.assertGreater(complete["time"], 0)

    @async_test
    async def test_3d_headless(self):
        complete, received = await self.session([("main.asy", b"import three; size(100); draw(unitsphere);", True)])
        self.assertTrue(complete["success"], received)
        self.assertIn(b"<svg", messages(received, "result")[0][2])

    @async_test
    async def test_two_files_and_two_shipouts(self):
        helper = b"void box() { draw(unitsquare); }"
        main = b'import helper; box(); shipout("second"); erase(); draw(unitcircle);'
        complete, received = await self.session([("helper.asy", helper, False), ("main.asy", main, True)])
        self.assertTrue(complete["success"], received)
        self.assertEqual(len(messages(received, "result")), 2)

    @async_test
    async def test_syntax_error(self):
        complete, received = await self.session([("main.asy", b"draw((0,0)--(1,1))\n", True)])
        self.assertEqual(complete["success"], False)
        self.assertEqual(complete["error"], "Execution failed with code 1")
        text = b"".join(m[2] for m in messages(received, "output"))
        self.assertIn(b"main.asy: 2.1: unexpected end of input", text)

    @async_test
    async def test_time_limit(self):
        complete, _ = await self.session([("main.asy", b"while(true) {}", True)], {"timeout": 1000})
        self.assertEqual(
            complete,
            {"success": False, "error": "Execution aborted due to the time limit (1000ms)", "time": complete["time"]},
        )
        self.assertLess(complete["time"], 5000)

    @async_test
    async def test_later_options_lower_the_time_limit(self):
        factory = connect(self.url)
        client = await within(factory.opened)
        client.add("main.asy", b"while(true) {}", main=True)
        client.send("run")
        await deferLater(reactor, 0.3, lambda: None)
        client.send("options", {"timeout": 800})
        received = await within(factory.closed)
        complete = messages(received, "complete")[0][1]
        self.assertEqual(complete["error"], "Execution aborted due to the time limit (800ms)")
        self.assertLess(complete["time"], 3000)

    @async_test
    async def test_output_limit(self):
        complete, received = await self.session([("main.asy", b'while(true) write("flood");', True)])
        self.assertEqual(complete["error"], "Execution aborted due to the output limit (100000B)")
        self.assertEqual(sum(len(m[2]) for m in messages(received, "output")), 100_000)

    @async_test
    async def test_no_image(self):
        complete, _ = await self.session([("main.asy", b"write(1);", True)])
        self.assertEqual((complete["success"], complete["error"]), (False, "No image output"))

    @async_test
    async def test_interactive(self):
        factory = connect(self.url)
        client = await within(factory.opened)
        client.send("options", {"interactive": True})
        client.send("run")
        client.send("input", None, b"write(1+2);\n")
        while b"3" not in b"".join(m[2] or b"" for m in messages(factory.received, "output")):
            await within(client.wait_for("output"))
            factory.waiters.clear()
            await deferLater(reactor, 0.05, lambda: None)
        client.send("input", None, b"write(2*5);\n")
        while b"10" not in b"".join(m[2] or b"" for m in messages(factory.received, "output")):
            await deferLater(reactor, 0.05, lambda: None)
        # Closing the connection ends the session and frees the runner.
        client.sendClose()
        await within(factory.closed)
        while self.factory.busy is not None or self.sandbox.pool.busy:
            await deferLater(reactor, 0.05, lambda: None)

    @async_test
    async def test_second_connection_refused(self):
        first = await within(connect(self.url).opened)
        second = connect(self.url)
        error = await within(second.opened.addErrback(lambda f: f.value))
        self.assertIsInstance(error, ConnectionError)
        first.sendClose()
        await within(first.factory.closed)

    @async_test
    async def test_bad_messages(self):
        for script, error in [
            ([("add", {"filename": "../x.asy", "main": True}, b"")], "bad file name"),
            ([("options", {"format": "gif"}, None)], "format must be one of"),
            ([("run", None, None)], "no main file"),
            ([("frobnicate", None, None)], "unexpected 'frobnicate'"),
        ]:
            factory = connect(self.url)
            client = await within(factory.opened)
            for verb, body, payload in script:
                client.send(verb, body, payload)
            received = await within(factory.closed)
            self.assertIn(error, messages(received, "complete")[0][1]["error"])
