"""The upload cache: bounded, expiring, least recently used out first."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from mathrun.asy.cache import FileCache, sha256_hex


class CacheTests(unittest.TestCase):
    def test_hit_miss_and_expiry(self):
        clock = Clock()
        cache = FileCache(100, 60, clock.seconds)
        cache.put(sha256_hex(b"a"), b"a")
        self.assertEqual(cache.get(sha256_hex(b"a")), b"a")
        self.assertIsNone(cache.get(sha256_hex(b"b")))
        clock.advance(59)
        self.assertEqual(cache.get(sha256_hex(b"a")), b"a")  # refreshed
        clock.advance(59)
        self.assertEqual(cache.get(sha256_hex(b"a")), b"a")
        clock.advance(61)
        self.assertIsNone(cache.get(sha256_hex(b"a")))
        self.assertEqual((len(cache), cache.size), (0, 0))

    def test_evicts_least_recently_used(self):
        cache = FileCache(10, 60, Clock().seconds)
        cache.put("a", b"aaaa")
        cache.put("b", b"bbbb")
        cache.get("a")
        cache.put("c", b"cccc")
        self.assertEqual((cache.get("a"), cache.get("b"), cache.get("c")), (b"aaaa", None, b"cccc"))
        cache.put("huge", b"x" * 11)
        self.assertIsNone(cache.get("huge"))

    @given(st.lists(st.tuples(st.sampled_from(["put", "get", "wait"]), st.integers(0, 5), st.integers(0, 30))))
    def test_invariants(self, ops):
        clock = Clock()
        cache = FileCache(50, 10, clock.seconds)
        stored = {}
        for op, key, n in ops:
            name = f"k{key}"
            if op == "put":
                cache.put(name, bytes(n))
                stored[name] = bytes(n)
            elif op == "get":
                got = cache.get(name)
                self.assertIn(got, (None, stored.get(name)))
            else:
                clock.advance(n)
            self.assertLessEqual(cache.size, 50)
            self.assertEqual(cache.size, sum(len(d) for d, _ in cache._entries.values()))
            self.assertTrue(all(clock.seconds() - used < 10 for _, used in cache._entries.values()) or op == "wait")
