"""The Asymptote queue algorithm of the design, as a pure state machine.

No I/O and no reactor: a clock (a callable returning seconds) and a random
source are injected.  The I/O layer (:mod:`.queue`) submits tasks, runs
``cycle`` after every change, and carries out the returned actions: start a
task on a back-end slot, lower a running default task's timeout, halt an
interactive task, deny a task.

Counting, as the design says: a running task counts towards the limit of its
*current* timeout: the slow limit counts running slow-timeout tasks, the
medium limit medium- and slow-timeout ones, the fast limit every running task
(interactive ones included).  A default task in the queue is treated as fast.
"""

from __future__ import annotations

import collections
import enum
import heapq
import itertools
from dataclasses import dataclass, field

FAST, MEDIUM, SLOW = 3000, 10000, 30000


class TaskClass(enum.Enum):
    """The queue classes: the three timeouts, a default task, an interactive session."""

    FAST = FAST
    MEDIUM = MEDIUM
    SLOW = SLOW
    DEFAULT = "default"
    INTERACTIVE = "interactive"


def task_class_for(timeout_ms, interactive: bool) -> TaskClass:
    """The class of a client's task; the only timeouts are 3000/10000/30000/none."""
    if interactive:
        return TaskClass.INTERACTIVE
    if timeout_ms is None:
        return TaskClass.DEFAULT
    try:
        return TaskClass(timeout_ms)
    except ValueError:
        raise ValueError("timeout must be one of 3000, 10000, 30000, none") from None


@dataclass(frozen=True)
class ClassLimits:
    """How many back ends tasks of at least the slow / medium timeout may hold,
    and all tasks together: so that slow tasks never starve fast ones."""

    slow: int
    medium: int
    fast: int

    def __post_init__(self):
        if not 1 <= self.slow <= self.medium <= self.fast:
            raise ValueError(f"need 1 <= slow <= medium <= fast limits, got {self.slow}, {self.medium}, {self.fast}")


_ids = itertools.count(1)


@dataclass(eq=False)
class Task:
    """One client's task; ``timeout_ms`` is its current timeout once running
    (None for interactive tasks, which have no class timeout)."""

    kind: TaskClass
    client: object = None
    timeout_ms: int | None = None
    submitted_at: float = 0.0
    started_at: float | None = None
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def queue_timeout(self) -> int:
        """How the queue sees it: a default task enjoys the fast class."""
        return FAST if self.kind is TaskClass.DEFAULT else self.kind.value

    def __repr__(self):
        return f"Task#{self.id}({self.kind.name}, {self.timeout_ms})"


@dataclass(frozen=True)
class Start:
    """Run ``task`` on back end ``slot`` with that timeout."""

    task: Task
    slot: int
    timeout_ms: int | None


@dataclass(frozen=True)
class Downgrade:
    """Lower a running default task's timeout to free a class."""

    task: Task
    timeout_ms: int


@dataclass(frozen=True)
class Halt:
    """Stop an interactive session to free its back end."""

    task: Task


@dataclass(frozen=True)
class Deny:
    """Refuse a task, with the client's reason."""

    task: Task
    reason: str


NO_BACKEND = "No back end is free for an interactive session; try again later"


class TaskQueue:
    """The waiting tasks in order, kept as one FIFO per queue class, so that
    the cycle finds "the first task whose class is not ignored" in O(1)
    however long the queue is (the estimator runs the cycle once per
    queued task)."""

    def __init__(self, tasks=()):
        self._fifos = {FAST: collections.deque(), MEDIUM: collections.deque(), SLOW: collections.deque()}
        self._seq: dict = {}
        self._next = 0
        for task in tasks:
            self.append(task)

    def append(self, task) -> None:
        """A task at the end of its class's FIFO."""
        self._seq[task] = self._next
        self._fifos[task.queue_timeout].append((self._next, task))
        self._next += 1

    def remove(self, task) -> None:
        """A task leaves the queue (started or cancelled)."""
        fifo = self._fifos[task.queue_timeout]
        entry = (self._seq.pop(task), task)
        if fifo[0] == entry:
            fifo.popleft()
        else:
            fifo.remove(entry)

    def head(self, ignored=()):
        """The first task whose queue class is not in ``ignored``."""
        best = None
        for timeout, fifo in self._fifos.items():
            if fifo and timeout not in ignored and (best is None or fifo[0][0] < best[0]):
                best = fifo[0]
        return None if best is None else best[1]

    def __contains__(self, task) -> bool:
        return task in self._seq

    def __len__(self) -> int:
        return len(self._seq)

    def __iter__(self):
        return (task for _, task in heapq.merge(*self._fifos.values(), key=lambda entry: entry[0]))


