"""The render cache: its bounds and expiry as properties (pure, a fake clock),
its key, and the queue's use of it over a real WebSocket with fake back ends
(a second identical run starts no back end and says ``cached: true``; a
changed file, other options, an interactive or a failed run go to a back end);
and with a real local runner, that a repeat runs no asy job."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.trial import unittest

from mathrun.asy.backends import LocalBackend
from mathrun.asy.protocol import RunOptions
from mathrun.asy.queue import AsyQueue
from mathrun.asy.queue_ws import QueueFactory
from mathrun.asy.render_cache import Recorder, Render, RenderCache, render_key

from .asyclient import connect, messages, serve_queue
from .helpers import async_test, make_sandbox, within
from .test_asy_queue_ws import CIRCLE, FakeBackend


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def render_of(size: int) -> Render:
    return Render((("output", "stdout", b"o" * (size // 2)), ("result", "svg", b"s" * (size - size // 2))), 7)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 12), st.integers(0, 400)),
        st.tuples(st.just("get"), st.integers(0, 12), st.just(0)),
        st.tuples(st.just("wait"), st.integers(0, 0), st.integers(0, 50)),
    ),
    max_size=80,
)


class BoundsTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(OPS, st.integers(0, 6), st.integers(0, 1000), st.integers(1, 100))
    def test_bounds_and_expiry_hold_after_every_step(self, ops, max_entries, max_bytes, ttl):
        clock = FakeClock()
        cache = RenderCache(max_entries, max_bytes, ttl, clock)
        stored = {}  # key -> (render, time stored): what a hit may return
        gets = 0
        for op, n, arg in ops:
            key = f"k{n}"
            if op == "put":
                render = render_of(arg)
                kept = cache.put(key, render)
                self.assertEqual(kept, cache.enabled and arg <= cache.max_entry)
                if kept:
                    stored[key] = (render, clock.now)
                    self.assertIs(cache.get(key), render)  # just stored: there
                    gets += 1
            elif op == "get":
                got = cache.get(key)
                gets += 1
                if got is not None:
                    render, at = stored[key]
                    self.assertIs(got, render)  # the last one stored under that key
                    self.assertLess(clock.now - at, ttl)  # never an expired one
            else:
                clock.now += arg
            self.assertLessEqual(len(cache), max_entries)
            self.assertLessEqual(cache.size, max_bytes)
            self.assertEqual(cache.size, sum(r.size for r in cache._entries.values()))
            self.assertEqual(set(cache._entries), set(cache._stored))
        self.assertEqual(cache.hits + cache.misses, gets)

    @settings(max_examples=100, deadline=None)
    @given(st.integers(1, 8), st.lists(st.integers(0, 100), min_size=1, max_size=30))
    def test_least_recently_used_goes_first(self, max_entries, sizes):
        cache = RenderCache(max_entries, 10_000, 60, FakeClock(), max_entry=10_000)
        for n, size in enumerate(sizes):
            cache.put(f"k{n}", render_of(size))
        survivors = [f"k{n}" for n in range(len(sizes))][-max_entries:]
        self.assertEqual(list(cache._entries), survivors)
        self.assertEqual(cache.evictions, len(sizes) - len(survivors))

    def test_an_entry_expires_after_ttl_even_when_used(self):
        clock = FakeClock()
        cache = RenderCache(4, 1000, 10, clock)
        cache.put("a", render_of(10))
        clock.now = 9
        self.assertIsNotNone(cache.get("a"))
        clock.now = 10
        self.assertIsNone(cache.get("a"))
        self.assertEqual((cache.hits, cache.misses, cache.expiries, cache.size), (1, 1, 1, 0))

    def test_off_with_no_entries(self):
        cache = RenderCache(0, 1000, 10, FakeClock())
        self.assertFalse(cache.put("a", render_of(1)))
        self.assertIsNone(cache.get("a"))

    def test_recorder_drops_a_run_over_its_limit(self):
        recorder = Recorder(10)
        recorder.add("output", "stdout", b"12345")
        self.assertEqual(recorder.render(3), Render((("output", "stdout", b"12345"),), 3))
        recorder.add("result", "svg", b"123456")
        self.assertIsNone(recorder.render(3))


class KeyTests(unittest.TestCase):
    @given(
        st.dictionaries(st.sampled_from(["a.asy", "b.asy", "c.asy"]), st.binary(max_size=20), min_size=1),
        st.sampled_from(["svg", "pdf", "png"]),
    )
    def test_key_follows_files_and_options_not_their_order(self, files, fmt):
        hashes = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        main = sorted(files)[0]
        key = render_key(hashes, main, RunOptions(format=fmt))
        self.assertEqual(key, render_key(dict(reversed(list(hashes.items()))), main, RunOptions(format=fmt)))
        self.assertEqual(key, render_key(hashes, main, RunOptions(format=fmt, timeout=3000)))
        self.assertNotEqual(key, render_key(hashes, main, RunOptions(format=fmt, stderr="separate")))
        self.assertNotEqual(
            key, render_key({**hashes, main: hashlib.sha256(b"x" * 30).hexdigest()}, main, RunOptions(format=fmt))
        )
        self.assertNotEqual(key, render_key({**hashes, "d.asy": hashes[main]}, main, RunOptions(format=fmt)))
        other = "svg" if fmt != "svg" else "png"
        self.assertNotEqual(key, render_key(hashes, main, RunOptions(format=other)))


class QueueCacheTests(unittest.TestCase):
    """The queue answers a repeated request from the cache."""

    def setUp(self):
        self.backends = [FakeBackend("a")]
        self.queue, self.url = serve_queue(self, self.backends)

    async def render(self, files, options=None, finish=True, interactive_input=None):
        """One client: its files (the first is main), options, run; the
        back end's run, if one started, is finished by hand."""
        factory = connect(self.url)
        c = await within(factory.opened)
        for n, (name, data) in enumerate(files.items()):
            c.add(name, data, main=n == 0, hashed=True)
        c.send("options", options or {})
        started = self.queue.started
        c.send("run")
        await within(c.wait_for("queue"))
        if self.queue.started > started:
            run = self.backends[0].runs[-1]
            if interactive_input is not None:
                run.sink.output("stdout", interactive_input)
            if finish:
                run.sink.output("stdout", b"out\n")
                run.finish()
            else:
                run.sink.complete(False, "Execution failed with code 1", 4)
        return await within(factory.closed)

    @async_test
    async def test_second_identical_run_starts_no_back_end(self):
        first = await self.render({"main.asy": CIRCLE, "lib.asy": b"real r;"})
        second = await self.render({"main.asy": CIRCLE, "lib.asy": b"real r;"}, {"timeout": 3000})
        self.assertEqual(len(self.backends[0].runs), 1)
        self.assertEqual(self.queue.started, 1)
        self.assertEqual(messages(first, "complete")[0][1], {"success": True, "time": 5})
        self.assertEqual(messages(second, "complete")[0][1], {"success": True, "time": 5, "cached": True})
        # The same messages, in the same order, the image included.
        self.assertEqual([m for m in first if m[0] != "complete"], [m for m in second if m[0] != "complete"])
        self.assertEqual(messages(second, "result")[0][2], b"<svg/>")
        self.assertEqual((self.queue.renders.hits, self.queue.renders.misses, self.queue.renders.stores), (1, 1, 1))

    @async_test
    async def test_a_changed_file_or_format_runs_again(self):
        await self.render({"main.asy": CIRCLE, "lib.asy": b"real r;"})
        await self.render({"main.asy": CIRCLE, "lib.asy": b"real r = 2;"})
        await self.render({"main.asy": CIRCLE, "lib.asy": b"real r = 2;"}, {"format": "png"})
        self.assertEqual(self.queue.started, 3)
        self.assertEqual(self.queue.renders.hits, 0)

    @async_test
    async def test_failed_and_interactive_runs_are_not_kept(self):
        await self.render({"main.asy": b"broken("}, finish=False)
        again = await self.render({"main.asy": b"broken("}, finish=False)
        self.assertNotIn("cached", messages(again, "complete")[0][1])
        await self.render({"main.asy": CIRCLE}, {"interactive": True})
        await self.render({"main.asy": CIRCLE}, {"interactive": True})
        self.assertEqual(self.queue.started, 4)
        self.assertEqual((self.queue.renders.stores, self.queue.renders.hits), (0, 0))


