"""The VC server's line protocol and scheduling, with fakes: exact and fast."""

from __future__ import annotations

import ctypes
import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from mathrun.interfaces import IJob, ILease, ISandbox
from mathrun.sandbox import JobResult, Limits, SandboxConfig, Status
from mathrun.why3 import protocol as wire
from mathrun.why3.server import Why3Config, Why3Server

libc = ctypes.CDLL(None)


class ParseTests(unittest.TestCase):
    @given(st.text(alphabet=" \t+-0123456789.abc", max_size=25))
    def test_atoi_is_c_atoi(self, text):
        expected = libc.atoi(text.encode())
        self.assertEqual(wire.atoi(text), expected)

    def test_examples(self):
        self.assertEqual([wire.atoi(t) for t in ("2.9", "21.", "abc", " 7x", "-3")], [2, 21, 0, 7, -3])
        self.assertEqual(
            wire.parse_request("run;1;21.;1000;/usr/bin/z3;-smt2;/tmp/a b.smt2"),
            wire.Run("1", 21, 1000, "/usr/bin/z3", ("-smt2", "/tmp/a b.smt2")),
        )
        self.assertEqual(wire.parse_request("runstdin;x;0;0;cat;/tmp/in"), wire.Run("x", 0, 0, "cat", (), "/tmp/in"))
        self.assertEqual(wire.parse_request("parallel;4"), wire.Parallel(4))
        self.assertEqual(wire.parse_request("interrupt;7\r"), wire.Interrupt("7\r"))  # \r stays, as in C
        for bad in (
            "",
            "run;1;2;3",
            "runstdin;1;2;3;cmd",
            "parallel;0",
            "parallel;x",
            "parallel",
            "bogus;1",
            "interrupt",
        ):
            self.assertIsNone(wire.parse_request(bad), bad)

    @given(st.text(max_size=60))
    def test_never_crashes(self, line):
        wire.parse_request(line)

    def test_replies(self):
        self.assertEqual(wire.started("3"), b"S;3\n")
        self.assertEqual(wire.finished("3", 9, 1.234567, True, "/tmp/why3x"), b"F;3;9;1.23;1;/tmp/why3x\n")
        self.assertEqual(wire.finished("3", 0, 0.5, False, "/f", "%.6f"), b"F;3;0;0.500000;0;/f\n")


@implementer(IJob)
class FakeJob:
    def __init__(self, argv, limits, on_output, stdin=None, output_fd=None):
        self.argv, self.limits = argv, limits
        # What the prover writes: straight into the output file, as the real job's does.
        self.on_output = on_output or (lambda _stream, data: os.write(output_fd, data))
        self.stopped = None
        self.stdin = stdin or b""
        self._done = defer.Deferred()

    @property
    def done(self):
        return self._done

    def write(self, data):
        self.stdin += data

    def close_stdin(self):
        pass

    def stop(self, cause=Status.CANCELLED):
        self.stopped = cause
        self.end(JobResult(cause, signal=9))

    def end(self, result):
        if not self._done.called:
            self._done.callback(result)


class FakeWorkspace:
    path = "/nonexistent"


@implementer(ILease)
class FakeLease:
    def __init__(self, sandbox):
        self.sandbox = sandbox
        self.workspace = FakeWorkspace()

    def spawn(
        self,
        argv,
        limits=None,
        env=None,
        on_output=None,
        frontend="jobs",
        stdin=None,
        output_fd=None,
        output_create=None,
    ):
        assert output_create is None  # (the fake's files are the server's own: OwnFiles)
        job = FakeJob(argv, limits, on_output, stdin, output_fd)
        self.sandbox.jobs.append(job)
        return job

    def release(self):
        return defer.succeed(None)


@implementer(ISandbox)
class FakeSandbox:
    privileged = False
    refusal = None

    def __init__(self):
        self.config = SandboxConfig()
        self.jobs = []

    def acquire(self, size=None):
        return defer.succeed(FakeLease(self))


