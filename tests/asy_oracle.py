"""The first version's queue estimates, kept as the tests' reference: one
replay of the algorithm per queued task, on the running tasks and just the
tasks ahead of it, on a plain list as the queue (as the first version had).
Cubic in the queue's length; only the tests call it."""

from __future__ import annotations

from mathrun.asy.scheduler import Downgrade, Halt, Start, Task, _State, run_cycles


class ListQueue(list):
    """The first version's queue: a list scanned for the first task whose
    class is not ignored."""

    def head(self, ignored=()):
        return next((t for t in self if t.queue_timeout not in ignored), None)


def oracle_estimates(scheduler) -> dict:
    queue = list(scheduler.state.queue)
    now = scheduler.clock()
    return {task: _replay(scheduler, queue[: i + 1], now) for i, task in enumerate(queue)}


def _replay(self, prefix: list, now: float) -> int:
    sim = _State(self.limits, list(self.state.free))
    ends = {}
    for task, slot in self.state.running.items():
        copy = Task(task.kind, timeout_ms=task.timeout_ms, started_at=task.started_at)
        sim.running[copy] = slot
        ends[copy] = max(now, task.started_at + self.expected_ms(task) / 1000)
    sim.queue = ListQueue(Task(t.kind, submitted_at=t.submitted_at) for t in prefix)
    mine = sim.queue[-1]
    t = now
    for _ in range(4 * len(prefix) + len(ends) + 4):
        for action in run_cycles(sim, t, lambda options: options[0]):
            if isinstance(action, Start):
                if action.task is mine:
                    return int(round((t - now) * 1000))
                ends[action.task] = t + self.expected_ms(action.task) / 1000
            elif isinstance(action, Downgrade):
                started = t if action.task.started_at is None else action.task.started_at
                ends[action.task] = min(ends[action.task], started + action.timeout_ms / 1000)
            elif isinstance(action, Halt):
                ends.pop(action.task, None)
        live = [task for task in sim.running if task in ends]
        if not live:
            break
        t = max(t, min(ends[task] for task in live))
        for task in live:
            if ends[task] <= t:
                slot = sim.running[task]
                sim.release(task)
                if slot in self.disabled:  # a failed back end stays out
                    sim.free.remove(slot)
                del ends[task]
    return int(round((t - now) * 1000))
