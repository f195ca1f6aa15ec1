"""Queue estimates: one replay of the whole queue yields every task's wait.

A task's estimate is its start time when the design's algorithm is replayed,
with expected run times, on the running tasks and the tasks ahead of it in
the queue.  The design notes that this start time does not depend on the
tasks behind it, so the replay of the *whole* queue gives every queued
task's start time at once: O(queue) cycles per change, where a replay per
task (the first version) cost O(queue^2) cycles, each O(queue).  The tests
check the two agree on random queues and event sequences (hypothesis), with
the replay per task kept there as the oracle, and docs/asymptote.md says
where the equivalence needs the queue's own use of the scheduler.
"""

from __future__ import annotations

from .scheduler import FAST, Downgrade, Halt, Start, TaskClass, _State, run_cycles


class _Copy:
    """A task in the replay: the scheduler's tasks are never touched."""

    __slots__ = ("kind", "timeout_ms", "started_at", "original", "queue_timeout")

    def __init__(self, kind, timeout_ms=None, started_at=None, original=None):
        self.kind, self.timeout_ms, self.started_at, self.original = kind, timeout_ms, started_at, original
        self.queue_timeout = FAST if kind is TaskClass.DEFAULT else kind.value


def _first(options):
    """The replay's "random one": deterministic, so estimates are stable."""
    return options[0]


def _copy_state(scheduler, now: float):
    """The scheduler's state with copies of its tasks, and each running
    task's expected end."""
    sim = _State(scheduler.limits, list(scheduler.state.free))
    ends = {}
    for task, slot in scheduler.state.running.items():
        copy = _Copy(task.kind, task.timeout_ms, task.started_at)
        sim.running[copy] = slot
        ends[copy] = max(now, task.started_at + scheduler.expected_ms(task) / 1000)
    for task in scheduler.state.queue:
        sim.queue.append(_Copy(task.kind, original=task))
    return sim, ends


class Replay:
    """One replay of the whole queue on a copy of the scheduler's state, run
    in slices (``advance``) so that a long queue never holds the reactor for
    long; the waits are those of the state when it began.  Its steps (time
    advances and actions) are added to ``scheduler.replay_steps``."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.now = self.t = scheduler.clock()
        self.sim, self.ends = _copy_state(scheduler, self.now)
        self.waits = dict.fromkeys(scheduler.state.queue)
        self.done = False

    def advance(self, steps: float = float("inf")) -> bool:
        """Replay at most ``steps`` steps; True once every wait is known."""
        while not self.done and steps > 0:
            steps -= self._step()
        return self.done

    def _ms(self) -> int:
        return int(round((self.t - self.now) * 1000))

    def _step(self) -> int:
        sim, ends, t = self.sim, self.ends, self.t
        actions = run_cycles(sim, t, _first)
        for action in actions:
            if isinstance(action, Start):
                if action.task.original is not None:
                    self.waits[action.task.original] = self._ms()
                ends[action.task] = t + self.scheduler.expected_ms(action.task) / 1000
            elif isinstance(action, Downgrade):
                started = t if action.task.started_at is None else action.task.started_at
                ends[action.task] = min(ends[action.task], started + action.timeout_ms / 1000)
            elif isinstance(action, Halt):
                ends.pop(action.task, None)
        live = [task for task in sim.running if task in ends] if sim.queue else []
        if not live:  # all started, or nothing will free a back end
            for copy in sim.queue:
                self.waits[copy.original] = self._ms()
            self.done = True
        else:
            self.t = max(t, min(ends[task] for task in live))
            for task in live:
                if ends[task] <= self.t:
                    slot = sim.running[task]
                    sim.release(task)
                    if slot in self.scheduler.disabled:  # a failed back end stays out
                        sim.free.remove(slot)
                    del ends[task]
        self.scheduler.replay_steps += 1 + len(actions)
        return 1 + len(actions)


def estimate_waits(scheduler) -> dict:
    """Each queued task's expected wait in ms, in queue order."""
    replay = Replay(scheduler)
    replay.advance()
    return replay.waits
