"""The Job API on real processes: stdin, streamed output, limits changed
while running, failures to start, accounting."""

from __future__ import annotations

import os

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from mathrun.sandbox import Limits, Status
from mathrun.sandbox.workspace import read_files

from .helpers import PYTHON, async_test, make_sandbox


class JobTests(unittest.TestCase):
    def setUp(self):
        self.sandbox = make_sandbox(self, jobs=2)

    @async_test
    async def test_stdin_and_separate_streams(self):
        r = await self.sandbox.run(["sh", "-c", "tr a-z A-Z; echo oops >&2; exit 4"], stdin=b"hello\n")
        self.assertEqual((r.status, r.exit_code, r.stdout, r.stderr), (Status.NONZERO_EXIT, 4, b"HELLO\n", b"oops\n"))

    @async_test
    async def test_input_files_and_reading_results(self):
        lease = await self.sandbox.acquire()
        try:
            lease.workspace.write_file("in/data.txt", b"2 3\n")
            job = lease.spawn(["sh", "-c", "read a b < in/data.txt; echo $((a*b)) > out.txt; mkdir sub"])
            self.assertEqual((await job.done).status, Status.OK)
            self.assertEqual(lease.workspace.read_file("out.txt", 100), b"6\n")
            self.assertEqual(read_files(lease.workspace.path, 10, 100), [("out.txt", b"6\n")])
            self.assertRaises(OSError, lease.workspace.read_file, "sub", 100)
            self.assertRaises(ValueError, lease.workspace.read_file, "../x", 100)
        finally:
            await lease.release()

    @async_test
    async def test_streamed_output(self):
        lease = await self.sandbox.acquire()
        seen = []
        try:
            job = lease.spawn(
                ["sh", "-c", "while read line; do echo got $line; done"], on_output=lambda s, d: seen.append((s, d))
            )
            job.write(b"one\n")
            while not seen:
                await task.deferLater(reactor, 0.01, lambda: None)
            self.assertEqual(seen, [("stdout", b"got one\n")])
            job.close_stdin()
            r = await job.done
            self.assertEqual((r.status, r.stdout), (Status.OK, b""))
        finally:
            await lease.release()

    @async_test
    async def test_lowering_the_wall_limit_of_a_running_job(self):
        lease = await self.sandbox.acquire()
        try:
            job = lease.spawn(["sleep", "30"], Limits(wall_seconds=30))
            await task.deferLater(reactor, 0.1, lambda: None)
            job.lower_wall_limit(0.2)
            job.lower_wall_limit(10)  # never lengthens
            r = await job.done
            self.assertEqual(r.status, Status.TIME_LIMIT)
            self.assertLess(r.wall, 5)
        finally:
            await lease.release()

    @async_test
    async def test_cancel(self):
        lease = await self.sandbox.acquire()
        job = lease.spawn(["sleep", "30"])
        await lease.release()
        self.assertEqual((await job.done).status, Status.CANCELLED)

    @async_test
    async def test_missing_program(self):
        r = await self.sandbox.run(["/nonexistent/prog"])
        self.assertEqual(r.status, Status.INTERNAL_ERROR)
        self.assertIn("starting the program failed: No such file or directory", r.detail)
        self.assertIn(b"exec of '/nonexistent/prog' failed", r.stderr)

    @async_test
    async def test_accounting_counts_children(self):
        burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
        r = await self.sandbox.run(["sh", "-c", f"{PYTHON} -c '{burn}' & {PYTHON} -c '{burn}'; wait"])
        self.assertEqual(r.status, Status.OK)
        self.assertGreaterEqual(r.user_cpu + r.system_cpu, 0.55)
        self.assertGreater(r.peak_memory, 1 << 20)
        self.assertGreater(r.wall, 0.15)

    @async_test
    async def test_environment_is_clean(self):
        os.environ["MATHRUN_SECRET"] = "x"
        self.addCleanup(os.environ.pop, "MATHRUN_SECRET")
        r = await self.sandbox.run(["env"], env={"EXTRA": "1"})
        names = {line.split(b"=")[0] for line in r.stdout.splitlines()}
        self.assertEqual(names, {b"EXTRA", b"HOME", b"LANG", b"PATH", b"TMPDIR"})

    @async_test
    async def test_waiting_for_a_user(self):
        leases = [await self.sandbox.acquire() for _ in range(2)]
        third = self.sandbox.acquire()
        self.assertNoResult(third)
        await leases[0].release()
        lease = await third
        self.assertEqual(lease.user, leases[0].user)
        await defer.gatherResults([lease.release(), leases[1].release()])
