"""The Asymptote queue algorithm: the design's scenarios step by step with a
fake clock, and its invariants as a hypothesis state machine."""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.internet.task import Clock
from twisted.trial import unittest

from mathrun.asy.scheduler import (
    FAST,
    MEDIUM,
    SLOW,
    ClassLimits,
    Deny,
    Downgrade,
    Halt,
    Scheduler,
    Start,
    Task,
    TaskClass,
    changed_materially,
    task_class_for,
)

D, F, M, S, INTER = TaskClass.DEFAULT, TaskClass.FAST, TaskClass.MEDIUM, TaskClass.SLOW, TaskClass.INTERACTIVE


class Scenario(unittest.TestCase):
    def make(self, slow=1, medium=2, fast=3):
        self.clock = Clock()
        self.s = Scheduler(ClassLimits(slow, medium, fast), self.clock.seconds, random.Random(7))
        return self.s

    def add(self, kind):
        task = Task(kind)
        actions = self.s.submit(task)
        return task, actions

    def run_now(self, kind):
        """Submit and cycle; the task must start."""
        task, actions = self.add(kind)
        actions += self.s.cycle()
        starts = [a for a in actions if isinstance(a, Start) and a.task is task]
        self.assertEqual(len(starts), 1, actions)
        return task

    def test_classes(self):
        self.assertEqual([task_class_for(t, False) for t in (3000, 10000, 30000, None)], [F, M, S, D])
        self.assertEqual(task_class_for(None, True), INTER)
        self.assertRaises(ValueError, task_class_for, 5000, False)
        self.assertRaises(ValueError, ClassLimits, 2, 1, 3)
        self.assertRaises(ValueError, ClassLimits, 0, 1, 1)

    def test_default_gets_largest_timeout_allowed(self):
        self.make(slow=1, medium=2, fast=3)
        self.assertEqual(self.run_now(D).timeout_ms, SLOW)
        self.assertEqual(self.run_now(D).timeout_ms, MEDIUM)  # slow limit reached
        self.assertEqual(self.run_now(D).timeout_ms, FAST)  # medium limit reached

    def test_blocked_slow_downgrades_a_slow_default_to_medium(self):
        self.make(slow=1, medium=2, fast=3)
        default = self.run_now(D)
        self.assertEqual(default.timeout_ms, SLOW)
        slow, _ = self.add(S)
        actions = self.s.cycle()
        self.assertIn(Downgrade(default, MEDIUM), actions)
        self.assertIn(Start(slow, 1, SLOW), actions)

    def test_blocked_slow_downgrades_to_fast_when_medium_limit_reached(self):
        self.make(slow=1, medium=1, fast=3)
        default = self.run_now(D)
        slow, _ = self.add(S)
        actions = self.s.cycle()
        self.assertEqual(actions[0], Downgrade(default, FAST))
        self.assertEqual(actions[1], Start(slow, 1, SLOW))

    def test_slow_tasks_ignored_while_blocked_so_faster_ones_overtake(self):
        self.make(slow=1, medium=2, fast=3)
        self.run_now(S)
        slow, _ = self.add(S)
        fast, _ = self.add(F)
        actions = self.s.cycle()
        self.assertEqual([a.task for a in actions if isinstance(a, Start)], [fast])
        self.assertEqual(self.s.queue, [slow])

    def test_medium_limit_downgrades_defaults_then_ignores(self):
        self.make(slow=1, medium=2, fast=4)
        d1 = self.run_now(D)  # slow
        d2 = self.run_now(D)  # medium
        self.assertEqual((d1.timeout_ms, d2.timeout_ms), (SLOW, MEDIUM))
        medium, _ = self.add(M)
        actions = self.s.cycle()
        # The slow default goes to fast first; that frees medium capacity.
        self.assertEqual(actions[0], Downgrade(d1, FAST))
        self.assertIn(Start(medium, 2, MEDIUM), actions)
        # Now no default is above fast: another medium task waits, a fast one passes.
        m2, _ = self.add(M)
        actions = self.s.cycle()
        self.assertIn(Downgrade(d2, FAST), actions)
        self.assertIn(Start(m2, 3, MEDIUM), actions)
        m3, _ = self.add(M)
        f, _ = self.add(F)
        self.assertEqual(self.s.cycle(), [])  # fast limit reached too, nothing to halt
        self.assertEqual(self.s.queue, [m3, f])

    def test_fast_limit_downgrades_all_defaults_and_halts_an_interactive(self):
        self.make(slow=2, medium=2, fast=3)
        d1, d2 = self.run_now(D), self.run_now(D)
        self.assertEqual((d1.timeout_ms, d2.timeout_ms), (SLOW, SLOW))
        inter, actions = self.add(INTER)
        self.assertTrue(any(isinstance(a, Start) and a.task is inter for a in actions))
        fast, _ = self.add(F)
        actions = self.s.cycle()
        self.assertEqual(actions[:3], [Downgrade(d1, FAST), Downgrade(d2, FAST), Halt(inter)])
        self.assertIn(Start(fast, 2, FAST), actions)

    def test_interactive_denied_when_full_with_a_downgrade(self):
        self.make(slow=1, medium=2, fast=2)
        default = self.run_now(D)
        self.run_now(F)
        inter, actions = self.add(INTER)
        self.assertEqual(actions, [Downgrade(default, MEDIUM), Deny(inter, actions[-1].reason)])
        self.assertEqual(self.s.queue, [])  # never queued
        other, actions = self.add(INTER)
        self.assertEqual(actions, [Downgrade(default, FAST), Deny(other, actions[-1].reason)])

    def test_finished_and_cancel_free_the_slot(self):
        self.make(slow=1, medium=1, fast=1)
        running = self.run_now(F)
        waiting, _ = self.add(F)
        gone, _ = self.add(F)
        self.s.cancel(gone)
        self.assertEqual(self.s.cycle(), [])
        self.clock.advance(2)
        self.s.finished(running)
        self.assertEqual(self.s.cycle(), [Start(waiting, 0, FAST)])
        self.s.cancel(waiting)
        self.assertEqual(self.s.running, {})

    def test_disabled_slot_is_not_used(self):
        self.make(slow=1, medium=1, fast=2)
        self.s.disable(0)
        a = self.run_now(F)
        self.assertEqual(self.s.running[a], 1)
        b, _ = self.add(F)
        self.assertEqual(self.s.cycle(), [])
        self.s.enable(0)
        self.assertEqual(self.s.cycle(), [Start(b, 0, FAST)])

    def test_estimates_count_a_downgrade_from_the_real_start(self):
        self.make(slow=1, medium=1, fast=1)
        default = self.run_now(D)  # started at time 0 with the slow timeout
        self.assertEqual((default.started_at, default.timeout_ms), (0, SLOW))
        self.clock.advance(0.5)
        waiting, _ = self.add(S)
        self.s.mean_ms[SLOW] = 8000.0
        # In the replay the default is downgraded to fast: it ends 3 s after
        # its start at 0 (not after "now"), so the slow task waits 2.5 s.
        self.assertEqual(self.s.estimates()[waiting], 2500)

    def test_estimates_keep_a_disabled_slot_out(self):
        self.make(slow=1, medium=2, fast=2)
        self.s.mean_ms[FAST] = 1000.0
        first = self.run_now(F)  # ends at 1.0 s
        self.clock.advance(0.5)
        self.run_now(F)  # ends at 1.5 s
        waiting, _ = self.add(F)
        self.s.disable(self.s.running[first])
        self.clock.advance(0.1)
        # first's slot does not come back: waiting needs the second one's.
        self.assertEqual(self.s.estimates()[waiting], 900)

    def test_estimates_from_measured_run_times(self):
        self.make(slow=1, medium=1, fast=1)
        first = self.run_now(F)
        self.clock.advance(2)
        self.s.finished(first)  # fast tasks take about 2 s here
        self.s.mean_ms[FAST] = 2000.0
        running = self.run_now(F)
        q1, _ = self.add(F)
        q2, _ = self.add(F)
        self.clock.advance(0.5)
        est = self.s.estimates()
        self.assertEqual(est[q1], 1500)
        self.assertEqual(est[q2], 3500)
        del running
        self.assertTrue(changed_materially(1500, 3000))
        self.assertFalse(changed_materially(1500, 1600))


