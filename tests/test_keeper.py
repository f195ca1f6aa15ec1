"""The per-slot keeper (ext/spawn-keeper.c, root): jobs of one slot one after
the other share its namespaces and cgroups but nothing of each other: no
process, no file in /tmp, no pid numbering, no peak memory; a keeper that
dies ends its job and the slot gets a new one.
"""

from __future__ import annotations

import json
import os
import signal

from twisted.trial import unittest

from mathrun.sandbox import Limits, Status

from .helpers import PYTHON, ROOT, async_test, children_named, make_sandbox, processes_of, within

PROBE = """
import json, os, subprocess, sys
print(json.dumps({'pid': os.getpid(), 'ppid': os.getppid(), 'tmp': sorted(os.listdir('/tmp')),
                  'procs': sorted(int(p) for p in os.listdir('/proc') if p.isdigit())}))
"""

# Leaves a daemon behind (its own session, parent gone), a file in /tmp and
# 60 MB touched: none of it may reach the next job of the slot.
LEAVE = """
import os, subprocess
open('/tmp/left-by-the-first', 'w').write('x')
subprocess.Popen(['sleep', '60'], start_new_session=True)
block = bytearray(60 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
print('left')
"""


def keepers_of(server_pid: int) -> list[int]:
    """The spawn server's children named mathrun-keeper."""
    return children_named(server_pid, "mathrun-keeper")


class KeeperTests(unittest.TestCase):
    if not ROOT:
        skip = "the keepers are the privileged sandbox's (root)"

    def setUp(self):
        self.sandbox = make_sandbox(self, jobs=1)  # one slot: every job on the same keeper

    async def run_python(self, code: str, limits=None):
        return await within(self.sandbox.run([PYTHON, "-c", code], limits or Limits(wall_seconds=20)))

    @async_test
    async def test_the_next_job_of_a_slot_sees_nothing_of_the_last(self):
        self.assertTrue(self.sandbox.uses_keeper)
        first = await self.run_python(PROBE)
        left = await self.run_python(LEAVE, Limits(wall_seconds=20, memory_bytes=256 << 20))
        self.assertEqual((left.status, left.stdout), (Status.OK, b"left\n"), left.stderr)
        self.assertTrue(left.leftover, "the daemon it left was found and killed")
        self.assertGreater(left.peak_memory, 60 << 20)
        after = await self.run_python(PROBE, Limits(wall_seconds=20, memory_bytes=256 << 20))
        self.assertEqual(after.status, Status.OK, after.stderr)
        seen, again = json.loads(first.stdout), json.loads(after.stdout)
        self.assertEqual(again["tmp"], [], "a file of the job before")
        self.assertEqual(again["procs"], [again["pid"]], "a process of the job before")
        self.assertEqual((again["pid"], again["ppid"]), (seen["pid"], seen["ppid"]), "pids count up across jobs")
        self.assertLess(after.peak_memory, 40 << 20, "the peak memory of the job before")
        self.assertFalse(after.leftover)
        (user,) = self.sandbox.pool._all
        self.assertEqual(processes_of(user.uid), [], "the daemon of the job before survived")

    @async_test
    async def test_a_remade_workspace_reaches_the_keeper(self):
        """The keeper keeps the slot's workspace mounted from job to job;
        when the sandbox remakes it (a cleanup that had to unmount it), the
        next job works in the new tmpfs, its files visible to the sandbox,
        and nothing of the old one is left in the keeper's view."""
        script = "echo old > /tmp/t; echo kept > f; stat -c %d . /tmp"
        first = await self.sandbox.acquire()
        root = first.workspace.root
        job = first.spawn(["sh", "-c", script], Limits(wall_seconds=20))
        job.close_stdin()
        before = (await within(job.done)).stdout.split()
        first.external_processes = True  # as when processes may be left: the reaper unmounts
        await within(first.release())
        self.assertFalse(os.path.ismount(root))
        second = await self.sandbox.acquire()
        try:
            second.workspace.write_file("staged", b"new\n")
            job = second.spawn(["sh", "-c", "ls -A . /tmp; cat staged; echo out > made; stat -c %d . /tmp"])
            job.close_stdin()
            result = await within(job.done)
            self.assertEqual(second.workspace.read_file("made", 100), b"out\n")
        finally:
            await within(second.release())
        *listing, dev, tmp_dev = result.stdout.decode().split("\n")[:-1]
        self.assertEqual(listing, [".:", "staged", "", "/tmp:", "new"], result.stderr)
        self.assertEqual(dev, tmp_dev)
        self.assertNotEqual(dev, before[0].decode(), "the old tmpfs")
        self.assertEqual(before[0], before[1])

    @async_test
    async def test_a_keeper_that_dies_ends_its_job_and_the_slot_gets_a_new_one(self):
        await self.run_python("print('warm')")
        (keeper,) = keepers_of(self.sandbox.starter.pid)
        lease = await self.sandbox.acquire()
        job = lease.spawn(["sh", "-c", "echo up; exec sleep 60"], Limits(wall_seconds=30))
        job.close_stdin()
        try:
            os.kill(keeper, signal.SIGKILL)
            result = await within(job.done)
        finally:
            await within(lease.release())
        self.assertNotEqual(result.status, Status.OK)
        self.assertEqual(processes_of(lease.user.uid), [], "the job outlived its keeper")
        follow = await self.run_python("print('still here')")
        self.assertEqual((follow.status, follow.stdout), (Status.OK, b"still here\n"), follow.stderr)
        (new,) = keepers_of(self.sandbox.starter.pid)
        self.assertNotEqual(new, keeper)


class NoKeeperTests(unittest.TestCase):
    if not ROOT:
        skip = "the keepers are the privileged sandbox's (root)"

    @async_test
    async def test_without_keepers_each_job_gets_fresh_namespaces(self):
        sandbox = make_sandbox(self, jobs=1, keeper=False)
        self.assertFalse(sandbox.uses_keeper)
        result = await within(sandbox.run([PYTHON, "-c", PROBE], Limits(wall_seconds=20)))
        self.assertEqual(result.status, Status.OK, result.stderr)
        seen = json.loads(result.stdout)
        self.assertEqual((seen["ppid"], seen["procs"]), (0, [seen["pid"]]))
        self.assertEqual(keepers_of(sandbox.starter.pid), [])


class KeeperAndForeignProcessesTests(unittest.TestCase):
    """A slot whose keeper ran a job, then leased to processes the keeper did
    not start (a Maxima child, forked by its mother): their cleanup must not
    count the keeper (root, in the slot's pids cgroup) as a survivor."""

    if not ROOT:
        skip = "the keepers are the privileged sandbox's (root)"

    @async_test
    async def test_a_keeper_slot_cleans_up_after_processes_of_its_own(self):
        sandbox = make_sandbox(self, jobs=1)
        first = await within(sandbox.run(["/bin/true"], Limits(wall_seconds=20)))
        self.assertEqual(first.status, Status.OK, first.stderr)
        lease = await within(sandbox.acquire())
        lease.external_processes = True  # as the Maxima pool marks a child's lease
        await within(lease.release())
        self.assertEqual(sandbox.pool.quarantined, 0, "the slot was taken out of service")
        again = await within(sandbox.run(["/bin/true"], Limits(wall_seconds=20)))
        self.assertEqual(again.status, Status.OK, again.stderr)
