"""The Maxima front end's logic without processes: the fork channel's
framing, the mother's restart policy, and the HTTP field handling, on fakes."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, error, main
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import server
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from mathrun.interfaces import IMaximaChild, IMaximaPool, IMother, ISandbox
from mathrun.maxima.child import EXIT_WAIT, OutputReader, _ExitWatch
from mathrun.maxima.config import MaximaConfig
from mathrun.maxima.http import MaximaResource
from mathrun.maxima.mother import ForkFailed, Mother, MotherProtocol, MotherUnavailable, maxima_string, preamble
from mathrun.maxima.pool import MaximaPool, PoolBusy
from mathrun.sandbox.pipes import write_now
from mathrun.sandbox.result import JobResult, Status

from .fakes import FakeProcessTransport, ProcessReactor


def unquote(literal: str) -> str:
    """Maxima's reading of a string literal (backslash escapes the next char)."""
    assert literal[0] == literal[-1] == '"'
    out, chars = [], iter(literal[1:-1])
    for c in chars:
        if c == "\\":
            out.append(next(chars))
        else:
            assert c != '"', "an unescaped quote ends the literal early"
            out.append(c)
    return "".join(out)


class StringLiteralTests(unittest.SynchronousTestCase):
    @given(st.text())
    def test_any_text_reads_back(self, text):
        self.assertEqual(unquote(maxima_string(text)), text)

    def test_preamble(self):
        config = MaximaConfig(fork_library='/x/"lib".so')
        text = preamble(config, "/run/mathrun/netns").decode()
        self.assertEqual(text, ':lisp (mathrun-mother:serve "/x/\\"lib\\".so" "/run/mathrun/netns" t)\n')
        quiet = preamble(MaximaConfig(fork_library="/l.so", labels=False), "/n").decode()
        self.assertEqual(quiet, ':lisp (mathrun-mother:serve "/l.so" "/n" nil)\n')


def ended(proto, code=1):
    proto.processEnded(Failure(error.ProcessTerminated(exitCode=code)))


class MotherProtocolTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.ends = []
        self.proto = MotherProtocol(self.ends.append)
        self.proto.makeConnection(FakeProcessTransport())

    def ready(self):
        self.proto.outReceived(b"loading stackmaxima...\nmathrun-mother ready 4242\n")
        return self.successResultOf(self.proto.ready)

    def test_ready_after_library_output(self):
        self.assertEqual(self.ready(), 4242)

    @given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
    def test_any_chunking_gives_the_same_answers(self, cuts):
        proto = MotherProtocol(lambda reason: None)
        proto.makeConnection(FakeProcessTransport())
        stream = b"banner\nmathrun-mother ready 7\nforked 1 100\nfailed 2 open inpipe: No such file\nforked 3 300\n"
        waiting = {t: proto.pending.setdefault(t, defer.Deferred()) for t in ("1", "2", "3")}
        position = 0
        for cut in cuts:
            proto.outReceived(stream[position : position + cut])
            position += cut
        proto.outReceived(stream[position:])
        self.assertEqual(self.successResultOf(proto.ready), 7)
        self.assertEqual(self.successResultOf(waiting["1"]), 100)
        self.assertEqual(str(self.failureResultOf(waiting["2"], ForkFailed).value), "open inpipe: No such file")
        self.assertEqual(self.successResultOf(waiting["3"]), 300)

    def test_a_forked_line_before_ready_is_not_an_answer(self):
        d = self.proto.pending.setdefault("1", defer.Deferred())
        self.proto.outReceived(b"forked 1 100\n")
        self.assertNoResult(d)

    def test_death_fails_everything_waiting(self):
        self.ready()
        d = self.proto.pending.setdefault("9", defer.Deferred())
        ended(self.proto)
        self.failureResultOf(d, MotherUnavailable)
        self.assertEqual(len(self.ends), 1)

    def test_death_at_start_fails_ready(self):
        ended(self.proto)
        self.failureResultOf(self.proto.ready, MotherUnavailable)