class SchedulingTests(unittest.TestCase):
    def setUp(self):
        self.sandbox = FakeSandbox()
        self.server = Why3Server(self.sandbox, Why3Config(jobs=1, output_dir=self.mktemp_dir()))
        self.addCleanup(self.end_all_jobs)  # before the output directory goes

    def end_all_jobs(self):
        while any(not j.done.called for j in self.sandbox.jobs):
            for job in self.sandbox.jobs:
                job.end(JobResult(Status.CANCELLED))

    def mktemp_dir(self):
        import os
        import shutil
        import tempfile

        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        os.chmod(d, 0o755)
        return d

    def client(self):
        proto = self.server.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def lines(self, transport):
        return transport.value().decode().splitlines()

    def test_one_at_a_time_fifo_and_results_to_the_sender(self):
        a, ta = self.client()
        b, tb = self.client()
        a.dataReceived(b"run;1;5;100;prover;x\n")
        b.dataReceived(b"run;1;0;0;other\n")
        self.assertEqual(self.lines(ta), ["S;1"])
        self.assertEqual(tb.value(), b"")
        first = self.sandbox.jobs[0]
        self.assertEqual(first.argv, ["prover", "x"])
        self.assertEqual(
            (first.limits.cpu_seconds, first.limits.address_space_bytes, first.limits.wall_seconds),
            (5, 100 << 20, 15.0),
        )
        first.on_output("stdout", b"proved\n")
        first.end(JobResult(Status.OK, exit_code=0, user_cpu=0.25))
        (f_line,) = self.lines(ta)[1:]
        fields = f_line.split(";")
        self.assertEqual(fields[:5], ["F", "1", "0", "0.25", "0"])
        with open(fields[5], "rb") as f:
            self.assertEqual(f.read(), b"proved\n")
        self.assertEqual(self.lines(tb), ["S;1"])  # b's own id 1, its own reply
        self.assertEqual(self.sandbox.jobs[1].limits.cpu_seconds, None)

    def test_parallel_and_interrupts(self):
        a, ta = self.client()
        a.dataReceived(b"run;r;0;0;p\nrun;q;0;0;p\n")
        self.assertEqual(len(self.sandbox.jobs), 1)
        # Another client cannot interrupt a's requests.
        b, tb = self.client()
        b.dataReceived(b"interrupt;q\ninterrupt;r\n")
        self.assertEqual(tb.value(), b"")
        # Interrupting a queued request answers at once, with a real file.
        a.dataReceived(b"interrupt;q\n")
        reply = self.lines(ta)[-1].split(";")
        self.assertEqual(reply[:5], ["F", "q", "0", "0.00", "0"])
        with open(reply[5], "rb") as f:
            self.assertEqual(f.read(), b"")
        # Interrupting a running one kills it: reported as killed by a signal.
        a.dataReceived(b"interrupt;r\n")
        self.assertEqual(self.sandbox.jobs[0].stopped, Status.CANCELLED)
        self.assertEqual(self.lines(ta)[-1].split(";")[:5], ["F", "r", "9", "0.00", "1"])
        a.dataReceived(b"interrupt;r\ninterrupt;nope\n")  # finished or unknown: no reply
        self.assertEqual(len(self.lines(ta)), 3)
        a.dataReceived(b"parallel;3\nrun;1;0;0;p\nrun;2;0;0;p\nrun;3;0;0;p\nrun;4;0;0;p\n")
        self.assertEqual(len(self.sandbox.jobs), 4)

    def test_disconnect_kills_and_drops(self):
        a, ta = self.client()
        a.dataReceived(b"run;1;0;0;p\nrun;2;0;0;p\n")
        a.connectionLost(None)
        self.assertEqual(self.sandbox.jobs[0].stopped, Status.CANCELLED)
        self.assertEqual(len(self.sandbox.jobs), 1)  # the queued one never ran
        self.assertEqual(self.server.clients, {})

    def test_reused_ids_each_get_their_answer_and_their_kill(self):
        a, ta = self.client()
        a.dataReceived(b"parallel;2\nrun;1;0;0;p\nrun;1;0;0;q\nrun;1;0;0;r\n")
        first, second = self.sandbox.jobs
        first.end(JobResult(Status.OK, exit_code=0))
        self.assertEqual([line[:6] for line in self.lines(ta)], ["S;1", "S;1", "F;1;0;", "S;1"])
        a.connectionLost(None)
        self.assertEqual([j.stopped for j in self.sandbox.jobs], [None, Status.CANCELLED, Status.CANCELLED])

    def test_exec_failure_and_exit_codes(self):
        a, ta = self.client()
        a.dataReceived(b"parallel;3\nrun;1;0;0;nope\nrun;2;0;0;p\nrun;3;0;0;p\n")
        j1, j2, j3 = self.sandbox.jobs
        j1.end(
            JobResult(
                Status.INTERNAL_ERROR,
                detail="starting the program failed: No such file or directory (ENOENT)",
                failed_stage="exec",
            )
        )
        j2.end(JobResult(Status.NONZERO_EXIT, exit_code=3, user_cpu=1.5))
        j3.end(JobResult(Status.TIME_LIMIT, signal=24, user_cpu=2.0))
        # Over its CPU time: SIGXCPU from the jail, SIGKILL as the C server reports it.
        self.assertEqual(
            [line.split(";")[:5] for line in self.lines(ta)[3:]],
            [["F", "1", "1", "0.00", "0"], ["F", "2", "3", "1.50", "0"], ["F", "3", "9", "2.00", "1"]],
        )

    def test_framing(self):
        a, ta = self.client()
        a.dataReceived(b"garbage\nrun;1;0;0")
        a.dataReceived(b";p\n" + b"x" * (wire.Why3Protocol.MAX_LENGTH + 10))
        a.dataReceived(b"still the long line\nrun;2;0;0;p\n")
        self.assertEqual([j.argv for j in self.sandbox.jobs], [["p"]])
        self.sandbox.jobs[0].end(JobResult(Status.OK, exit_code=0))
        self.assertEqual([j.argv for j in self.sandbox.jobs], [["p"], ["p"]])
        self.assertFalse(ta.disconnecting)

    def test_whole_long_line_in_a_chunk_loses_nothing_after_it(self):
        a, ta = self.client()
        a.dataReceived(b"parallel;5\nrun;1;0;0;p\n" + b"y" * (wire.Why3Protocol.MAX_LENGTH + 1) + b"\nrun;2;0;0;q\n")
        self.assertEqual([j.argv for j in self.sandbox.jobs], [["p"], ["q"]])
        self.assertFalse(ta.disconnecting)

    def test_exception_still_answers(self):
        def broken(*args, **kwargs):
            raise OSError("disk full")

        a, ta = self.client()
        self.patch(FakeLease, "spawn", broken)
        a.dataReceived(b"run;1;0;0;p\nrun;2;0;0;p\n")
        lines = self.lines(ta)
        self.assertEqual(
            [line.split(";")[:5] for line in lines],
            [
                ["F", "1", "1", "0.00", "0"],
                ["F", "2", "1", "0.00", "0"],
            ],
        )
        with open(lines[0].split(";")[5], "rb") as f:
            self.assertIn(b"could not run", f.read())
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)

    def test_interrupt_while_waiting_for_a_job_user(self):
        waiting = defer.Deferred()
        self.patch(self.sandbox, "acquire", lambda size=None: waiting)
        a, ta = self.client()
        a.dataReceived(b"run;1;0;0;p\ninterrupt;1\n")
        self.assertEqual(ta.value(), b"")  # answered once it has a user
        waiting.callback(FakeLease(self.sandbox))
        self.assertEqual(self.lines(ta)[0].split(";")[:5], ["F", "1", "0", "0.00", "0"])
        self.assertEqual(self.sandbox.jobs, [])

    def test_disconnect_while_waiting_for_a_job_user(self):
        waiting = defer.Deferred()
        self.patch(self.sandbox, "acquire", lambda size=None: waiting)
        a, ta = self.client()
        a.dataReceived(b"run;1;0;0;p\n")
        a.connectionLost(None)
        waiting.callback(FakeLease(self.sandbox))
        self.assertEqual((ta.value(), self.sandbox.jobs, self.server.running), (b"", [], set()))

    def test_output_of_a_client_that_left_is_removed(self):
        import os

        a, ta = self.client()
        a.dataReceived(b"run;1;0;0;p\n")
        self.sandbox.jobs[0].on_output("stdout", b"x")
        a.connectionLost(None)
        self.assertEqual(os.listdir(self.server.config.output_dir), [])

    def test_limits_unlimited(self):
        a, ta = self.client()
        a.dataReceived(b"run;1;0;0;p\n")
        limits = self.sandbox.jobs[0].limits
        self.assertIsInstance(limits, Limits)
        self.assertEqual((limits.cpu_seconds, limits.wall_seconds, limits.address_space_bytes), (None, None, None))