class RealRunnerTests(unittest.TestCase):
    """A real local runner: the sandbox counts the asy jobs it runs."""

    @async_test
    async def test_a_repeat_runs_no_asy_a_changed_file_does(self):
        sandbox = make_sandbox(self, jobs=2)
        jobs = []
        sandbox.observers.append(lambda result, frontend="jobs": jobs.append(frontend))
        queue = AsyQueue([LocalBackend(sandbox, name="local")], reactor)
        self.addCleanup(queue.stop)
        port = reactor.listenTCP(0, QueueFactory(queue), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"ws://127.0.0.1:{port.getHost().port}/asy"

        async def render(source):
            factory = connect(url)
            c = await within(factory.opened)
            c.add("main.asy", source, main=True, hashed=True)
            c.send("options", {"format": "png"})
            c.send("run")
            received = await within(factory.closed)
            return messages(received, "complete")[0][1], messages(received, "result")[0][2]

        first, image = await render(CIRCLE)
        self.assertEqual((first["success"], "cached" in first, jobs), (True, False, ["asy"]))
        again, same = await render(CIRCLE)
        self.assertEqual((again, same, jobs), ({**first, "cached": True}, image, ["asy"]))  # no new asy job
        changed, _ = await render(CIRCLE + b" dot((0,0));")
        self.assertEqual((changed["success"], "cached" in changed, jobs), (True, False, ["asy", "asy"]))
        self.assertEqual((queue.started, queue.renders.hits, queue.renders.misses), (2, 1, 2))


class MetricsTests(unittest.TestCase):
    def test_counts_are_read_from_the_queue_when_scraped(self):
        from prometheus_client import CollectorRegistry, generate_latest

        from mathrun.metrics import AsyQueueMetrics

        queue = AsyQueue([FakeBackend("a")], reactor)
        self.addCleanup(queue.stop)
        registry = CollectorRegistry()
        AsyQueueMetrics(registry, queue)
        queue.started = 3
        queue.renders.put("k", render_of(100))
        queue.renders.get("k")
        queue.renders.get("other")
        text = generate_latest(registry).decode()
        for line in (
            "mathrun_asy_tasks_started_total 3.0",
            'mathrun_asy_render_cache_total{event="hit"} 1.0',
            'mathrun_asy_render_cache_total{event="miss"} 1.0',
            'mathrun_asy_render_cache_total{event="store"} 1.0',
            'mathrun_asy_render_cache_held{what="entries"} 1.0',
            'mathrun_asy_render_cache_held{what="bytes"} 100.0',
        ):
            self.assertIn(line + "\n", text)
