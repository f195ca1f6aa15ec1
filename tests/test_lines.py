"""The line splitting of the helpers' replies (reaper, Maxima mother), and
the reaper's matching of replies to requests, without processes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import error
from twisted.python.failure import Failure
from twisted.trial import unittest

from mathrun.sandbox.lines import LineSplitter
from mathrun.sandbox.sandbox import _Reaper

from .fakes import FakeProcessTransport

lines_st = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12)


def split_in(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (sorted, deduplicated)."""
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


class SplitterTests(unittest.SynchronousTestCase):
    @given(lines_st, st.lists(st.integers(min_value=0, max_value=600), max_size=8))
    def test_any_chunking_gives_the_same_lines(self, lines, cuts):
        got, long = [], []
        splitter = LineSplitter(got.append, long.append)
        data = b"".join(line + b"\n" for line in lines)
        for chunk in split_in(data, cuts):
            splitter.dataReceived(chunk)
        self.assertEqual((got, long), (lines, []))

    def test_an_overlong_line_is_cut_and_the_next_still_come(self):
        got, long = [], []
        splitter = LineSplitter(got.append, long.append, max_length=8)
        splitter.dataReceived(b"short\n" + b"x" * 20 + b"\nafter\nand more\n")
        self.assertEqual((got, long), ([b"short", b"after", b"and more"], [b"x" * 8]))

    def test_overlong_without_an_end_is_delivered_once_over_the_limit(self):
        got, long = [], []
        splitter = LineSplitter(got.append, long.append, max_length=8)
        splitter.dataReceived(b"y" * 5)
        self.assertEqual(long, [])
        splitter.dataReceived(b"y" * 5)
        splitter.dataReceived(b"\nok\n")
        self.assertEqual((got, long), ([b"", b"ok"], [b"y" * 8]))


class ReaperReplyTests(unittest.SynchronousTestCase):
    """The reaper's answers go to the request they name, in order."""

    def setUp(self):
        self.reaper = _Reaper()
        self.transport = FakeProcessTransport()
        self.reaper.makeConnection(self.transport)
        self.logged = []
        self.reaper.log = type(self.reaper.log)(observer=self.logged.append)

    def test_requests_written_and_answered_in_order(self):
        first = self.reaper.reap(1001, "/sys/fs/cgroup/pids/x/pids.current")
        second = self.reaper.reap(1002, unmount="/run/mathrun/jobs/2")
        self.assertEqual(
            self.transport.written, b"1001 /sys/fs/cgroup/pids/x/pids.current\n1002 umount=/run/mathrun/jobs/2\n"
        )
        self.reaper.outReceived(b"ok 1001\nfailed 1002 unmount /run/mathrun/jobs/2: EBUSY\n")
        self.assertIsNone(self.successResultOf(first))
        self.assertIn("EBUSY", str(self.failureResultOf(second, RuntimeError).value))

    def test_a_reply_for_another_uid_is_logged_not_raised(self):
        d = self.reaper.reap(1001)
        self.reaper.outReceived(b"ok 1002\nnonsense\n")
        self.assertNoResult(d)
        self.assertEqual(len(self.logged), 2)
        self.reaper.outReceived(b"ok 1001\n")
        self.successResultOf(d)

    def test_a_reply_nobody_waits_for_is_logged(self):
        self.reaper.outReceived(b"ok 1001\n")
        self.assertEqual(len(self.logged), 1)

    def test_bad_request_fails_the_oldest(self):
        d = self.reaper.reap(1001)
        self.reaper.outReceived(b"failed - bad request\n")
        self.failureResultOf(d, RuntimeError)

    def test_the_reaper_ending_fails_who_waits(self):
        d = self.reaper.reap(1001)
        self.reaper.processEnded(Failure(error.ProcessTerminated(exitCode=1)))
        self.failureResultOf(d, RuntimeError)
        self.successResultOf(self.reaper.ended)
