"""The cheaper log line formatter writes what twistd's own observer writes."""

import io
import time

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import FileLogObserver, LogLevel, LogPublisher, textFileLogObserver
from twisted.python.failure import Failure
from twisted.trial import unittest

from mathrun.logformat import ClassicLineFormat, is_default_text_observer, speed_up


def twistd_format():
    """The formatEvent of the observer twistd makes for --logfile."""
    return textFileLogObserver(io.StringIO()).formatEvent


def event(text, when, **extra):
    fields = dict(log_format=text, log_time=when, log_level=LogLevel.info, log_namespace="mathrun.sandbox.Sandbox")
    fields.update(extra)
    return fields


class ClassicLineFormatTests(unittest.TestCase):
    def setUp(self):
        self.twisted = twistd_format()
        self.ours = ClassicLineFormat(self.twisted)

    def same(self, e):
        self.assertEqual(self.ours(e), self.twisted(e))

    def test_job_line(self):
        self.same(event("job mrf-1 ok: wall 0.002s cpu 0.000s peak 569344 (maxima)", time.time(), user="mrf-1"))

    def test_other_events_as_twisted_writes_them(self):
        now = time.time()
        try:
            raise ValueError("a failure")
        except ValueError:
            failure = Failure()
        for e in (
            event("with {field}", now, field="a value"),
            event("doubled {{braces}}", now),
            event("failed", now, log_failure=failure),
            event("system", now, log_system="-"),
            event("two\nlines", now),
            event("", now),
            event(b"bytes", now),
            event("no level", now, log_level=None),
            dict(log_format="nothing else", log_time=now),
            dict(log_format="no time"),
            dict(log_time=now),
        ):
            self.same(e)

    def test_second_boundaries(self):
        base = float(int(time.time()))
        for when in (base, base + 0.5, base + 0.9999994, base + 0.9999995, base + 0.9999999, base + 1.0):
            self.same(event("at a boundary", when))

    @given(st.floats(min_value=0, max_value=4e9), st.text(max_size=40))
    def test_any_time_and_text(self, when, text):
        self.same(event(text, when))

    def test_installed_only_on_twistds_observer(self):
        publisher = LogPublisher()
        out = io.StringIO()
        default = textFileLogObserver(out)
        other = FileLogObserver(io.StringIO(), lambda e: "x\n")
        custom = textFileLogObserver(io.StringIO(), timeFormat="%H")
        for observer in (default, other, custom):
            publisher.addObserver(observer)
        self.assertTrue(is_default_text_observer(default))
        self.assertEqual(speed_up(publisher), 1)
        self.assertIsInstance(default.formatEvent, ClassicLineFormat)
        self.assertNotIsInstance(other.formatEvent, ClassicLineFormat)
        self.assertNotIsInstance(custom.formatEvent, ClassicLineFormat)
        e = event("a line", time.time())
        publisher(e)
        self.assertEqual(out.getvalue(), twistd_format()(e))
