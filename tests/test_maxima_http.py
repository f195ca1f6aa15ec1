"""Maxima over HTTP, end to end: a real SBCL mother, real forked children as
job users, real gnuplot, a real HTTP port, driven as STACK drives it."""

from __future__ import annotations

import glob
import io
import json
import os
import socket
import xml.etree.ElementTree as ET
import zipfile

import treq
from prometheus_client import CollectorRegistry
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from mathrun.maxima.config import DEFAULT_CORE, MaximaConfig
from mathrun.maxima.service import MaximaService
from mathrun.metrics import SandboxMetrics
from mathrun.web.site import build_site

from .helpers import (
    PYTHON,
    ROOT,
    PeakCounter,
    async_test,
    children_named,
    children_of,
    make_sandbox,
    namespace_members,
    pid_namespace,
    processes_of,
    temp_dir,
    within,
)

HERE = os.path.dirname(os.path.abspath(__file__))

if not os.path.exists(DEFAULT_CORE):
    raise unittest.SkipTest(f"no Maxima mother core at {DEFAULT_CORE}: run the set-up step")


class MaximaServer:
    """A sandbox, a Maxima service and the site on an ephemeral port."""

    def __init__(self, testcase, jobs=6, sandbox=None, **config):
        config.setdefault("ready", 2)
        # The quiet form (--maxima-quiet) unless a test asks for goemaxima's.
        config.setdefault("labels", False)
        # Cores of the tests' library sets stay with the test.
        config.setdefault("core_cache", os.path.join(temp_dir(testcase), "cores"))
        self.sandbox = make_sandbox(testcase, jobs=jobs, **(sandbox or {}))
        self.registry = CollectorRegistry()
        SandboxMetrics(self.registry, self.sandbox)
        self.config = MaximaConfig(**config)
        self.service = MaximaService(self.sandbox, self.config, reactor)
        self.service.register_metrics(self.registry)
        self.pool = next(iter(self.service.pools.values()))
        self.service.startService()
        testcase.addCleanup(lambda: within(self.service.stopService()))
        site = build_site(
            self.sandbox, self.registry, [("maxima", self.service.resource)], reports={"maxima": self.service.snapshot}
        )
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        testcase.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/maxima"

    async def until(self, predicate, what: str, seconds: float = 30):
        for _ in range(int(seconds / 0.02)):
            if predicate():
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"timed out waiting until {what() if callable(what) else what}")

    async def ready(self):
        await self.until(lambda: len(self.pool.ready) >= self.pool.target, "children are ready")

    async def post(self, input=None, timeout="10000", **fields):
        data = dict(fields)
        if input is not None:
            data["input"] = input
        if timeout is not None:
            data["timeout"] = timeout
        response = await within(treq.post(self.url, data=data, persistent=False))
        return response.code, response.headers, await within(treq.content(response))

    async def quiet(self):
        """Wait until every finished job is cleaned up, then check that only
        the ready children's users run anything and hold a workspace."""
        pools = list(self.service.pools.values())
        await self.until(
            lambda: all(not p._releasing and not p.busy and not p.spawning for p in pools),
            lambda: (
                "cleanups are done: (releasing, busy, spawning) = "
                + repr([(len(p._releasing), len(p.busy), p.spawning) for p in pools])
            ),
        )
        waiting = {child.lease.user for p in pools for child in p.ready}
        for user in self.sandbox.pool._all:
            if user in waiting:
                continue
            root = os.path.join(self.sandbox.job_root, user.name)
            if self.sandbox.privileged:
                assert processes_of(user.uid) == [], f"processes of {user.name} survived"
                assert not os.path.ismount(root), f"the workspace of {user.name} is still mounted"
            elif os.path.isdir(os.path.join(root, "work")):  # a slot never used has no workspace yet
                assert not os.listdir(os.path.join(root, "work")), f"files of {user.name} survived"