class _State:
    """Queue, running tasks and free slots; the cycle works on this, so that
    the estimator can run the very same algorithm on a copy."""

    def __init__(self, limits: ClassLimits, slots):
        self.limits = limits
        self.queue = TaskQueue()
        self.running: dict[Task, int] = {}
        self.free: list[int] = list(slots)

    def count(self, least: int) -> int:
        """Running tasks whose timeout is at least ``least`` (0: all)."""
        if least == 0:
            return len(self.running)
        return sum(1 for t in self.running if t.timeout_ms is not None and t.timeout_ms >= least)

    def slow_reached(self) -> bool:
        return self.count(SLOW) >= self.limits.slow

    def medium_reached(self) -> bool:
        return self.count(MEDIUM) >= self.limits.medium

    def fast_reached(self) -> bool:
        return self.count(0) >= self.limits.fast or not self.free

    def defaults_with(self, timeout: int) -> list[Task]:
        return [t for t in self.running if t.kind is TaskClass.DEFAULT and t.timeout_ms == timeout]

    def largest_timeout(self) -> int:
        if not self.slow_reached() and not self.medium_reached():
            return SLOW
        if not self.medium_reached():
            return MEDIUM
        return FAST

    def start(self, task: Task, now: float, actions: list) -> None:
        if task in self.queue:  # an interactive task never waits there
            self.queue.remove(task)
        slot = self.free.pop(0)
        self.running[task] = slot
        task.started_at = now
        if task.kind is TaskClass.DEFAULT:
            task.timeout_ms = self.largest_timeout()
        elif task.kind is not TaskClass.INTERACTIVE:
            task.timeout_ms = task.kind.value
        actions.append(Start(task, slot, task.timeout_ms))

    def release(self, task: Task) -> None:
        slot = self.running.pop(task)
        self.free.append(slot)


def _downgrade(task: Task, timeout: int, actions: list) -> None:
    task.timeout_ms = timeout
    actions.append(Downgrade(task, timeout))


def _head(state: _State, ignored: set) -> Task | None:
    """The first queued task whose class is not ignored in this cycle."""
    return state.queue.head(ignored)


def run_cycles(state: _State, now: float, choose) -> list:
    """The design's cycle, repeated while it starts tasks.  ``choose(list)``
    picks the "random one"."""
    actions: list = []
    while state.queue:
        ignored: set[int] = set()  # queue timeouts ignored for this cycle
        first = _head(state, ignored)
        if first.queue_timeout == SLOW and state.slow_reached():
            slow_defaults = state.defaults_with(SLOW)
            if slow_defaults:
                victim = choose(slow_defaults)
                _downgrade(victim, FAST if state.medium_reached() else MEDIUM, actions)
            if state.slow_reached():
                ignored.add(SLOW)
        first = _head(state, ignored)
        if first is not None and first.queue_timeout >= MEDIUM and state.medium_reached():
            candidates = state.defaults_with(SLOW) or state.defaults_with(MEDIUM)
            if candidates:
                _downgrade(choose(candidates), FAST, actions)
            if state.medium_reached():
                ignored.update((MEDIUM, SLOW))
        first = _head(state, ignored)
        if first is not None and state.fast_reached():
            for task in state.defaults_with(SLOW) + state.defaults_with(MEDIUM):
                _downgrade(task, FAST, actions)
            interactive = [t for t in state.running if t.kind is TaskClass.INTERACTIVE]
            if interactive:
                victim = choose(interactive)
                state.release(victim)
                actions.append(Halt(victim))
        first = _head(state, ignored)
        if first is None or state.fast_reached():
            break
        state.start(first, now, actions)
    return actions