class MotherTests(unittest.SynchronousTestCase):
    """Restarts with doubling delays, as procmon does."""

    def setUp(self):
        self.reactor = ProcessReactor()
        config = MaximaConfig(core=__file__)  # any existing file
        self.mother = Mother(config, self.reactor, netns="/run/mathrun/netns")
        self.mother.start()

    def current(self):
        return self.reactor.spawned[-1][0]

    def test_starts_with_the_preamble_and_bounded_heap(self):
        proto, executable, args, env = self.reactor.spawned[0]
        self.assertIn("--dynamic-space-size", args)
        self.assertIn("--disable-ldb", args)
        self.assertIn("--lose-on-corruption", args)
        self.assertIn(b':lisp (mathrun-mother:serve "', proto.transport.written)
        self.assertIn(b'"/run/mathrun/netns" t)', proto.transport.written)
        self.assertFalse(self.mother.ready)

    def test_fork_before_ready_fails_at_once(self):
        self.failureResultOf(self.mother.fork(["1"]), MotherUnavailable)

    def test_fork_request_and_answer(self):
        self.current().outReceived(b"mathrun-mother ready 10\n")
        d = self.mother.fork(["1001", "1001", "/run/mathrun/jobs/u", "32", "100", "256", "32"])
        self.assertEqual(
            self.current().transport.written.splitlines()[-1], b"fork 1 1001 1001 /run/mathrun/jobs/u 32 100 256 32"
        )
        self.current().outReceived(b"forked 1 555\n")
        self.assertEqual(self.successResultOf(d), 555)

    def test_a_fork_asked_for_while_the_mother_dies_fails_at_once(self):
        # A waiting fork's errback asks for the next fork synchronously (as
        # an unprivileged cleanup does): it must fail too, not wait forever.
        self.current().outReceived(b"mathrun-mother ready 10\n")
        retried = []
        first = self.mother.fork(["1"])
        first.addErrback(lambda f: retried.append(self.mother.fork(["2"])))
        ended(self.current())
        self.assertEqual(len(retried), 1)
        self.failureResultOf(retried[0], MotherUnavailable)

    def test_restart_delays_double_then_reset_after_a_stable_run(self):
        delays = []
        for _ in range(4):
            ended(self.current())
            before = len(self.reactor.spawned)
            call = self.reactor.getDelayedCalls()[-1]
            delays.append(call.getTime() - self.reactor.seconds())
            self.reactor.advance(delays[-1])
            self.assertEqual(len(self.reactor.spawned), before + 1)
        self.assertEqual(delays, [1, 2, 4, 8])
        self.current().outReceived(b"mathrun-mother ready 11\n")
        self.reactor.advance(Mother.stable_after + 1)
        ended(self.current())
        self.assertEqual(self.reactor.getDelayedCalls()[-1].getTime() - self.reactor.seconds(), 1)
        self.assertEqual(self.mother.restarts, 5)

    def test_a_mother_stuck_at_start_is_killed(self):
        self.reactor.advance(self.mother.config.start_timeout)
        self.assertEqual(self.current().transport.signals, ["KILL"])

    def test_stop_closes_the_channel_and_does_not_restart(self):
        self.current().outReceived(b"mathrun-mother ready 10\n")
        d = self.mother.stop()
        self.assertTrue(self.current().transport.stdin_closed)
        ended(self.current(), 0)
        self.successResultOf(d)
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.spawned), 1)


@implementer(IMaximaPool)
class FakePool:
    def __init__(self, result=None, failure=None):
        self.calls = []
        self.result = result or JobResult(Status.OK, stdout=b"42\n")
        self.failure = failure

    async def evaluate(self, text, seconds):
        self.calls.append((text, seconds))
        if self.failure:
            raise self.failure
        return self.result


