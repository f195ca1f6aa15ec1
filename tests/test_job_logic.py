"""The sandbox's Job and Lease on fakes: one object for every front end, whatever
started the process (the jail helper or the Maxima mother)."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mathrun.maxima.child import Child
from mathrun.maxima.config import MaximaConfig
from mathrun.sandbox import Limits, Status
from mathrun.sandbox.pool import JobUser, SlotPool
from mathrun.sandbox.sandbox import Lease, Sandbox, SandboxConfig
from mathrun.sandbox.spawner import IJobEvents, IJobStarter

from .fakes import FakeStarter, ProcessReactor


class FakeWorkspace:
    root = path = "/nonexistent"
    privileged = True


def lease_on(reactor, **max_limits) -> Lease:
    sandbox = Sandbox(SandboxConfig(max_limits=Limits(**max_limits)), reactor=reactor)
    sandbox.finished = []
    sandbox.observers.append(lambda result, frontend: sandbox.finished.append((result.status, frontend)))
    return Lease(
        sandbox,
        user=type("User", (), {"name": "u-1", "uid": 1001, "gid": 1001})(),
        workspace=FakeWorkspace(),
        cgroup=None,
    )


class JobTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.lease = lease_on(self.reactor)
        self.control = FakeStarter()

    def test_fakes_provide_the_interface(self):
        verifyObject(IJobStarter, self.control)
        verifyObject(IJobStarter, Child(self.reactor, self.lease, MaximaConfig()))
        verifyObject(IJobEvents, self.lease.adopt(self.control, Limits()))

    def test_wall_limit_stops_and_is_the_verdict(self):
        job = self.lease.adopt(self.control, Limits(wall_seconds=2), frontend="maxima")
        done = job.done
        self.reactor.advance(1.9)
        self.assertEqual(self.control.kills, [])
        self.reactor.advance(0.2)
        self.assertEqual(self.control.kills, [7])
        job.exited(b"status=ended wall=2.1")
        result = self.successResultOf(done)
        self.assertEqual(result.status, Status.TIME_LIMIT)
        self.assertEqual(self.lease.sandbox.finished, [(Status.TIME_LIMIT, "maxima")])

    def test_output_cap_keeps_exactly_the_cap(self):
        job = self.lease.adopt(self.control, Limits(output_bytes=10))
        job.output("stdout", b"12345678")
        job.output("stdout", b"abcdef")
        job.output("stdout", b"more after the cap")
        self.assertEqual(self.control.kills, [7])
        job.exited(b"status=ended")
        result = self.successResultOf(job.done)
        self.assertEqual((result.status, result.stdout), (Status.OUTPUT_LIMIT, b"12345678ab"))

    def test_limits_are_capped_by_the_operators_maxima(self):
        lease = lease_on(self.reactor, memory_bytes=100 << 20, processes=8)
        job = lease.adopt(self.control, Limits(memory_bytes=1 << 30, processes=64))
        self.assertEqual((job.limits.memory_bytes, job.limits.processes), (100 << 20, 8))
        child = Child(self.reactor, lease, MaximaConfig(memory_bytes=1 << 30, processes=64))
        self.assertEqual((child.limits.memory_bytes, child.limits.processes), (100 << 20, 8))

    def test_ended_output_is_ok_with_unknown_exit_status(self):
        job = self.lease.adopt(self.control, Limits())
        job.output("stdout", b"x^3/3")
        job.exited(b"status=ended wall=0.01")
        result = self.successResultOf(job.done)
        self.assertEqual((result.status, result.exit_code, result.stdout), (Status.OK, None, b"x^3/3"))

    def test_a_second_job_on_a_busy_lease_is_refused(self):
        self.lease.adopt(self.control, Limits())
        self.assertRaises(RuntimeError, self.lease.adopt, FakeStarter(), Limits())

    def test_no_report_is_an_internal_error_and_reaps_at_release(self):
        job = self.lease.adopt(self.control, Limits())
        job.lost("the supervisor vanished")
        result = self.successResultOf(job.done)
        self.assertEqual(result.status, Status.INTERNAL_ERROR)
        self.assertIn("the supervisor vanished", result.describe())
        self.assertTrue(self.lease.external_processes)


class CleanWorkspace:
    """A workspace that records its removal (no tmpfs of its own)."""

    root = path = "/nonexistent"
    privileged = True
    mounted = False

    def __init__(self):
        self.removed = False

    def remove(self):
        self.removed = True


class LeaseReleaseTests(unittest.SynchronousTestCase):
    """Lease.release on fakes (a ProcessReactor for the reaper): the job is
    stopped, what it left is reaped, and only then is the user free."""

    def setUp(self):
        self.reactor = ProcessReactor()
        self.sandbox = Sandbox(SandboxConfig(privileged=True), reactor=self.reactor)
        self.user = JobUser("u-1", 1001, 1001)
        self.sandbox.helper = JobUser("helper", 999, 999)
        self.sandbox.pool = SlotPool([self.user])
        self.successResultOf(self.sandbox.pool.acquire())
        self.workspace = CleanWorkspace()
        self.lease = Lease(self.sandbox, self.user, self.workspace, cgroup=None)
        self.sandbox.leases.add(self.lease)
        self.starter = FakeStarter()

    def reaper(self):
        ((proto, executable, args, _env),) = self.reactor.spawned
        self.assertEqual(args[1], "reaper")
        return proto

    def test_a_clean_job_frees_the_user_without_the_reaper(self):
        job = self.lease.adopt(self.starter, Limits())
        job.exited(b"status=exited code=0 remaining=0")
        self.successResultOf(self.lease.release())
        self.assertEqual((self.workspace.removed, self.sandbox.pool.free, self.reactor.spawned), (True, 1, []))

    def test_a_running_job_is_stopped_then_its_leftovers_reaped_then_the_user_freed(self):
        job = self.lease.adopt(self.starter, Limits())
        released = self.lease.release()
        self.assertEqual(self.starter.kills, [FakeStarter.job_id])
        job.lost("the starter died")  # nothing says the job's processes are gone
        reaper = self.reaper()
        self.assertEqual(reaper.transport.written, b"1001\n")
        self.assertNoResult(released)
        self.assertEqual((self.workspace.removed, self.sandbox.pool.free), (False, 0))
        reaper.outReceived(b"ok 1001\n")
        self.successResultOf(released)
        self.assertEqual((self.workspace.removed, self.sandbox.pool.free), (True, 1))

    def test_a_failed_reap_quarantines_the_user(self):
        job = self.lease.adopt(self.starter, Limits())
        job.lost("the starter died")
        released = self.lease.release()
        self.reaper().outReceived(b"failed 1001 processes survived\n")
        self.failureResultOf(released, RuntimeError)
        self.assertEqual((self.sandbox.pool.quarantined, self.sandbox.pool.free, self.workspace.removed), (1, 0, False))
