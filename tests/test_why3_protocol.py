"""The VC server's line protocol and scheduling, with fakes: exact and fast."""

from __future__ import annotations

import ctypes

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

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


class FakeJob:
    def __init__(self, argv, limits, on_output):
        self.argv, self.limits, self.on_output = argv, limits, on_output
        self.stopped = None
        self.stdin = b""
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


class FakeLease:
    def __init__(self, sandbox):
        self.sandbox = sandbox
        self.workspace = FakeWorkspace()

    def spawn(self, argv, limits, on_output=None):
        job = FakeJob(argv, limits, on_output)
        self.sandbox.jobs.append(job)
        return job

    def release(self):
        return defer.succeed(None)


class FakeSandbox:
    privileged = False

    def __init__(self):
        self.config = SandboxConfig()
        self.jobs = []

    def acquire(self, size=None):
        return defer.succeed(FakeLease(self))


class SchedulingTests(unittest.TestCase):
    def setUp(self):
        self.sandbox = FakeSandbox()
        self.server = Why3Server(self.sandbox, Why3Config(jobs=1, output_dir=self.mktemp_dir()))

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

    def test_exec_failure_and_exit_codes(self):
        a, ta = self.client()
        a.dataReceived(b"parallel;3\nrun;1;0;0;nope\nrun;2;0;0;p\nrun;3;0;0;p\n")
        j1, j2, j3 = self.sandbox.jobs
        j1.end(
            JobResult(Status.INTERNAL_ERROR, detail="starting the program failed: No such file or directory (ENOENT)")
        )
        j2.end(JobResult(Status.NONZERO_EXIT, exit_code=3, user_cpu=1.5))
        j3.end(JobResult(Status.TIME_LIMIT, signal=24, user_cpu=2.0))
        self.assertEqual(
            [line.split(";")[:5] for line in self.lines(ta)[3:]],
            [["F", "1", "1", "0.00", "0"], ["F", "2", "3", "1.50", "0"], ["F", "3", "24", "2.00", "1"]],
        )

    def test_framing(self):
        a, ta = self.client()
        a.dataReceived(b"garbage\nrun;1;0;0")
        a.dataReceived(b";p\n" + b"x" * (wire.Why3Protocol.max_line + 10))
        a.dataReceived(b"still the long line\nrun;2;0;0;p\n")
        self.assertEqual([j.argv for j in self.sandbox.jobs], [["p"]])
        self.sandbox.jobs[0].end(JobResult(Status.OK, exit_code=0))
        self.assertEqual([j.argv for j in self.sandbox.jobs], [["p"], ["p"]])
        self.assertFalse(ta.disconnecting)

    def test_limits_unlimited(self):
        a, ta = self.client()
        a.dataReceived(b"run;1;0;0;p\n")
        limits = self.sandbox.jobs[0].limits
        self.assertIsInstance(limits, Limits)
        self.assertEqual((limits.cpu_seconds, limits.wall_seconds, limits.address_space_bytes), (None, None, None))
