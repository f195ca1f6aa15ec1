"""The ``mathrun`` command and ``mathrun.client``: against a real ``twistd
mathrun`` (Maxima and asy on, one local asy runner so that a queue forms),
and the pure parts (prompts, exit codes, HTTP error answers) on fakes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
import zipfile

from hypothesis import given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web import resource

from mathrun.client import (
    AsyClient,
    AsyDenied,
    AsyResult,
    ConnectionFailed,
    Health,
    Location,
    MaximaAnswer,
    MaximaBusy,
    MaximaClient,
    MaximaRefused,
    MaximaServerError,
    cli,
    endpoint,
    health,
    strip_prompts,
)
from mathrun.maxima.config import DEFAULT_CORE

from .helpers import ROOT, async_test, server_args, stop_process, temp_dir, within
from .test_twistd import TWISTD, free_port

MATHRUN = os.path.join(os.path.dirname(sys.executable), "mathrun")
SVG = [b"<svg", b"<?xml"]
MAGIC = {"pdf": b"%PDF", "png": b"\x89PNG\r\n\x1a\n"}
SLOW = b"for (int i=0; i<3000000; ++i) {}\ndraw(unitcircle);\n"  # about a second of asy's time


class Console(cli.Console):
    def __init__(self, stdin=""):
        super().__init__(io.StringIO(), io.StringIO(), io.StringIO(stdin))


# -- pure parts ------------------------------------------------------------------


class PromptTests(unittest.TestCase):
    def test_goemaxima_forms(self):
        # The bodies docs/maxima.md gives for STACK's 1D form.
        self.assertEqual(strip_prompts("\n(%i1) \n(%o1) x^3/3\n(%i2) "), "x^3/3\n")
        self.assertEqual(strip_prompts("\n(%i1) \nhi \n(%i2) "), "hi\n")
        # Without ploturlbase, URL_BASE: ""$ runs first: two prompts on a line.
        self.assertEqual(strip_prompts("(%i1) (%i2) \n(%o2) 3\n(%i3) "), "3\n")

    def test_2d_result_keeps_its_shape(self):
        body = "\n(%i1) \n" + " " * 39 + "3\n" + " " * 38 + "x\n(%o1)" + " " * 33 + "--\n" + " " * 38 + "3\n(%i2) "
        self.assertEqual(strip_prompts(body), " 3\nx\n--\n3\n")

    def test_text_after_a_prompt_is_kept(self):
        self.assertEqual(
            strip_prompts("\n(%i1) \n(%o1) [p.svg]\n(%i2)    line 0: warning\n"), "[p.svg]\nline 0: warning\n"
        )

    @given(st.lists(st.text(st.characters(codec="ascii", exclude_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85"), min_size=1)
                    .map(str.strip).filter(lambda s: s and not s.startswith("(%")), min_size=1, max_size=8))  # fmt: skip
    def test_1d_results_come_back_as_they_are(self, results):
        body = "\n(%i1) \n" + "".join(f"(%o{n}) {r}\n" for n, r in enumerate(results, 1)) + f"(%i{len(results) + 1}) "
        self.assertEqual(strip_prompts(body), "".join(r + "\n" for r in results))
        # The quiet form has no prompts: unchanged.
        self.assertEqual(strip_prompts("\n".join(results) + "\n"), "".join(r + "\n" for r in results))


class ExitCodeTests(unittest.TestCase):
    def test_each_outcome_has_its_own_status(self):
        cases = {
            cli.EXIT_OK: [MaximaAnswer(200, "x"), AsyResult(success=True), Health(200, {"status": "ok"})],
            cli.EXIT_FAILED: [
                AsyResult(error="Execution failed with code 1"),
                AsyResult(error="No image output"),
                Health(503, {"status": "failing"}),
            ],  # fmt: skip
            cli.EXIT_TIMEOUT: [
                MaximaAnswer(416, ""),
                AsyResult(error="Execution aborted due to the time limit (3000ms)"),
            ],
            cli.EXIT_REFUSED: [MaximaRefused(413, "too large"), AsyDenied("bad file name")],
            cli.EXIT_SERVER: [
                MaximaServerError(500, "x"),
                AsyResult(error="Execution aborted due to the output limit (1B)"),
                AsyResult(error="Back end failed: gone"),
            ],  # fmt: skip
            cli.EXIT_BUSY: [MaximaBusy(503, "busy", 5)],
            cli.EXIT_CONNECTION: [ConnectionFailed("refused")],
        }
        for code, outcomes in cases.items():
            for outcome in outcomes:
                self.assertEqual(cli.exit_code(outcome), code, outcome)
        self.assertEqual(len(set(cases)), 8 - 1)  # every status but usage (2), which argparse gives

    def test_urls(self):
        self.assertEqual(endpoint("http://h:8080", "/maxima"), "http://h:8080/maxima")
        self.assertEqual(endpoint("https://h/", "/asy", websocket=True), "wss://h/asy")
        self.assertEqual(endpoint("http://h/proxy/maxima", "/maxima"), "http://h/proxy/maxima")
        self.assertEqual(endpoint("ws://h:1/asy", "/health"), "http://h:1/asy")
        self.assertRaises(ValueError, endpoint, "ftp://h", "/maxima")


class Canned(resource.Resource):
    """One fixed HTTP answer, as a server in trouble would give it."""

    isLeaf = True

    def __init__(self, code, body: bytes, **headers):
        super().__init__()
        self.code, self.body, self.headers = code, body, headers

    def render(self, request):
        request.setResponseCode(self.code)
        for name, value in self.headers.items():
            request.setHeader(name.replace("_", "-"), value)
        return self.body


class HttpErrorTests(unittest.TestCase):
    async def evaluate(self, code, body, **headers):
        client = MaximaClient(reactor, "http://server", http=StubTreq(Canned(code, body, **headers)))
        return await client.evaluate("1;", 1000)

    @async_test
    async def test_error_answers_raise_with_the_servers_message(self):
        for code, kind, body, headers in [
            (503, MaximaBusy, b"503 - no maxima process free in 10 s\n", {"Retry_After": "7"}),
            (500, MaximaServerError, b"500 - internal server error (output limit of 9 bytes)\n", {}),
            (413, MaximaRefused, b"413 - input too large\n", {}),
            (400, MaximaRefused, b"400 - bad request (invalid timeout)\n", {}),
        ]:
            with self.assertRaises(kind) as caught:
                await self.evaluate(code, body, Content_Type="text/plain;charset=UTF-8", **headers)
            self.assertEqual((caught.exception.status, caught.exception.message), (code, body.decode().strip()))
            self.assertEqual(caught.exception.retry_after, 7 if code == 503 else None)
            line = cli.message_of(caught.exception)
            self.assertTrue(line.startswith(body.decode().strip()), line)
        self.assertIn("retry after 7 s", cli.message_of(MaximaBusy(503, "503 - busy", 7)))

    @async_test
    async def test_zip_and_timeout_answers(self):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("OUTPUT", "\n(%i1) \n(%o1) done\n(%i2) ")
            z.writestr("p.svg", "<svg/>")
        answer = await self.evaluate(200, buf.getvalue(), Content_Type="application/zip")
        self.assertEqual((answer.output, answer.plots), ("done\n", {"p.svg": b"<svg/>"}))
        answer = await self.evaluate(416, b"\n(%i1) \n(%o1) 1\n", Content_Type="text/plain;charset=UTF-8")
        self.assertTrue(answer.timed_out)
        self.assertEqual(cli.exit_code(answer), cli.EXIT_TIMEOUT)

    @async_test
    async def test_unhealthy_server(self):
        stub = StubTreq(Canned(503, json.dumps({"status": "failing", "error": "no job users"}).encode()))
        report = await health(reactor, "http://server", http=stub)
        self.assertEqual((report.ok, cli.exit_code(report)), (False, cli.EXIT_FAILED))
        self.assertIn("no job users", report.summary())

    def test_plot_names_stay_in_the_directory(self):
        here = temp_dir(self)
        for name in ("../../etc/evil.svg", "/abs/p.svg", ".hidden"):
            path = cli.save(here, name, b"x")
            self.assertEqual(os.path.dirname(path), here, path)


class NoServerTests(unittest.TestCase):
    @async_test
    async def test_nothing_listening_is_a_connection_error(self):
        url = f"http://127.0.0.1:{free_port()}"
        for argv in (["maxima", "--url", url, "1;"], ["health", "--url", url], ["asy", "--url", url, __file__]):
            console = Console()
            code = await cli.run(reactor, argv, console)
            self.assertEqual(code, cli.EXIT_CONNECTION, console.stderr.getvalue())
            self.assertEqual(len(console.stderr.getvalue().splitlines()), 1, console.stderr.getvalue())
            self.assertIn("refused", console.stderr.getvalue())
        self.assertEqual(await cli.run(reactor, ["asy", "--url", url, "/nonexistent/x.asy"], Console()), cli.EXIT_USAGE)
        self.assertEqual(await cli.run(reactor, ["health", "--url", "ftp://host"], Console()), cli.EXIT_USAGE)


# -- against a real server ---------------------------------------------------------


class Server:
    """``twistd mathrun`` on an ephemeral port and the suite's users: Maxima
    (small output limit, so that a 500 is cheap) and one local asy runner."""

    def __init__(self, asy_local: int = 1):
        self.dir = tempfile.mkdtemp(prefix="mathrun-client-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["--http", f"tcp:{self.port}:interface=127.0.0.1", "--jobs", "6", "--no-why3"]
        args += ["--asy-local", str(asy_local)]
        args += ["--maxima-ready", "2", "--maxima-output-limit", "0.1", *server_args()]
        if not ROOT:
            args += ["--job-root", os.path.join(self.dir, "jobs")]
        self.log = open(os.path.join(self.dir, "twistd.log"), "wb")
        self.proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "mathrun", *args], cwd=self.dir, stdout=self.log,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        self.wait_ready()

    def wait_ready(self):
        """Up, and the Maxima mother ready (its first start takes seconds)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if json.load(r)["maxima"]["default"]["ready"] >= 1:
                        return
            except (OSError, KeyError):
                pass
            time.sleep(0.1)
        with open(self.log.name, errors="replace") as f:
            log = f.read()[-3000:]
        self.stop()
        raise RuntimeError("the server did not get ready: " + log)

    def stop(self):
        stop_process(self.proc)
        self.log.close()
        subprocess.run(["rm", "-rf", self.dir], check=False)


