"""The job-user pool: hand-out order, bounded waiting, cancellation."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from mathrun.sandbox.pool import SlotPool


class PoolTests(unittest.TestCase):
    def test_hands_out_each_slot_once(self):
        pool = SlotPool(["a", "b"])
        got = [self.successResultOf(pool.acquire()) for _ in range(2)]
        self.assertEqual(sorted(got), ["a", "b"])
        waiting = pool.acquire()
        self.assertNoResult(waiting)
        pool.release("a")
        self.assertEqual(self.successResultOf(waiting), "a")
        self.assertEqual((pool.busy, pool.free, pool.waiting), (2, 0, 0))

    def test_first_in_order_then_the_last_released_first(self):
        pool = SlotPool(["a", "b", "c"])
        a, b = self.successResultOf(pool.acquire()), self.successResultOf(pool.acquire())
        self.assertEqual((a, b), ("a", "b"))
        pool.release("b")
        pool.release("a")
        self.assertEqual(self.successResultOf(pool.acquire()), "a")  # warm, not "c"
        self.assertEqual(self.successResultOf(pool.acquire()), "b")

    def test_waiters_are_served_in_order(self):
        pool = SlotPool(["a"])
        self.successResultOf(pool.acquire())
        first, second = pool.acquire(), pool.acquire()
        pool.release("a")
        self.assertEqual(self.successResultOf(first), "a")
        self.assertNoResult(second)

    def test_cancelled_waiter_loses_nothing(self):
        pool = SlotPool(["a"])
        self.successResultOf(pool.acquire())
        gone, stays = pool.acquire(), pool.acquire()
        gone.cancel()
        self.failureResultOf(gone, defer.CancelledError)
        pool.release("a")
        self.assertEqual(self.successResultOf(stays), "a")

    def test_retired_slot_is_never_handed_out_again(self):
        pool = SlotPool(["a", "b"])
        a = self.successResultOf(pool.acquire())
        pool.retire(a)
        self.assertEqual((pool.quarantined, pool.busy, pool.free), (1, 0, 1))
        self.assertEqual(self.successResultOf(pool.acquire()), "b")
        self.assertNoResult(pool.acquire())

    def test_take_hands_out_a_free_slot_now_or_none(self):
        pool = SlotPool(["a", "b"])
        self.assertEqual((pool.take(), pool.take(), pool.take()), ("a", "b", None))
        waiter = pool.acquire()
        pool.release("a")  # to the waiter, not to a later take
        self.assertEqual((self.successResultOf(waiter), pool.take(), pool.busy), ("a", None, 2))
        pool.release("b")
        self.assertEqual((pool.take(), pool.free), ("b", 0))

    def test_release_of_unknown_slot(self):
        pool = SlotPool(["a"])
        self.assertRaises(ValueError, pool.release, "a")

    @given(
        st.integers(1, 5), st.lists(st.tuples(st.sampled_from(["acquire", "release", "cancel"]), st.integers(0, 20)))
    )
    def test_invariants(self, size, ops):
        pool = SlotPool(range(size))
        held, waiters = [], []
        for op, n in ops:
            if op == "acquire":
                d = pool.acquire()
                d.addCallback(held.append)
                d.addErrback(lambda f: f.trap(defer.CancelledError))
                waiters.append(d)
            elif op == "release" and held:
                pool.release(held.pop(n % len(held)))
            elif op == "cancel" and waiters:
                waiters[n % len(waiters)].cancel()
            # No slot is held twice, and nobody waits while a slot is free.
            self.assertEqual(len(held), len(set(held)))
            self.assertEqual(pool.busy, len(held))
            self.assertEqual(pool.busy + pool.free, size)
            self.assertTrue(pool.waiting == 0 or pool.free == 0)
