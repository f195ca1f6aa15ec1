"""LeanHistogram (mathrun/metrics.py) scrapes as prometheus_client's
Histogram does for the same observations (less its ``_created`` series)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from twisted.trial import unittest

from mathrun.metrics import JOB_SECONDS, LeanHistogram

values = st.floats(min_value=0, max_value=100, allow_nan=False) | st.sampled_from(JOB_SECONDS)


def scraped(registry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


class LeanHistogramTests(unittest.SynchronousTestCase):
    @given(st.lists(st.tuples(st.sampled_from(["maxima", "asy"]), values), max_size=30))
    def test_same_samples_as_prometheus_client(self, observations):
        theirs, ours = CollectorRegistry(), CollectorRegistry()
        reference = Histogram("t_seconds", "Doc.", ["frontend"], buckets=JOB_SECONDS, registry=theirs)
        lean = LeanHistogram("t_seconds", "Doc.", ["frontend"], registry=ours)
        for frontend in ("maxima", "asy"):
            reference.labels(frontend)
            lean.labels(frontend)
        for frontend, value in observations:
            reference.labels(frontend).observe(value)
            lean.labels(frontend).observe(value)
        self.assertEqual(sorted(scraped(ours)), sorted(scraped(theirs)))

    @given(st.lists(values, max_size=10))
    def test_without_labels(self, observations):
        theirs, ours = CollectorRegistry(), CollectorRegistry()
        reference = Histogram("u_seconds", "Doc.", buckets=JOB_SECONDS, registry=theirs)
        lean = LeanHistogram("u_seconds", "Doc.", registry=ours)
        for value in observations:
            reference.observe(value)
            lean.observe(value)
        self.assertEqual(sorted(scraped(ours)), sorted(scraped(theirs)))

    def test_wrong_labels_are_refused(self):
        with self.assertRaises(ValueError):
            LeanHistogram("v_seconds", "Doc.", ["frontend"]).labels("a", "b")
