"""Queue estimates: one replay of the whole queue gives the same waits as the
first version's replay per task (the oracle, tests/asy_oracle.py), on random
queues and event sequences under a fake clock; and its work per event is
linear in the queue, counted in replay steps."""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.internet.task import Clock
from twisted.trial import unittest

from mathrun.asy.scheduler import FAST, MEDIUM, SLOW, ClassLimits, Scheduler, Task, TaskClass, TaskQueue

from .asy_oracle import ListQueue, oracle_estimates

QUEUED = [TaskClass.DEFAULT, TaskClass.FAST, TaskClass.MEDIUM, TaskClass.SLOW]


class EstimateMachine(RuleBasedStateMachine):
    """Events as the queue makes them: submit, finish (its back end perhaps
    failed: taken out of rotation as its task ends), cancel, re-enable,
    measured run times, time passing; a cycle after each, as the queue does."""

    def __init__(self):
        super().__init__()
        self.clock = Clock()
        self.s = None

    @rule(
        slow=st.integers(1, 3),
        extra_medium=st.integers(0, 2),
        extra_fast=st.integers(0, 3),
        seed=st.integers(0, 100),
    )
    @precondition(lambda self: self.s is None)
    def setup(self, slow, extra_medium, extra_fast, seed):
        limits = ClassLimits(slow, slow + extra_medium, slow + extra_medium + extra_fast)
        self.s = Scheduler(limits, self.clock.seconds, random.Random(seed))

    @rule(kind=st.sampled_from(list(TaskClass)))
    @precondition(lambda self: self.s is not None)
    def submit(self, kind):
        self.s.submit(Task(kind))
        self.s.cycle()

    @rule(kind=st.sampled_from(QUEUED))
    @precondition(lambda self: self.s is not None)
    def submit_before_the_cycle(self, kind):
        """The estimate is also asked of a state the cycle has not settled:
        the replay then makes the downgrades and starts itself."""
        self.s.submit(Task(kind))

    @rule(data=st.data(), failed=st.booleans())
    @precondition(lambda self: self.s is not None and self.s.running)
    def finish(self, data, failed):
        task = data.draw(st.sampled_from(sorted(self.s.running, key=lambda t: t.id)))
        if failed:
            self.s.disable(self.s.running[task])
        self.s.finished(task)
        self.s.cycle()

    @rule(data=st.data())
    @precondition(lambda self: self.s is not None and (self.s.running or self.s.queue))
    def cancel(self, data):
        self.s.cancel(data.draw(st.sampled_from(sorted(list(self.s.running) + self.s.queue, key=lambda t: t.id))))
        self.s.cycle()

    @rule(data=st.data())
    @precondition(lambda self: self.s is not None and self.s.disabled)
    def enable(self, data):
        self.s.enable(data.draw(st.sampled_from(sorted(self.s.disabled))))
        self.s.cycle()

    @rule(key=st.sampled_from([FAST, MEDIUM, SLOW, None]), ms=st.floats(1, 70000))
    @precondition(lambda self: self.s is not None)
    def measured(self, key, ms):
        self.s.mean_ms[key] = ms

    @rule(seconds=st.floats(0, 40))
    def wait(self, seconds):
        self.clock.advance(seconds)

    @invariant()
    def same_as_a_replay_per_task(self):
        if self.s is not None:
            assert self.s.estimates() == oracle_estimates(self.s)


TestEstimateMachine = EstimateMachine.TestCase
TestEstimateMachine.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)


class TaskQueueTests(unittest.TestCase):
    def test_head_and_order_as_a_list(self):
        """The per-class FIFOs answer as the first version's list did."""
        rng = random.Random(3)
        tasks = [Task(rng.choice(QUEUED)) for _ in range(200)]
        fifo, plain = TaskQueue(tasks), ListQueue(tasks)
        for _ in range(150):
            victim = rng.choice(plain)
            fifo.remove(victim)
            plain.remove(victim)
            for ignored in (set(), {SLOW}, {MEDIUM, SLOW}, {FAST, MEDIUM, SLOW}):
                self.assertIs(fifo.head(ignored), plain.head(ignored))
            self.assertEqual(list(fifo), list(plain))
            self.assertEqual(len(fifo), len(plain))


class WorkPerEvent(unittest.TestCase):
    def test_linear_in_the_queue(self):
        """With 1000 tasks queued, one event costs one replay of at most a few
        steps per queued and running task (the replay per task: ~n^2/2)."""
        clock = Clock()
        s = Scheduler(ClassLimits(1, 1, 2), clock.seconds, random.Random(1))
        for i in range(1002):
            s.submit(Task(QUEUED[i % 4]))
        s.cycle()
        self.assertEqual((len(s.running), len(s.queue)), (2, 1000))
        for _ in range(5):
            clock.advance(1)
            s.finished(next(iter(s.running)))
            s.cycle()
            before = s.replay_steps
            waits = s.estimates()
            steps = s.replay_steps - before
            self.assertEqual(len(waits), len(s.queue))
            self.assertLessEqual(steps, 3 * (len(s.queue) + len(s.running)) + 3)
        # The waits grow along the queue: the replay did run the whole queue.
        ordered = list(waits.values())
        self.assertGreater(ordered[-1], ordered[0])
        self.assertGreater(ordered[-1], 100 * 1000)