class QueueMachine(RuleBasedStateMachine):
    """Random submissions, finishes, cancels and clock steps."""

    def __init__(self):
        super().__init__()
        self.clock = Clock()
        self.s = None
        self.denied = 0

    @rule(
        slow=st.integers(1, 3), extra_medium=st.integers(0, 2), extra_fast=st.integers(0, 3), seed=st.integers(0, 100)
    )
    @precondition(lambda self: self.s is None)
    def setup(self, slow, extra_medium, extra_fast, seed):
        self.limits = ClassLimits(slow, slow + extra_medium, slow + extra_medium + extra_fast)
        self.s = Scheduler(self.limits, self.clock.seconds, random.Random(seed))

    def apply(self, actions):
        for a in actions:
            if isinstance(a, Start):
                assert a.task.timeout_ms is None or a.task.timeout_ms >= FAST
            if isinstance(a, Downgrade):
                assert a.task.kind is TaskClass.DEFAULT and a.timeout_ms >= FAST

    @rule(kind=st.sampled_from(list(TaskClass)))
    @precondition(lambda self: self.s is not None)
    def submit(self, kind):
        task = Task(kind)
        before = set(self.s.queue)
        actions = self.s.submit(task)
        self.apply(actions)
        if kind is TaskClass.INTERACTIVE:
            assert task not in self.s.queue  # never queued
        else:
            # Estimates of tasks already waiting do not depend on this one.
            old = {t: e for t, e in self.s.estimates().items() if t in before}
            assert all(self.s.estimates()[t] == e for t, e in old.items())
        self.apply(self.s.cycle())

    @rule(data=st.data())
    @precondition(lambda self: self.s is not None and self.s.running)
    def finish(self, data):
        task = data.draw(st.sampled_from(sorted(self.s.running, key=lambda t: t.id)))
        self.s.finished(task)
        self.apply(self.s.cycle())

    @rule(data=st.data())
    @precondition(lambda self: self.s is not None and (self.s.running or self.s.queue))
    def cancel(self, data):
        task = data.draw(st.sampled_from(sorted(list(self.s.running) + self.s.queue, key=lambda t: t.id)))
        self.s.cancel(task)
        self.apply(self.s.cycle())

    @rule(seconds=st.floats(0, 40))
    def wait(self, seconds):
        self.clock.advance(seconds)

    @invariant()
    def limits_hold(self):
        if self.s is None:
            return
        running = self.s.running
        slow = sum(1 for t in running if t.timeout_ms == SLOW)
        medium = sum(1 for t in running if t.timeout_ms in (MEDIUM, SLOW))
        assert slow <= self.limits.slow and medium <= self.limits.medium and len(running) <= self.limits.fast
        # Each running task holds its own back end.
        assert len(set(running.values())) == len(running)
        assert not set(running.values()) & set(self.s.state.free)
        # Defaults always keep at least the fast timeout.
        assert all(t.timeout_ms >= FAST for t in running if t.kind is TaskClass.DEFAULT)

    @invariant()
    def nothing_waits_while_it_could_start(self):
        """After a cycle, a queued task could not legally start now: either
        every back end is busy, or it is of a class whose limit is reached."""
        if self.s is None or not self.s.queue:
            return
        state = self.s.state
        if state.fast_reached():
            return
        for task in self.s.queue:
            assert task.queue_timeout >= MEDIUM, task
            if task.queue_timeout == SLOW:
                assert state.slow_reached() or state.medium_reached()
            else:
                assert state.medium_reached()

    @invariant()
    def faster_tasks_are_not_behind_blocked_slower_ones(self):
        """Under load, a waiting task never waits behind a slower class's
        task that is blocked: fast and default tasks wait only when every back
        end is busy."""
        if self.s is None:
            return
        if any(t.queue_timeout == FAST for t in self.s.queue):
            assert self.s.state.fast_reached()


TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