class ClientTests(unittest.TestCase):
    """One server for the class: its start (the Maxima mother) is the slow part."""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(DEFAULT_CORE):
            raise unittest.SkipTest(f"no Maxima mother core at {DEFAULT_CORE}: run the set-up step")
        cls.server = Server()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def setUp(self):
        self.dir = temp_dir(self, "mathrun-client-test-")
        # Files a command writes by default land here, never in the checkout.
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.dir)

    async def cli(self, *argv, stdin=""):
        console = Console(stdin)
        code = await within(
            defer.ensureDeferred(cli.run(reactor, [argv[0], "--url", self.server.url, *argv[1:]], console))
        )
        return code, console.stdout.getvalue(), console.stderr.getvalue()

    def write(self, name, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    # -- Maxima
    @async_test
    async def test_maxima_output_without_prompts(self):
        self.assertEqual(await self.cli("maxima", "display2d:false$ integrate(x^2,x);"), (0, "x^3/3\n", ""))
        code, out, _ = await self.cli("maxima", "integrate(x^2,x);")  # 2D, as Maxima draws it
        self.assertEqual((code, out.splitlines()), (0, [" 3", "x", "--", "3"]))
        code, out, _ = await self.cli("maxima", "--raw", "-", stdin="print(6*7)$")
        self.assertEqual((code, out.split()), (0, ["(%i1)", "42", "(%i2)"]))

    @async_test
    async def test_maxima_plot_is_saved_as_a_file(self):
        plots = os.path.join(self.dir, "plots")
        code, out, err = await self.cli(
            "maxima", "-d", plots,
            'plot2d(sin(x), [x, 0, 2*%pi], [svg_file, sconcat(IMAGE_DIR, "sine.svg")], [gnuplot_term, svg])$',
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        self.assertEqual(os.listdir(plots), ["sine.svg"])
        self.assertTrue(ET.parse(os.path.join(plots, "sine.svg")).getroot().tag.endswith("svg"))
        self.assertIn(f"saved {plots}/sine.svg", err)

    @async_test
    async def test_maxima_errors_have_their_exit_status(self):
        code, out, err = await self.cli("maxima", "--timeout", "500", "print(1)$ (for i:1 thru 10^9 do x:i, 1);")
        self.assertEqual((code, out), (cli.EXIT_TIMEOUT, "1\n"), err)
        self.assertIn("timed out after 500 ms", err)
        code, _, err = await self.cli(
            "asy", "--timeout", "fast", self.write("loop.asy", SLOW.replace(b"3000000", b"10^9"))
        )
        self.assertEqual(code, cli.EXIT_TIMEOUT, err)
        self.assertIn("time limit (3000ms)", err)
        code, _, err = await self.cli("maxima", "x" * (1024 * 1024 + 1) + ";")
        self.assertEqual((code, len(err.splitlines())), (cli.EXIT_REFUSED, 1), err)
        self.assertIn("413", err)
        code, _, err = await self.cli("maxima", 'for i thru 20000 do print("many lines of output")$')
        self.assertEqual((code, len(err.splitlines())), (cli.EXIT_SERVER, 1), err)
        self.assertIn("output limit", err)

    @async_test
    async def test_maxima_client_from_python(self):
        answer = await MaximaClient(reactor, self.server.url).evaluate("display2d:false$ expand((a+b)^2);", 5000)
        self.assertEqual((answer.status, answer.output, answer.plots), (200, "b^2+2*a*b+a^2\n", {}))
        self.assertTrue(answer.body.startswith("\n(%i1)"), answer.body)

    # -- Asymptote
    @async_test
    async def test_asy_formats_are_written_and_valid(self):
        main = self.write("pic.asy", b"import other;\ndraw(scale(r)*unitcircle);\nwrite('drawn');\n")
        other = self.write("other.asy", b"real r = 20;\n")
        for fmt in ("svg", "pdf", "png"):
            out = os.path.join(self.dir, f"out.{fmt}")
            code, stdout, err = await self.cli("asy", "-o", out, main, other)  # the format from -o's name
            self.assertEqual((code, stdout), (0, "drawn\n"), err)
            with open(out, "rb") as f:
                data = f.read()
            if fmt == "svg":
                self.assertTrue(data.lstrip().startswith(tuple(SVG)), data[:80])
                ET.fromstring(data)
            else:
                self.assertTrue(data.startswith(MAGIC[fmt]), data[:16])
            self.assertIn("running", err)
            self.assertIn(f"wrote {out}", err)
        # Without -o: MAIN.FORMAT in the current directory.
        code, _, err = await self.cli("asy", "-f", "pdf", "-q", main, other)
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(open(os.path.join(self.dir, "pic.pdf"), "rb").read().startswith(b"%PDF"))

    @async_test
    async def test_asy_syntax_error_gives_its_line_and_column(self):
        main = self.write("broken.asy", b'draw((0,0)--(1,1));\nlabel("x";\n')
        code, _, err = await self.cli("asy", main)
        self.assertEqual(code, cli.EXIT_FAILED, err)
        self.assertIn("broken.asy: 2.10: syntax error", err.splitlines()[-1])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "broken.svg")))
        result = await within(defer.ensureDeferred(AsyClient(reactor, self.server.url).render(
            {"broken.asy": open(main, "rb").read()}, "broken.asy")))  # fmt: skip
        self.assertFalse(result.success)
        self.assertEqual(result.location, Location("broken.asy", 2, 10, "syntax error"))

    @async_test
    async def test_asy_message_size_limit(self):
        """Images come in one message: the client's limit bounds it (64 MiB by
        default; autobahn's own default is no limit)."""
        files = {"big.asy": b"for (int i=0; i<200; ++i) dot((i,0));\n"}
        self.assertEqual(AsyClient(reactor).max_message, 64 << 20)
        result = await within(defer.ensureDeferred(AsyClient(reactor, self.server.url).render(files, "big.asy")))
        self.assertGreater(len(result.image), 4000)
        small = AsyClient(reactor, self.server.url, max_message=4000)
        with self.assertRaises(ConnectionFailed) as caught:
            await within(defer.ensureDeferred(small.render(files, "big.asy")))
        self.assertIn("payload", str(caught.exception).lower())

    @async_test
    async def test_asy_denied_bad_file_name(self):
        code, _, err = await self.cli("asy", self.write("bad name.asy", b"draw(unitcircle);"))
        self.assertEqual((code, len(err.splitlines())), (cli.EXIT_REFUSED, 1), err)
        self.assertIn("bad file name", err)

    @async_test
    async def test_asy_queue_progress(self):
        """With one runner busy, a second render waits: the client sees the
        queue's estimate, then its start."""
        client = AsyClient(reactor, self.server.url)
        first_events = []
        first = defer.ensureDeferred(
            client.render({"slow.asy": SLOW}, "slow.asy", timeout="medium", progress=first_events.append)
        )  # medium: a default task would be downgraded to fast when the queue forms
        for _ in range(200):  # until the first one runs
            if first_events:
                break
            await deferLater(0.02)
        self.assertEqual([e.passed for e in first_events], [True])
        quick = self.write("quick.asy", b"draw(unitcircle); // never rendered before: not in the render cache")
        code, _, err = await self.cli("asy", "--timeout", "fast", "-o", os.path.join(self.dir, "quick.svg"), quick)
        self.assertEqual(code, 0, err)
        lines = err.splitlines()
        self.assertTrue(lines[0].startswith("mathrun: queued (position 1)"), err)
        self.assertIn("running", lines[1])
        self.assertTrue((await within(first)).success)

    @async_test
    async def test_asy_restore_uploads_only_what_the_server_lacks(self):
        fresh = f"// {time.time_ns()}\ndraw(unitcircle);\n".encode()
        client = AsyClient(reactor, self.server.url)
        first = await within(defer.ensureDeferred(client.render({"m.asy": fresh}, "m.asy", restore=True)))
        self.assertEqual((first.success, first.uploaded), (True, ["m.asy"]))  # asked for by `missing`
        second = await within(defer.ensureDeferred(client.render({"m.asy": fresh}, "m.asy", restore=True)))
        self.assertEqual((second.success, second.uploaded), (True, []))
        self.assertEqual(second.image, first.image)

    # -- health, and the console script itself
    @async_test
    async def test_health(self):
        code, out, _ = await self.cli("health", "--deep")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("ok; job users"), out)
        code, out, _ = await self.cli("health", "--json")
        self.assertEqual(json.loads(out)["maxima"]["default"]["mother"], "ready")

    def test_console_script(self):
        self.assertTrue(os.access(MATHRUN, os.X_OK), "the set-up step's pip install -e . makes .venv/bin/mathrun")
        url = ["--url", self.server.url]
        r = subprocess.run([MATHRUN, "asy", *url, "-o", os.path.join(self.dir, "c.png"), "-"],
                           input=b"draw(unitcircle);", capture_output=True, timeout=60)  # fmt: skip
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(open(os.path.join(self.dir, "c.png"), "rb").read().startswith(MAGIC["png"]))
        r = subprocess.run([MATHRUN, "maxima", *url, "--timeout", "300", "(for i:1 thru 10^9 do x:i, 1);"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        self.assertEqual(r.returncode, cli.EXIT_TIMEOUT, r.stderr)
        self.assertEqual(r.stderr.count("\n"), 1, r.stderr)


def deferLater(seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


class FakeSession:
    """Records what a render sends; closing is the test's to do."""

    def __init__(self):
        self.sent, self.dropped = [], False

    def sendMessage(self, data, isBinary):
        self.sent.append(data if isBinary else data.decode())

    def dropConnection(self, abort=False):
        self.dropped = True


class RenderProtocolTests(unittest.TestCase):
    """The client's side of the queue protocol, frame by frame."""

    def render(self, restore=False):
        from mathrun.client.asy import _Render

        render = _Render({"a.asy": b"A", "b.asy": b"B"}, "a.asy", {"format": "svg"}, None, restore)
        session = FakeSession()
        render.opened(session)
        return render, session

    def test_restore_then_missing_uploads_that_file_and_runs_again(self):
        render, session = self.render(restore=True)
        verbs = [m.split(" ")[0] for m in session.sent]
        self.assertEqual(verbs, ["add", "add", "options", "run"])
        self.assertTrue(all(json.loads(m[4:])["restore"] for m in session.sent[:2]))
        del session.sent[:]
        render.frame(b'missing [{"filename": "b.asy", "hash": "x"}]', False)
        self.assertEqual(session.sent[1:], [b"B", "run"])
        self.assertFalse(json.loads(session.sent[0][4:]).get("restore", False))
        render.frame(b'output {"stream": "stderr"}', False)
        render.frame(b"oops", True)
        render.frame(b'result {"format": "svg"}', False)
        render.frame(b"<svg/>", True)
        render.frame(b'complete {"success": true, "time": 12}', False)
        render.closed(1000, None)
        result = self.successResultOf(render.done)
        self.assertEqual(
            (result.stderr, result.image, result.time_ms, result.uploaded), (b"oops", b"<svg/>", 12, ["b.asy"])
        )

    def test_broken_frames_end_the_render(self):
        for frames in ([(b"stray", True)], [(b"queue [1]", False)], [(b"complete {no json", False)],
                       [(b"missing []", False), (b"missing []", False)]):  # fmt: skip
            render, session = self.render()
            for data, binary in frames:
                render.frame(data, binary)
            self.assertTrue(session.dropped, frames)
            render.closed(1006, "dropped")
            self.failureResultOf(render.done, ConnectionFailed)
        render, _ = self.render()
        render.frame(b'denied {"error": "bad file name"}', False)
        render.closed(1000, None)
        self.assertEqual(str(self.failureResultOf(render.done, AsyDenied).value), "bad file name")