class HttpApiTests(unittest.TestCase):
    """The API as STACK and goemaxima's other clients use it."""

    def setUp(self):
        self.server = MaximaServer(self)

    @async_test
    async def test_stack_health_check_expressions(self):
        code, headers, body = await self.server.post(
            "display2d: false$ print(diff(x^n,x))$ print(trigsimp(sin(x)^2+cos(x)^2))$\n"
            "print(build_info()@version)$\n"
            'load("stats")$ load("distrib")$ load("descriptive")$ load("simplex")$\n'
            "print(mean([1,2,3]), cdf_normal(0,0,1), maximize_lp(x, [x<=1]))$\n"
        )
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/plain;charset=UTF-8"])
        lines = [line.strip() for line in body.decode().splitlines()]
        self.assertEqual(lines, ["n*x^(n-1)", "1", "5.46.0", "2 1/2 [1,[x = 1]]"])

    @async_test
    async def test_output_is_not_echoed_and_ends_with_the_job(self):
        code, _, body = await self.server.post('print("[[marker]]", 6*7)$')
        self.assertEqual((code, body), (200, b"[[marker]] 42 \n"))

    @async_test
    async def test_fields_from_the_query_string_and_multipart(self):
        response = await within(treq.get(self.server.url + "?input=2%2B3%3B&timeout=5000", persistent=False))
        self.assertEqual((response.code, (await treq.content(response)).strip()), (200, b"5"))
        response = await within(
            treq.post(
                self.server.url,
                files={"input": ("x", io.BytesIO(b"7*6;"))},
                data={"timeout": "5000"},
                persistent=False,
            )
        )
        self.assertEqual((response.code, (await treq.content(response)).strip()), (200, b"42"))

    @async_test
    async def test_expect_100_continue(self):
        body = b"timeout=5000&input=3%2A3%3B"
        head = (
            b"POST /maxima HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        )

        def talk():
            with socket.create_connection(("127.0.0.1", self.server.port.getHost().port), timeout=20) as s:
                s.sendall(head)
                interim = s.recv(100)
                s.sendall(body)
                rest = b""
                while chunk := s.recv(65536):
                    rest += chunk
                return interim, rest

        interim, rest = await within(threads.deferToThread(talk))
        self.assertTrue(interim.startswith(b"HTTP/1.1 100 Continue"), interim)
        self.assertTrue(rest.startswith(b"HTTP/1.1 200 OK"), rest)
        self.assertTrue(rest.rstrip().endswith(b"9"), rest)

    @async_test
    async def test_get_without_input_is_the_info_line(self):
        response = await within(treq.get(self.server.url + "/anything", persistent=False))
        body = await treq.content(response)
        self.assertEqual(response.code, 200)
        self.assertTrue(body.startswith(b"Hostname: "), body)
        self.assertIn(b"version: mathrun", body)

    @async_test
    async def test_health_probe(self):
        response = await within(treq.get(self.server.url + "?health=1", persistent=False))
        # goemaxima's check: the file it wrote, printed back.
        self.assertEqual((response.code, (await treq.content(response)).strip()), (200, b'"healthcheck successful";'))

    @async_test
    async def test_invalid_timeouts_are_400(self):
        for timeout in (None, "", "abc", "-5", "1.5"):
            code, headers, body = await self.server.post("1+1;", timeout=timeout)
            self.assertEqual((code, body), (400, b"400 - bad request (invalid timeout)\n"), timeout)
            self.assertEqual(headers.getRawHeaders("content-type"), ["text/plain;charset=UTF-8"])

    @async_test
    async def test_ploturlbase_sets_url_base(self):
        _, _, body = await self.server.post("print(URL_BASE)$", ploturlbase="https://moodle.example/plots/")
        self.assertEqual(body.strip(), b"https://moodle.example/plots/")
        _, _, body = await self.server.post("print(URL_BASE)$", ploturlbase="!ploturl!")
        self.assertEqual(body.strip(), b"!ploturl!")

    @async_test
    async def test_version_is_accepted(self):
        code, _, body = await self.server.post("1+1;", version="2023121100")
        self.assertEqual((code, body.strip()), (200, b"2"))

    @async_test
    async def test_plot_comes_back_in_a_zip(self):
        code, headers, body = await self.server.post(
            'f: sconcat(IMAGE_DIR, "plot1.svg")$\n'
            "plot2d(sin(x), [x, 0, 2*%pi], [svg_file, f], [gnuplot_term, svg])$\n"
            'print(sconcat(URL_BASE, "plot1.svg"))$\n',
            ploturlbase="https://moodle.example/p/",
        )
        self.assertEqual(code, 200, body[:500])
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/zip"], body[:2000])
        archive = zipfile.ZipFile(io.BytesIO(body))
        self.assertEqual(sorted(archive.namelist()), ["OUTPUT", "plot1.svg"])
        self.assertIn(b"https://moodle.example/p/plot1.svg", archive.read("OUTPUT"))
        svg = ET.fromstring(archive.read("plot1.svg"))
        self.assertTrue(svg.tag.endswith("svg"), svg.tag)

    @async_test
    async def test_every_child_has_its_own_random_state(self):
        answers = set()
        for _ in range(3):
            code, _, body = await self.server.post("random(10^15);")
            self.assertEqual(code, 200, body[:300])  # an error twice is not "the same random state"
            answers.add(body.strip())
        self.assertEqual(len(answers), 3, answers)

    @async_test
    async def test_questions_become_errors(self):
        code, _, body = await self.server.post("integrate(x^a, x);")
        self.assertEqual(code, 200)
        self.assertIn(b"Maxima asked a question", body)

    @async_test
    async def test_an_input_larger_than_a_pipe_arrives_whole(self):
        """What the first write does not fit into the child's pipe (64 KiB)
        follows as the child reads it."""
        code, _, body = await self.server.post('s: "' + "a" * 300000 + '"$ slength(s);')
        self.assertEqual(code, 200, body[:200])
        self.assertIn(b"300000", body)

    @async_test
    async def test_oversized_input_is_413(self):
        code, headers, body = await self.server.post("x" * (self.server.config.max_input_bytes + 1) + ";")
        self.assertEqual(code, 413)
        self.assertIn(b"input too large", body)
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/plain;charset=UTF-8"])

    @async_test
    async def test_health_reports_the_mother_and_children(self):
        await self.server.ready()
        response = await within(treq.get(self.server.url.replace("/maxima", "/health"), persistent=False))
        state = json.loads(await treq.content(response))["maxima"]["default"]
        self.assertEqual((state["mother"], state["ready"], state["busy"]), ("ready", 2, 0))

    @async_test
    async def test_a_retired_child_is_gone_before_its_cleanup(self):
        await self.server.ready()
        child = self.server.pool.ready[0]
        pid = child.pid
        child.kill()
        await within(child.exited())
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        self.assertIn(state, ("gone", "Z", "X"))
        await self.server.quiet()

    @async_test
    async def test_metrics(self):
        await self.server.post("1+1;")
        await self.server.post("1+1;", timeout="x")
        response = await within(treq.get(self.server.url.replace("/maxima", "/metrics"), persistent=False))
        text = (await treq.content(response)).decode()
        self.assertIn('mathrun_maxima_responses_total{result="success"} 1.0', text)
        self.assertIn('mathrun_maxima_responses_total{result="bad_request"} 1.0', text)
        self.assertIn("mathrun_maxima_response_seconds_count 1.0", text)
        self.assertIn("mathrun_maxima_queue_wait_seconds_count 1.0", text)
        self.assertIn("mathrun_maxima_spawn_seconds_count", text)
        self.assertIn('mathrun_maxima_children{state="ready"}', text)
        # Maxima children are sandbox jobs like any other: counted, and logged.
        self.assertIn('mathrun_jobs_total{frontend="maxima",status="ok"} 1.0', text)


class LibraryVersionTests(unittest.TestCase):
    @async_test(timeout=180)
    async def test_version_picks_the_mother_with_that_library(self):
        directory = temp_dir(self)
        libraries = {}
        for version, tag in (("2024012900", "alpha"), ("2023121100", "beta")):
            path = os.path.join(directory, f"{tag}.mac")
            with open(path, "w") as f:
                f.write(f'libtag: "{tag}"$\nlibfun(x) := x^2$\n')
            libraries[version] = [path]
        server = MaximaServer(self, jobs=6, ready=1, versions=libraries)
        pools = server.service.pools.values()
        await server.until(lambda: all(p.mother.ready for p in pools), "the mothers are ready", 150)
        answers = []
        for version in ("2023121100", "2024012900", None, "1999"):
            fields = {"version": version} if version else {}
            code, _, body = await server.post("print(libtag, libfun(3))$", **fields)
            answers.append((code, body.strip()))
        self.assertEqual(answers, [(200, b"beta 9"), (200, b"alpha 9"), (200, b"alpha 9"), (200, b"alpha 9")])
        self.assertEqual(len({pool.mother.pid for pool in server.service.pools.values()}), 2)
        await server.quiet()


class GoemaximaOutputTests(unittest.TestCase):
    """goemaxima answers with Maxima's REPL form: the child's first prompt,
    each displayed result under its label, and the next prompt; numbers
    start at 1 in mathrun's children (goemaxima's count the loads done in
    its mother: 7 with STACK)."""

    @async_test(timeout=120)
    async def test_repl_form_on_a_table_of_inputs(self):
        server = MaximaServer(self, jobs=4, ready=1, labels=True)
        cases = [
            ("display2d:false$ integrate(x^2,x);", b"\n(%i1) \n(%o2) x^3/3\n(%i3) "),
            ("display2d:false$ a:1; b:2;", b"\n(%i1) \n(%o2) 1\n(%o3) 2\n(%i4) "),
            ("1+1$", b"\n(%i1) \n(%i2) "),
            ('print("hi")$', b"\n(%i1) \nhi \n(%i2) "),
            (
                "x^2;",
                b"\n(%i1) \n                                       2\n(%o1)                                 x\n(%i2) ",
            ),
        ]
        for text, expected in cases:
            code, _, body = await server.post(text, ploturlbase="!ploturl!")  # as STACK sends it
            self.assertEqual((code, body), (200, expected), text)
        # Without ploturlbase, goemaxima runs URL_BASE: ""$ first: one label more.
        code, _, body = await server.post("1+1$")
        self.assertEqual(body, b"\n(%i1) \n(%i2) \n(%i3) ")
        code, _, body = await server.post("foo(;", ploturlbase="!ploturl!")
        self.assertEqual(code, 200)
        self.assertTrue(body.startswith(b"\n(%i1) \nincorrect syntax: Premature termination of input"), body)
        self.assertTrue(body.endswith(b"\n(%i1) "), body)
        # maxima_tempdir ends with a slash (STACK writes concat(maxima_tempdir, name)).
        code, _, body = await server.post("display2d:false$ maxima_tempdir;", ploturlbase="!ploturl!")
        self.assertRegex(body, rb'^\n\(%i1\) \n\(%o2\) "/.*/work/"\n\(%i3\) $')
        # goemaxima's health check, and its answer.
        response = await within(treq.get(server.url + "?health=1", persistent=False))
        body = await treq.content(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b'\n(%i1) \n(%i2) \n(%i3) \n(%i4) \n"healthcheck successful";\n(%i5) ')
        await server.quiet()


class StackLibraryTests(unittest.TestCase):
    """STACK's library as an operator has it, through --maxima-stack: the
    search paths set up, saved into a core, routed by version."""

    @async_test(timeout=180)
    async def test_stack_directory_is_saved_into_a_core_and_routed_by_version(self):
        stack = os.path.join(HERE, "stacklike", "maxima")
        server = MaximaServer(self, jobs=6, ready=1, stack={"": stack, "2024010100": stack})
        self.assertEqual(list(server.service.pools), ["2099010100", "2024010100"])
        pools = server.service.pools.values()
        await server.until(lambda: all(p.mother.ready for p in pools), "the mothers are ready", 150)
        # Both versions have the same library set: one core, built once.
        self.assertEqual(len({p.mother.core for p in pools}), 1)
        code, _, body = await server.post("print(stackfun(20), stackmaximaversion)$", version="2099010100")
        self.assertEqual((code, body.split()), (200, [b"41", b"2099010100"]))
        # What STACK's answer tests autoload is in the core: defined before
        # any call (an autoload would only define it at the first), and it works.
        code, _, body = await server.post(
            "print(member(collectterms, map(op, functions)))$ print(string(collectterms(a*x+a*y, a)))$",
            version="2099010100",
        )
        self.assertEqual((code, body.split()), (200, [b"true", b"a*(y+x)"]))
        for pool in server.service.pools.values():
            # Run from a saved core, not from the base core with loads at start.
            self.assertTrue(pool.mother.core.startswith(server.config.core_cache), pool.mother.core)
            self.assertTrue(os.path.exists(pool.mother.core))
        response = await within(treq.get(server.url.replace("/maxima", "/health"), persistent=False))
        state = json.loads(await treq.content(response))
        self.assertEqual(state["status"], "ok")
        self.assertGreater(state["maxima"]["2099010100"]["pss_bytes"], 1 << 20)
        await server.quiet()

    @async_test(timeout=180)
    async def test_a_library_that_fails_to_load_fails_the_mother_loudly(self):
        broken = os.path.join(HERE, "stacklike", "broken")
        server = MaximaServer(self, jobs=3, ready=1, stack={"": broken}, queue_wait=1.0)
        pool = server.service.pools["2099020200"]
        await server.until(lambda: pool.mother.error is not None, "the core build to fail", 120)
        self.assertIn("stacklike_missing_part", pool.mother.error)
        self.assertFalse(pool.mother.ready)
        response = await within(treq.get(server.url.replace("/maxima", "/health"), persistent=False))
        self.assertEqual(response.code, 503)
        state = json.loads(await treq.content(response))
        self.assertEqual(state["status"], "failing")
        self.assertIn("stacklike_missing_part", state["maxima"]["failing"]["2099020200"])
        code, _, _ = await server.post("1+1;")
        self.assertEqual(code, 503)


class HostileInputTests(unittest.TestCase):
    """Each ends with the right status and leaves nothing behind."""

    def setUp(self):
        self.server = MaximaServer(self, max_timeout_ms=4000, memory_bytes=1200 << 20)

    @async_test
    async def test_timeout_is_416_with_the_output_so_far(self):
        code, headers, body = await self.server.post('print("so far")$ while true do 1$', timeout="1000")
        self.assertEqual(code, 416)
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/plain;charset=UTF-8"])
        self.assertEqual(body, b"so far \n")
        await self.server.quiet()

    @async_test
    async def test_timeout_is_capped_at_the_maximum(self):
        code, _, _ = await self.server.post("while true do 1$", timeout="1000000")
        self.assertEqual(code, 416)
        await self.server.quiet()

    @async_test
    async def test_fork_bomb(self):
        code, _, body = await self.server.post('system("b(){ b|b& };b")$ print("after")$', timeout="3000")
        self.assertIn(code, (200, 416))
        await self.server.quiet()

    @async_test
    async def test_lisp_heap_exhaustion_is_a_maxima_error(self):
        code, _, body = await self.server.post("a: make_array(any, 3*10^8)$ print(1+1)$")
        self.assertEqual(code, 200)
        self.assertIn(b"Heap exhausted", body)
        self.assertTrue(body.rstrip().endswith(b"2"), body[-200:])
        await self.server.quiet()

    @async_test
    async def test_memory_hog_outside_lisp_is_killed(self):
        if not self.server.sandbox.cgroups:
            raise unittest.SkipTest("no memory cgroup on this host")
        code, _, body = await self.server.post(
            'system("/usr/bin/python3 -c \\"x = bytearray(3 << 30)\\"")$', timeout="4000"
        )
        self.assertEqual(code, 500)
        self.assertIn(b"memory limit of", body)
        await self.server.quiet()

    @async_test
    async def test_ten_megabytes_of_output(self):
        code, _, body = await self.server.post('for i thru 400000 do print("xxxxxxxxxxxxxxxxxxxxxxx")$')
        self.assertEqual(code, 500)
        self.assertIn(b"output limit of", body)
        await self.server.quiet()

    @async_test
    async def test_a_job_cannot_read_another_jobs_files(self):
        if not ROOT:
            raise unittest.SkipTest("needs job users")
        writer = defer.ensureDeferred(
            self.server.post(
                'with_stdout(sconcat(maxima_tempdir, "/secret.txt"), print("the-secret"))$ while true do 1$',
                timeout="3000",
            )
        )
        pattern = os.path.join(self.server.sandbox.job_root, "*", "work", "secret.txt")
        await self.server.until(lambda: glob.glob(pattern), "the secret is written")
        (path,) = glob.glob(pattern)
        code, _, body = await self.server.post(f'printfile("{path}")$ print(file_search("{path}"))$')
        self.assertEqual(code, 200)
        self.assertNotIn(b"the-secret", body)
        self.assertIn(b"not found", body)  # printfile and file_search see no file there
        code, _, _ = await writer
        self.assertEqual(code, 416)
        await self.server.quiet()


def _keepers_of(mother: int) -> list[int]:
    """The slot keepers the mother started (they are its children)."""
    return children_named(mother, "maxima-keeper")


class LoadTests(unittest.TestCase):
    @async_test
    async def test_32_concurrent_requests(self):
        server = MaximaServer(self, jobs=8, ready=3)
        await server.ready()
        answers = await within(
            defer.gatherResults([defer.ensureDeferred(server.post(f"{n}^2+{n};")) for n in range(32)])
        )
        for n, (code, _, body) in enumerate(answers):
            self.assertEqual((code, body.strip()), (200, str(n * n + n).encode()))
        await server.quiet()

    @async_test
    async def test_mother_killed_mid_load_recovers(self):
        server = MaximaServer(self, jobs=6, ready=2)
        await server.ready()
        first = server.pool.mother.pid
        requests = [defer.ensureDeferred(server.post(f"{n}*1000;")) for n in range(24)]
        await task.deferLater(reactor, 0.05, lambda: None)
        os.kill(first, 9)
        answers = await within(defer.gatherResults(requests))
        self.assertEqual([code for code, _, _ in answers], [200] * 24)
        self.assertEqual([body.strip() for _, _, body in answers], [str(n * 1000).encode() for n in range(24)])
        await server.until(lambda: server.pool.mother.ready, "the mother is back")
        self.assertNotEqual(server.pool.mother.pid, first)
        self.assertEqual(server.pool.mother.restarts, 1)
        code, _, body = await server.post("2^10;")
        self.assertEqual((code, body.strip()), (200, b"1024"))
        await server.quiet()

    @async_test
    async def test_slot_keepers_come_back_and_leave_with_their_mother(self):
        if not ROOT:
            raise unittest.SkipTest("slot keepers are root's")
        server = MaximaServer(self, jobs=4, ready=2)
        await server.ready()
        mother = server.pool.mother.pid
        keepers = _keepers_of(mother)
        self.assertGreaterEqual(len(keepers), 2)
        # A ready child is in its slot keeper's PID namespace, which sees only that slot.
        child = server.pool.ready[0]
        self.assertIn(pid_namespace(child.pid), [pid_namespace(k) for k in keepers])
        killed = {pid_namespace(k) for k in keepers} | {None}
        for keeper in keepers:
            os.kill(keeper, 9)  # ends its namespace, and the ready child in it
        # (A request that took a child in its last microseconds would get
        # what it printed: nothing.  The pool replaces the dead ones.)
        await server.until(
            lambda: server.pool.ready and all(pid_namespace(c.pid) not in killed for c in server.pool.ready),
            "the ready children are in new keepers' namespaces",
        )
        answers = [await server.post(f"{n}*7;") for n in range(4)]
        self.assertEqual([(c, b.strip()) for c, _, b in answers], [(200, str(n * 7).encode()) for n in range(4)])
        await server.until(lambda: len(_keepers_of(mother)) >= 2, "the keepers are started again")
        # Once their mother has ended, the keepers leave as soon as their slots are empty.
        old = _keepers_of(mother)
        os.kill(mother, 9)
        await server.until(lambda: server.pool.mother.ready and server.pool.mother.pid != mother, "a new mother")
        for _ in range(4):  # the old ready children are used up, and their slots cleaned
            code, _headers, body = await server.post("2+2;")
            self.assertEqual((code, body.strip()), (200, b"4"))
        await server.quiet()
        await server.until(lambda: not [k for k in old if os.path.exists(f"/proc/{k}")], "the old keepers left")

    @async_test
    async def test_overload_is_503_with_retry_after(self):
        server = MaximaServer(self, jobs=2, ready=1, queue_wait=0.5, max_timeout_ms=3000)
        await server.ready()
        busy = [defer.ensureDeferred(server.post("while true do 1$", timeout="3000")) for _ in range(2)]
        await server.until(lambda: len(server.pool.busy) == 2, "both users are busy")
        refused = await within(defer.gatherResults([defer.ensureDeferred(server.post("1+1;")) for _ in range(3)]))
        for code, headers, body in refused:
            self.assertEqual(code, 503)
            self.assertEqual(headers.getRawHeaders("retry-after"), ["1"])
            self.assertIn(b"busy", body)
        self.assertEqual([c for c, _, _ in await within(defer.gatherResults(busy))], [416, 416])
        await server.quiet()
        # The forks those requests asked for, once users are free, are not
        # kept beyond the ready target: one user stays free.
        await task.deferLater(reactor, 0.5, lambda: None)
        await server.quiet()
        self.assertEqual((len(server.pool.ready), server.sandbox.pool.free), (1, 1))


class UnprivilegedTests(unittest.TestCase):
    @async_test
    async def test_jobs_run_and_end_without_job_users(self):
        root = os.path.join(temp_dir(self), "jobs")
        server = MaximaServer(self, jobs=3, ready=1, sandbox={"privileged": False, "job_root": root})
        code, _, body = await server.post("print(maxima_tempdir)$ 6*7;")
        self.assertEqual(code, 200)
        self.assertRegex(body, rb"^" + root.encode() + rb"/self-\d+/work/\s+42\s*$")
        code, _, _ = await server.post("while true do 1$", timeout="500")
        self.assertEqual(code, 416)
        await server.quiet()

        def cwd_in_root():
            found = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if os.readlink(f"/proc/{pid}/cwd").startswith(root):
                        found.append(pid)
                except OSError:
                    pass
            return found

        # Only the ready child is left: the looping one was killed.
        await server.until(lambda: len(cwd_in_root()) == len(server.pool.ready), "the loop is killed")

    @async_test
    async def test_fork_bomb_stays_at_the_process_limit(self):
        root = os.path.join(temp_dir(self), "jobs")
        server = MaximaServer(self, jobs=3, ready=1, processes=24, sandbox={"privileged": False, "job_root": root})
        await server.ready()
        # The child's pid is its namespace's init, which no job may trace
        # (not dumpable): the namespace is read from the job, its child.
        (job,) = children_of(server.pool.ready[0].pid)
        namespace = pid_namespace(job)
        self.assertNotIn(namespace, (None, pid_namespace(os.getpid())))
        counter = PeakCounter(namespace)
        # Every process forks on and on, retrying when refused: the job sits at its limit.
        bomb = "import os, time\nwhile True:\n  try: os.fork()\n  except OSError: time.sleep(0.05)\n"
        code, _, _ = await server.post(f"system(\"{PYTHON} -c '{bomb}'\")$", timeout="3000")
        peak = counter.stop() - 1  # the namespace's init
        self.assertIn(code, (200, 416))
        self.assertLessEqual(peak, 24)
        self.assertGreaterEqual(peak, 16, "the bomb never came near its limit")
        await server.quiet()
        await server.until(lambda: not namespace_members(namespace), "the job's namespace is empty")


class DisconnectTests(unittest.TestCase):
    @async_test
    async def test_a_client_that_goes_away_stops_its_job(self):
        server = MaximaServer(self, jobs=3, ready=1)
        await server.ready()
        body = b"timeout=20000&input=while%20true%20do%201%24"
        head = (
            b"POST /maxima HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        sock = socket.create_connection(("127.0.0.1", server.port.getHost().port), timeout=20)
        sock.sendall(head + body)
        await server.until(lambda: server.pool.busy, "the job runs")
        sock.close()
        # Long before its 20 s timeout, the job is stopped and cleaned up.
        await server.until(lambda: not server.pool.busy, "the job is stopped", seconds=10)
        await server.quiet()
