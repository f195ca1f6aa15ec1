"""The jail's report line and the verdict drawn from it."""

import signal

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from mathrun.sandbox.limits import Limits
from mathrun.sandbox.result import ReportError, Status, classify, parse_report


def report(**fields):
    base = {
        "utime": "0.5",
        "stime": "0.25",
        "maxrss_kb": "1000",
        "wall": "1.0",
        "leftover": "0",
        "killed": "0",
        "remaining": "0",
    }
    base.update({k: str(v) for k, v in fields.items()})
    status = base.pop("status")
    return parse_report(("status=" + status + " " + " ".join(f"{k}={v}" for k, v in base.items()) + "\n").encode())


class ParseTests(unittest.TestCase):
    def test_exited(self):
        r = parse_report(
            b"status=exited code=3 utime=0.001000 stime=0.002000 maxrss_kb=900 wall=0.003 leftover=1 killed=0 remaining=0\n"
        )
        self.assertEqual(r["status"], "exited")
        self.assertEqual(r["code"], 3)
        self.assertEqual(r["utime"], 0.001)
        self.assertEqual(r["leftover"], 1)

    def test_garbage(self):
        for line in (
            b"",
            b"\xff",
            b"status=weird",
            b"status=exited",
            b"status=exited code=x",
            b"status=exited code=1 code=2",
            b"a b",
            b"status=exited code=1\nstatus=exited code=2",
        ):
            self.assertRaises(ReportError, parse_report, line)

    @given(st.binary(max_size=200))
    def test_never_crashes_otherwise(self, data):
        try:
            parse_report(data)
        except ReportError:
            pass

    @given(st.integers(0, 255), st.floats(0, 1e6), st.floats(0, 1e6), st.integers(0, 1 << 40))
    def test_round_trip(self, code, utime, stime, rss):
        r = parse_report(f"status=exited code={code} utime={utime:.6f} stime={stime:.6f} maxrss_kb={rss}".encode())
        self.assertEqual((r["code"], r["maxrss_kb"]), (code, rss))
        self.assertAlmostEqual(r["utime"], float(f"{utime:.6f}"))


class ClassifyTests(unittest.TestCase):
    limits = Limits(cpu_seconds=2, wall_seconds=5, memory_bytes=1 << 20, output_bytes=100)

    def test_ok_and_exit_codes(self):
        self.assertEqual(classify(report(status="exited", code=0), self.limits).status, Status.OK)
        r = classify(report(status="exited", code=7), self.limits)
        self.assertEqual((r.status, r.exit_code), (Status.NONZERO_EXIT, 7))
        self.assertEqual((r.user_cpu, r.system_cpu, r.peak_memory), (0.5, 0.25, 1000 * 1024))

    def test_signals(self):
        r = classify(report(status="signalled", signal=int(signal.SIGSEGV)), self.limits)
        self.assertEqual((r.status, r.signal), (Status.SIGNALLED, signal.SIGSEGV))
        self.assertIn("SIGSEGV", r.describe())
        self.assertEqual(
            classify(report(status="signalled", signal=int(signal.SIGXCPU)), self.limits).status, Status.TIME_LIMIT
        )
        self.assertEqual(
            classify(report(status="signalled", signal=int(signal.SIGXFSZ)), self.limits).status, Status.OUTPUT_LIMIT
        )

    def test_sigkill_after_cpu_limit_is_time_limit(self):
        r = classify(report(status="signalled", signal=9, utime=1.5, stime=0.6), self.limits)
        self.assertEqual(r.status, Status.TIME_LIMIT)
        r = classify(report(status="signalled", signal=9, utime=0.1, stime=0.1), self.limits)
        self.assertEqual(r.status, Status.SIGNALLED)

    def test_cause_wins(self):
        for cause in (Status.TIME_LIMIT, Status.OUTPUT_LIMIT, Status.CANCELLED):
            r = classify(report(status="signalled", signal=9), self.limits, cause=cause)
            self.assertEqual(r.status, cause)

    def test_oom(self):
        r = classify(report(status="signalled", signal=9), self.limits, oom_killed=True, peak_memory=1 << 20)
        self.assertEqual((r.status, r.peak_memory), (Status.MEMORY_LIMIT, 1 << 20))

    def test_failures_are_internal_errors(self):
        self.assertEqual(classify(None, self.limits).status, Status.INTERNAL_ERROR)
        self.assertEqual(classify(None, self.limits, cause=Status.CANCELLED).status, Status.CANCELLED)
        r = classify(report(status="failed", stage="exec", errno=2), self.limits)
        self.assertEqual(r.status, Status.INTERNAL_ERROR)
        self.assertIn("starting the program failed: No such file or directory", r.detail)
        self.assertEqual(r.failed_stage, "exec")
        self.assertEqual(classify(report(status="failed", stage="jail", errno=1), self.limits).failed_stage, "jail")
        r = classify(report(status="exited", code=0, remaining=1), self.limits)
        self.assertEqual(r.status, Status.INTERNAL_ERROR)