class Scheduler:
    """The queue of one front end over ``limits.fast`` back-end slots."""

    def __init__(self, limits: ClassLimits, clock, rng, prior_ms: dict | None = None):
        self.limits = limits
        self.clock = clock
        self.rng = rng
        self.state = _State(limits, range(limits.fast))
        self.disabled: set[int] = set()
        # Mean run time per class, for estimates: measured, with a prior.
        self.mean_ms = {FAST: 1000.0, MEDIUM: 3000.0, SLOW: 8000.0, None: 60000.0}
        self.mean_ms.update(prior_ms or {})
        self.samples = {k: 0 for k in self.mean_ms}
        self.replay_steps = 0  # work of the estimator, for tests and metrics

    @property
    def queue(self) -> list[Task]:
        """The waiting tasks, in order (a copy)."""
        return list(self.state.queue)

    @property
    def running(self) -> dict[Task, int]:
        """The running tasks and their back ends (a copy)."""
        return dict(self.state.running)

    def submit(self, task: Task) -> list:
        """Queue a task; an interactive one starts at once or is denied."""
        task.submitted_at = self.clock()
        if task.kind is not TaskClass.INTERACTIVE:
            self.state.queue.append(task)
            return []
        state, actions = self.state, []
        if state.fast_reached():
            candidates = state.defaults_with(SLOW)
            if candidates:
                _downgrade(self.rng.choice(candidates), MEDIUM, actions)
            elif state.defaults_with(MEDIUM):
                _downgrade(self.rng.choice(state.defaults_with(MEDIUM)), FAST, actions)
            actions.append(Deny(task, NO_BACKEND))
            return actions
        state.start(task, self.clock(), actions)
        return actions

    def cycle(self) -> list:
        """Start what may start now; the actions to carry out."""
        return run_cycles(self.state, self.clock(), self.rng.choice)

    def finished(self, task: Task) -> None:
        """A running task ended: its slot is free, its run time measured."""
        if task in self.state.running:
            self._release(task)
            key = task.timeout_ms if task.kind is not TaskClass.INTERACTIVE else None
            elapsed_ms = (self.clock() - task.started_at) * 1000
            n = self.samples[key] = min(self.samples[key] + 1, 20)
            self.mean_ms[key] += (elapsed_ms - self.mean_ms[key]) / n

    def cancel(self, task: Task) -> None:
        """The client left: drop the task, queued or running."""
        if task in self.state.queue:
            self.state.queue.remove(task)
        elif task in self.state.running:
            self._release(task)

    def _release(self, task: Task) -> None:
        slot = self.state.running.pop(task)
        if slot not in self.disabled:
            self.state.free.append(slot)

    def disable(self, slot: int) -> None:
        """Take a back end out of rotation (it failed)."""
        self.disabled.add(slot)
        if slot in self.state.free:
            self.state.free.remove(slot)

    def enable(self, slot: int) -> None:
        """A back end is back in rotation."""
        if slot in self.disabled:
            self.disabled.discard(slot)
            if slot not in self.state.running.values():
                self.state.free.append(slot)

    # -- estimates ------------------------------------------------------------
    def expected_ms(self, task: Task) -> float:
        """How long a task of this class is expected to run (the estimates' unit)."""
        key = task.timeout_ms if task.kind is not TaskClass.INTERACTIVE else None
        mean = self.mean_ms[key]
        return mean if key is None else min(mean, key)

    def estimates(self) -> dict[Task, int]:
        """Each queued task's expected wait in ms (see :mod:`.estimate`)."""
        from .estimate import estimate_waits

        return estimate_waits(self)


def changed_materially(old_ms: int, new_ms: int) -> bool:
    """Worth a new ``queue`` message: by more than a second and 20 %."""
    return abs(new_ms - old_ms) > max(1000, 0.2 * max(old_ms, 1))