class ResourceTests(unittest.SynchronousTestCase):
    """Field handling of /maxima, exactly, on DummyRequests."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.config = MaximaConfig(max_input_bytes=100)
        self.pool = FakePool()
        self.other = FakePool(JobResult(Status.OK, stdout=b"other\n"))
        self.resource = MaximaResource({"default": self.pool, "2024": self.other}, self.config, self.reactor)

    def request(self, method=b"POST", **fields):
        request = DummyRequest([b""])
        request.method = method
        request.args = {k.encode(): [v.encode() if isinstance(v, str) else v] for k, v in fields.items()}
        body = self.resource.render(request)
        if body is not server.NOT_DONE_YET:
            request.write(body)
            request.finish()
        return request

    def answer(self, request):
        return request.responseCode or 200, b"".join(request.written)

    def test_info_line_for_get_without_input(self):
        code, body = self.answer(self.request(b"GET"))
        self.assertEqual(code, 200)
        self.assertRegex(body.decode(), r"^Hostname: .+, version: mathrun ")
        self.assertEqual(self.pool.calls, [])

    def test_timeout_in_milliseconds_and_capped(self):
        self.request(input="1+1;", timeout="2500")
        self.request(input="1+1;", timeout="99999999")
        self.assertEqual([s for _, s in self.pool.calls], [2.5, 30.0])

    @given(st.text(max_size=8).filter(lambda t: not (t.isascii() and t.isdigit())))
    def test_any_non_number_timeout_is_400(self, timeout):
        code, body = self.answer(self.request(input="1+1;", timeout=timeout))
        self.assertEqual((code, body), (400, b"400 - bad request (invalid timeout)\n"))

    def test_ploturlbase(self):
        self.request(input="p;", timeout="1000", ploturlbase='http://h/"x"/')
        self.request(input="p;", timeout="1000", ploturlbase="!ploturl!")
        self.request(input="p;", timeout="1000")  # none: as goemaxima, an empty one
        self.assertEqual(
            [t for t, _ in self.pool.calls], [b'URL_BASE: "http://h/\\"x\\"/"$\np;\n', b"p;\n", b'URL_BASE: ""$\np;\n']
        )

    def test_version_picks_a_pool_and_unknown_falls_back(self):
        self.request(input="1;", timeout="1000", version="2024")
        self.request(input="1;", timeout="1000", version="1999")
        self.assertEqual((len(self.other.calls), len(self.pool.calls)), (1, 1))

    def test_input_size_limit(self):
        code, _ = self.answer(self.request(input="x" * 100, timeout="1000"))
        self.assertEqual(code, 200)
        code, body = self.answer(self.request(input="x" * 101, timeout="1000"))
        self.assertEqual(code, 413)
        self.assertIn(b"at most 100", body)

    def test_results_become_statuses(self):
        cases = [
            (JobResult(Status.OK, stdout=b"out"), 200, b"text/plain;charset=UTF-8"),
            (JobResult(Status.OK, stdout=b"out", files=(("p.svg", b"<svg/>"),)), 200, b"application/zip"),
            (JobResult(Status.TIME_LIMIT, stdout=b"partial"), 416, b"text/plain;charset=UTF-8"),
            (JobResult(Status.TIME_LIMIT), 416, b"text/plain;charset=UTF-8"),
            (JobResult(Status.OUTPUT_LIMIT, stdout=b"x", detail="too much"), 500, b"text/plain;charset=UTF-8"),
            (JobResult(Status.MEMORY_LIMIT, stdout=b"x", detail="out of memory"), 500, b"text/plain;charset=UTF-8"),
        ]
        for result, code, content_type in cases:
            self.pool.result = result
            request = self.request(input="1;", timeout="1000")
            self.assertEqual(
                (request.responseCode, request.responseHeaders.getRawHeaders(b"content-type")),
                (code, [content_type]),
                result,
            )
            if code == 416:
                self.assertEqual(b"".join(request.written), result.stdout or b"416 - timeout\n")

    def test_busy_is_503_with_retry_after(self):
        self.pool.failure = PoolBusy("all Maxima children are busy")
        request = self.request(input="1;", timeout="1000")
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"retry-after"), [b"10"])


class FakeLease:
    def __init__(self, sandbox, user):
        self.sandbox = sandbox
        self.user = user
        self.released = False
        self.external_processes = False

    def release(self):
        if not self.released:
            self.released = True
            self.sandbox.pool.release(self.user)
        return defer.succeed(None)


@implementer(ISandbox)
class FakeSandbox:
    """Job users from a real SlotPool; leases without workspaces."""

    privileged = True

    def __init__(self, jobs):
        from mathrun.sandbox.pool import SlotPool

        self.config = type("Config", (), {"jobs": jobs, "network": False, "privileged": True})()
        self.pool = SlotPool([f"user-{n}" for n in range(1, jobs + 1)])
        self.netns = "/run/mathrun/netns"
        self.refusal = None

    def acquire(self, workspace_bytes=None):
        return self.pool.acquire().addCallback(lambda user: FakeLease(self, user))

    def try_acquire(self, workspace_bytes=None):
        user = self.pool.take()
        return None if user is None else FakeLease(self, user)


@implementer(IMaximaChild)
class FakeChild:
    """A child whose readiness and evaluation the test decides."""

    made: list = []

    def __init__(self, reactor, lease, config):
        self.lease = lease
        self.state = "spawning"
        self.ready = defer.Deferred()
        self.on_death = None
        self.evaluation = None
        self.job = None
        self.closed = False
        self.hurried = False
        FakeChild.made.append(self)

    def prepare(self):
        pass

    def fork_fields(self):
        return ["1", "1", "/root", "1", "1", "1", "1"]

    def forked(self, pid):
        self.pid = pid

    def hurry(self):
        self.hurried = True

    def become_ready(self):
        self.state = "ready"
        self.ready.callback(self)

    def evaluate(self, text, timeout):
        self.state = "running"
        self.evaluation = defer.Deferred()
        return self.evaluation

    def close(self):
        self.closed = True

    def kill(self):
        pass

    def exited(self):
        return defer.succeed(None)


@implementer(IMother)
class FakeMother:
    def __init__(self):
        self.on_ready = []
        self.ready = False
        self.error = self.pid = None
        self.forks = []
        self.killed = 0
        self.restarts = 0
        self.hurried = []  # each hurry(on) call

    def start(self):
        self.ready = True
        for f in self.on_ready:
            f()

    def stop(self):
        return defer.succeed(None)

    def kill(self):
        self.killed += 1

    def hurry(self, on):
        self.hurried.append(on)

    def fork(self, fields):
        d = defer.Deferred()
        self.forks.append(d)
        return d


class PoolTests(unittest.SynchronousTestCase):
    """MaximaPool's scheduling on fakes: exact, no processes."""

    def make(self, jobs=4, **config):
        FakeChild.made = []
        self.clock = MemoryReactorClock()
        self.sandbox = FakeSandbox(jobs)
        self.mother = FakeMother()
        config.setdefault("ready", 2)
        self.pool = MaximaPool(
            self.sandbox, MaximaConfig(**config), self.clock, mother=self.mother, child_factory=FakeChild
        )
        self.pool.start()

    def fork_all(self):
        """The mother answers every fork, and each child becomes ready."""
        while self.mother.forks:
            self.mother.forks.pop(0).callback(1234)
        for child in FakeChild.made:
            if child.state == "spawning":
                child.become_ready()

    def test_keeps_the_ready_target(self):
        self.make(jobs=4, ready=2)
        self.assertEqual(len(self.mother.forks), 2)
        self.fork_all()
        self.assertEqual((len(self.pool.ready), self.sandbox.pool.free), (2, 2))

    def test_target_leaves_one_job_user_to_the_others(self):
        self.make(jobs=2, ready=3)
        self.fork_all()
        self.assertEqual((self.pool.target, len(self.pool.ready), self.sandbox.pool.free), (1, 1, 1))

    def test_a_request_takes_a_child_and_it_is_replaced(self):
        self.make(jobs=4, ready=1)
        self.fork_all()
        d = defer.ensureDeferred(self.pool.evaluate(b"1+1;\n", 5))
        child = FakeChild.made[0]
        self.assertEqual(child.state, "running")
        # Its replacement is forked at once, while it runs.
        self.assertEqual((len(FakeChild.made), len(self.mother.forks)), (2, 1))
        child.evaluation.callback(JobResult(Status.OK, stdout=b"2\n"))
        self.assertEqual(self.successResultOf(d).stdout, b"2\n")
        # The answer first; the cleanup at the reactor's next turn.
        self.assertFalse(child.lease.released or child.closed)
        self.clock.advance(0)
        self.assertTrue(child.lease.released and child.closed)
        self.fork_all()
        self.assertEqual(len(self.pool.ready), 1)

    def test_waiting_is_bounded_and_abandoned_forks_are_cancelled(self):
        self.make(jobs=2, ready=1, queue_wait=2.0)
        self.fork_all()
        first = defer.ensureDeferred(self.pool.evaluate(b"a\n", 30))
        self.fork_all()  # the replacement takes the second user
        second = defer.ensureDeferred(self.pool.evaluate(b"b\n", 30))
        # No user left: the third request waits, and so does its fork.
        third = defer.ensureDeferred(self.pool.evaluate(b"c\n", 30))
        self.assertEqual((self.pool.spawning, self.sandbox.pool.waiting), (2, 2))
        self.clock.advance(2.0)
        self.failureResultOf(third, PoolBusy)
        # Gave up: the forks asked for it wait for no user any more.
        self.assertEqual((self.pool.spawning, self.sandbox.pool.waiting, len(self.pool.waiters)), (1, 1, 0))
        for d in (first, second):
            self.assertNoResult(d)

    def test_forks_hurry_only_while_a_request_waits(self):
        self.make(jobs=4, ready=1)
        self.fork_all()
        first = defer.ensureDeferred(self.pool.evaluate(b"a\n", 30))
        # The replacement was forked with nobody waiting: background work.
        self.assertEqual(self.mother.hurried, [])
        self.mother.forks.pop(0).callback(1234)
        self.assertFalse(FakeChild.made[1].hurried)
        # A second request finds no ready child: the starting one is on its path.
        second = defer.ensureDeferred(self.pool.evaluate(b"b\n", 30))
        self.assertEqual((self.mother.hurried, FakeChild.made[1].hurried), ([True], True))
        # A fork answered while the request still waits hurries at once.
        self.mother.forks.pop(0).callback(1235)
        self.assertTrue(FakeChild.made[2].hurried)
        FakeChild.made[1].become_ready()
        self.assertEqual(FakeChild.made[1].state, "running")
        self.assertEqual(self.mother.hurried, [True, False])
        for d in (first, second):
            self.assertNoResult(d)

    def test_a_restarted_mother_is_hurried_if_requests_wait(self):
        self.make(jobs=4, ready=1)
        waiting = defer.ensureDeferred(self.pool.evaluate(b"a\n", 30))
        self.assertEqual(self.mother.hurried, [True])
        self.mother.start()  # a new mother, niced again, while the request waits
        self.assertEqual(self.mother.hurried, [True, True])
        self.assertNoResult(waiting)

    def test_a_refusing_sandbox_forks_nothing_and_says_why(self):
        FakeChild.made = []
        self.clock = MemoryReactorClock()
        self.sandbox = FakeSandbox(4)
        self.sandbox.refusal = "jobs are refused, since their process count cannot be bounded: no user namespace"
        self.mother = FakeMother()
        self.pool = MaximaPool(self.sandbox, MaximaConfig(ready=2), self.clock, mother=self.mother)
        self.pool.start()
        result = self.successResultOf(defer.ensureDeferred(self.pool.evaluate(b"1+1;\n", 5)))
        self.assertEqual((result.status, result.detail), (Status.INTERNAL_ERROR, self.sandbox.refusal))
        self.assertEqual((self.mother.forks, self.sandbox.pool.free), ([], 4))

    def test_too_many_waiting_is_busy_at_once(self):
        self.make(jobs=2, ready=1, max_waiting=1)
        defer.ensureDeferred(self.pool.evaluate(b"a\n", 30))
        self.assertEqual(len(self.pool.waiters), 1)
        self.failureResultOf(defer.ensureDeferred(self.pool.evaluate(b"b\n", 30)), PoolBusy)

    def test_three_failed_forks_restart_the_mother(self):
        self.make(jobs=4, ready=1)
        for _ in range(3):
            self.mother.forks.pop(0).errback(ForkFailed("setresuid: Operation not permitted"))
            self.clock.advance(MaximaPool.retry_delay)
        self.assertEqual(self.mother.killed, 1)
        self.assertEqual(self.sandbox.pool.free, 3)  # each failed fork's user came back
        self.flushLoggedErrors(ForkFailed)

    def test_a_ready_child_that_dies_is_replaced(self):
        self.make(jobs=4, ready=1)
        self.fork_all()
        (child,) = FakeChild.made
        child.state = "done"
        child.on_death(child)
        self.assertTrue(child.lease.released)
        self.assertEqual((len(self.pool.ready), len(self.mother.forks)), (0, 1))