class FramingProperties(unittest.TestCase):
    """However the stream is cut into chunks, the same requests come out."""

    @given(
        st.lists(
            st.one_of(
                st.text(alphabet="ab;0123456789 \r", max_size=12).map(lambda t: "run;" + t + ";0;0;p"),
                st.text(alphabet="x;", min_size=0, max_size=40),
                st.just("y" * 70),  # over the (lowered) maximum
            ),
            max_size=12,
        ),
        st.lists(st.integers(min_value=1, max_value=50), max_size=20),
    )
    def test_chunking_does_not_matter(self, lines, cuts):
        stream = b"".join(line.encode() + b"\n" for line in lines)
        expected = [wire.parse_request(line) for line in lines if len(line) <= 64]
        expected = [r for r in expected if r is not None]
        seen = []

        class Factory:
            def client_connected(self, client):
                pass

            def request(self, client, request):
                seen.append(request)

        proto = wire.Why3Protocol()
        proto.MAX_LENGTH = 64
        proto.factory = Factory()
        proto.makeConnection(StringTransport())
        pos = 0
        for cut in cuts:
            proto.dataReceived(stream[pos : pos + cut])
            pos += cut
        proto.dataReceived(stream[pos:])
        self.assertEqual(seen, expected)


class ServiceTests(unittest.TestCase):
    """The twistd front end: where it listens, its output directory, and the
    keyword form of its settings."""

    def test_start_and_stop(self):
        import os
        import stat
        import tempfile

        from twisted.internet.testing import MemoryReactorClock

        from mathrun.why3.service import Why3Service

        directory = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, directory)
        reactor = MemoryReactorClock()
        socket_path = os.path.join(directory, "run", "why3.sock")
        output = os.path.join(directory, "run", "why3-output")
        config = Why3Config(output_dir=output, jobs=3, time_format="%.6f")
        service = Why3Service(FakeSandbox(), socket_path, config, reactor)
        service.startService()
        ((path, factory, backlog, mode, _wantPID),) = reactor.unixServers
        self.assertEqual((path, factory, mode), (socket_path, service.server, 0o666))
        self.assertEqual((service.server.parallel, service.server.config.time_format), (3, "%.6f"))
        self.assertEqual(stat.S_IMODE(os.stat(output).st_mode), 0o1733)
        service.stopService()
        self.assertFalse(service.running)


class CommandLineTests(unittest.TestCase):
    """getopt_long's forms that why3server accepts (errors: test_why3_server)."""

    def test_forms(self):
        from mathrun.why3.standalone import parse

        self.assertEqual(
            parse(["--sock=/s", "-j2x", "--single", "--logging", "--time-format", "1.7"]),
            {"socket": "/s", "jobs": 2, "logging": True, "single_client": True, "time_format": "1.7"},
        )
        self.assertEqual(parse(["-j", "3", "--socket", "/s"])["jobs"], 3)
        self.assertEqual(parse(["--socket", "/s", "--"])["socket"], "/s")