class _Writer:
    """The parts of Twisted's ProcessWriter that write_now looks at."""

    def __init__(self, fd: int):
        self.fd, self.connected, self.disconnecting = fd, 1, False
        self.dataBuffer, self._tempDataBuffer = b"", []


class _Transport:
    def __init__(self, writer):
        self.pipes = {0: writer}
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class WriteNowTests(unittest.TestCase):
    """A line to a helper process goes out at once, unless something is
    queued before it or the pipe is full: then the transport keeps order."""

    def setUp(self):
        self.r, self.w = os.pipe()
        os.set_blocking(self.w, False)
        self.addCleanup(os.close, self.r)
        self.addCleanup(os.close, self.w)
        self.transport = _Transport(_Writer(self.w))

    def test_written_at_once(self):
        write_now(self.transport, b"fork 1 x\n")
        self.assertEqual(os.read(self.r, 100), b"fork 1 x\n")
        self.assertEqual(self.transport.written, [])

    def test_queued_data_goes_first(self):
        self.transport.pipes[0]._tempDataBuffer = [b"earlier\n"]
        write_now(self.transport, b"later\n")
        self.assertEqual(self.transport.written, [b"later\n"])
        os.set_blocking(self.r, False)
        self.assertRaises(BlockingIOError, os.read, self.r, 100)

    def test_a_full_pipe_leaves_it_to_the_transport(self):
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(self.w, b"x" * 4096)
        write_now(self.transport, b"line\n")
        self.assertEqual(self.transport.written, [b"line\n"])

    def test_without_a_stdin_pipe_the_transport_writes(self):
        transport = _Transport(None)
        transport.pipes = {}
        write_now(transport, b"line\n")
        self.assertEqual(transport.written, [b"line\n"])


class ExitWatchTests(unittest.SynchronousTestCase):
    """The wait for a child's end before its user's cleanup, on a real
    process's pidfd and a fake clock."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.proc = subprocess.Popen(["sleep", "30"])
        self.addCleanup(self.proc.wait)
        self.addCleanup(self.proc.kill)
        self.fd = os.pidfd_open(self.proc.pid)

    def test_fires_when_the_process_ends(self):
        watch = _ExitWatch(self.clock, self.fd)
        self.assertIn(watch, self.clock.getReaders())
        done = []
        watch.done.addCallback(done.append)
        self.assertEqual(done, [])
        self.proc.kill()
        self.proc.wait()
        # The reactor would call doRead now: the pidfd is readable.
        self.assertTrue(select.select([self.fd], [], [], 5)[0])
        watch.doRead()
        self.assertEqual(done, [None])
        self.assertNotIn(watch, self.clock.getReaders())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        with self.assertRaises(OSError):
            os.fstat(self.fd)  # closed

    def test_gives_up_after_the_bound(self):
        watch = _ExitWatch(self.clock, self.fd)
        done = []
        watch.done.addCallback(done.append)
        self.clock.advance(EXIT_WAIT - 0.1)
        self.assertEqual(done, [])
        self.clock.advance(0.2)
        self.assertEqual(done, [None])
        self.assertNotIn(watch, self.clock.getReaders())
        self.assertIsNone(self.proc.poll(), "the process still runs: only the wait ended")


class OutputReaderTests(unittest.TestCase):
    """A child's last output and its end are read in one turn."""

    def reader(self):
        r, self.w = os.pipe()
        os.set_blocking(r, False)
        self.got, self.ended = [], []
        reader = OutputReader(MemoryReactorClock(), r, self.got.append, lambda: self.ended.append(True), True)
        self.addCleanup(reader.close)
        return reader

    def test_output_then_end_in_one_read(self):
        reader = self.reader()
        os.write(self.w, b"(%o1) 2\n")
        os.close(self.w)
        self.assertIs(reader.doRead(), main.CONNECTION_DONE)
        self.assertEqual(self.got, [b"(%o1) 2\n"])

    def test_open_pipe_waits_for_more(self):
        reader = self.reader()
        self.addCleanup(os.close, self.w)
        os.write(self.w, b"partial")
        self.assertIsNone(reader.doRead())
        self.assertEqual(self.got, [b"partial"])
