"""Unprivileged mode, bounded: each job in a user and PID namespace of its own.

These run as root and as an unprivileged user alike (``.ci/run`` runs them as
``nobody`` inside a pids cgroup it made).  As root the job's process limit is
its pids cgroup (RLIMIT_NPROC never binds uid 0); otherwise it is
RLIMIT_NPROC, which the kernel counts per user namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import stat

import treq
from prometheus_client import CollectorRegistry
from twisted.internet import reactor, task
from twisted.trial import unittest

from mathrun.sandbox import Limits, Status
from mathrun.sandbox.sandbox import DEFAULT_JAIL, SandboxRefused
from mathrun.sandbox.userns import userns_refusal
from mathrun.web.site import build_site

from .helpers import (
    PYTHON,
    PeakCounter,
    assert_still_serving,
    async_test,
    children_of,
    make_sandbox,
    make_unprivileged_sandbox,
    namespace_members,
    pid_namespace,
    temp_dir,
    within,
)

BOMB = (
    "import os, time\n"
    "if os.fork() == 0:\n"
    "    while True:\n"
    "        try: os.fork()\n"
    "        except OSError: pass\n"
    "time.sleep(60)\n"
)


async def job_namespace(job) -> str:
    """The PID namespace of a running job: of its main process, the child of
    the namespace's init (which is not dumpable), whose pid is the job's."""
    for _ in range(500):
        for main in children_of(job.pid) if job.pid else ():
            if namespace := pid_namespace(main):
                return namespace
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the job never started")


def _cmdlines() -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append(f.read().split(b"\0")[0].decode(errors="replace"))
        except OSError:
            pass
    return found


class UnprivilegedBoundsTests(unittest.TestCase):
    def setUp(self):
        self.sandbox = make_unprivileged_sandbox(self)

    @async_test
    async def test_fork_bomb_stays_at_its_limit_and_leaves_nothing(self):
        self.assertIsNone(self.sandbox.refusal)
        lease = await self.sandbox.acquire()
        try:
            job = lease.spawn([PYTHON, "-c", BOMB], Limits(wall_seconds=3, processes=16))
            job.close_stdin()
            namespace = await job_namespace(job)
            self.assertNotIn(namespace, (None, pid_namespace(os.getpid())))
            counter = PeakCounter(namespace)
            result = await job.done
            peak = counter.stop()
        finally:
            await lease.release()
        self.assertEqual(result.status, Status.TIME_LIMIT)
        peak -= 1  # the namespace's init, the jail's
        self.assertLessEqual(peak, 16)
        self.assertGreaterEqual(peak, 12, "the bomb never came near its limit")
        self.assertEqual(namespace_members(namespace), [])
        await assert_still_serving(self, self.sandbox)

    @async_test
    async def test_proc_shows_only_the_jobs_own_processes(self):
        script = (
            "sleep 10 & for p in /proc/[0-9]*; do echo ${p#/proc/} $(cat $p/comm); done;"
            f" kill -0 {os.getpid()} 2>/dev/null && echo server visible; kill $!"
        )
        r = await self.sandbox.run(["sh", "-c", script])
        self.assertEqual(r.status, Status.OK, r.stderr)
        seen = dict(line.split(" ", 1) for line in r.stdout.decode().splitlines())
        # Its namespace's init (forked by the spawn server; not dumpable, so
        # hidden from an unprivileged job), then the job.
        self.assertIn(seen.get("1"), (None, "mathrun-spawn"))
        self.assertEqual(seen.get("2"), "sh")
        self.assertLessEqual(set(seen.values()), {"mathrun-spawn", "sh", "sleep", "cat"}, seen)
        self.assertNotIn("server visible", r.stdout.decode())

    @async_test
    async def test_a_background_process_is_gone_after_the_job(self):
        marker = f"mathrun-nohup-{os.getpid()}"
        script = (
            f"setsid nohup bash -c 'trap \"\" TERM HUP; exec -a {marker} sleep 1000' >/dev/null 2>&1 &"
            f" sleep 0.2; pgrep -f ^{marker} >/dev/null && echo running"
        )
        lease = await self.sandbox.acquire()
        try:
            job = lease.spawn(["sh", "-c", script])
            job.close_stdin()
            namespace = await job_namespace(job)
            r = await job.done
        finally:
            await lease.release()
        self.assertEqual((r.status, r.stdout, r.leftover), (Status.OK, b"running\n", True))
        self.assertEqual([c for c in _cmdlines() if c.startswith(marker)], [])
        self.assertEqual(namespace_members(namespace), [])

    @async_test
    async def test_signals_a_job_sends_itself_work_as_outside_a_namespace(self):
        r = await self.sandbox.run(["sh", "-c", "kill -TERM $$"])
        self.assertEqual((r.status, r.signal), (Status.SIGNALLED, 15))
        r = await self.sandbox.run(
            ["sh", "-c", "exec head -c 2000000 /dev/zero > f"], Limits(file_size_bytes=1_000_000)
        )
        self.assertEqual(r.status, Status.OUTPUT_LIMIT)

    @async_test
    async def test_no_network_and_no_nested_user_namespace(self):
        r = await self.sandbox.run(
            ["sh", "-c", "cat /proc/net/dev | grep -c :; unshare --user true 2>/dev/null || echo no userns"]
        )
        self.assertEqual((r.status, r.stdout), (Status.OK, b"1\nno userns\n"))  # loopback only


class SlotNetworkNamespaceTests(unittest.TestCase):
    """Unprivileged mode as root: each slot has one network namespace, made
    at its first job and entered by each of its jobs; slots never share one."""

    if os.geteuid() != 0:
        skip = "slot network namespaces are made as root"

    def setUp(self):
        root = temp_dir(self, "mathrun-slotnet-")
        self.sandbox = make_sandbox(self, jobs=2, privileged=False, job_root=os.path.join(root, "jobs"))

    async def netns_of_a_job(self, lease, script="readlink /proc/self/ns/net") -> tuple[bytes, object]:
        try:
            job = lease.spawn(["sh", "-c", script], Limits(wall_seconds=20), stdin=b"")
            result = await within(job.done)
        finally:
            await lease.release()
        return result.stdout.strip(), result

    @async_test
    async def test_one_namespace_per_slot_none_shared_and_loopback_down(self):
        first, second = await self.sandbox.acquire(), await self.sandbox.acquire()
        # Both slots busy at once: their jobs' namespaces are not the same.
        job = second.spawn(["sh", "-c", "readlink /proc/self/ns/net"], Limits(wall_seconds=20), stdin=b"")
        mine, _ = await self.netns_of_a_job(first)
        theirs = (await within(job.done)).stdout.strip()
        await second.release()
        self.assertNotEqual(mine, theirs)
        self.assertNotEqual(mine, os.readlink("/proc/self/ns/net").encode())
        both = [await self.sandbox.acquire(), await self.sandbox.acquire()]  # (2 slots: one is first's)
        again = next(lease for lease in both if lease.user is first.user)
        await next(lease for lease in both if lease is not again).release()
        same, _ = await self.netns_of_a_job(again)  # the same slot again: the same namespace
        self.assertEqual(same, mine)
        # Loopback only, down, and no job can bring it up.
        lease = await self.sandbox.acquire()
        out, result = await self.netns_of_a_job(
            lease,
            "cat /proc/net/dev | grep -c :; /sbin/ip link set lo up 2>/dev/null || echo refused; /sbin/ip -o link",
        )
        self.assertEqual(result.status, Status.OK)
        count, refused, link = out.split(b"\n")
        self.assertEqual((count, refused), (b"1", b"refused"))
        self.assertIn(b"lo:", link)  # (the probe works: it sees the link)
        self.assertNotIn(b",UP", link)

    @async_test
    async def test_the_namespaces_go_with_the_sandbox(self):
        lease = await self.sandbox.acquire()
        await self.netns_of_a_job(lease)
        paths = list(self.sandbox._slot_netns.values())
        self.assertTrue(paths and all(os.path.ismount(p) for p in paths))
        await within(self.sandbox.stop())
        self.assertFalse(any(os.path.exists(p) for p in paths))


class NoUserNamespaceTests(unittest.TestCase):
    """Where no job can have a user namespace, jobs are refused (never run
    unbounded), with the reason at start, on each job and in /health."""

    def jail_without_user_namespaces(self) -> str:
        """The real jail, in a user namespace whose limit of nested user
        namespaces is 0: the kernel refuses every job's (ENOSPC)."""
        unshare = shutil.which("unshare")
        if unshare is None:
            raise unittest.SkipTest("no unshare(1)")
        directory = temp_dir(self, "mathrun-nouserns-")
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "jail")
        with open(path, "w") as f:
            f.write(
                "#!/bin/sh\n"
                f"exec {unshare} --user --map-root-user sh -c"
                ' \'echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" "$@"\''
                f' {DEFAULT_JAIL} "$@"\n'
            )
        os.chmod(path, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        return path

    @async_test
    async def test_jobs_are_refused_with_the_reason(self):
        root = temp_dir(self, "mathrun-unpriv-")
        jail = self.jail_without_user_namespaces()
        sandbox = make_sandbox(self, jobs=2, privileged=False, jail=jail, job_root=os.path.join(root, "jobs"))
        refusal = sandbox.refusal
        self.assertIn("process count cannot be bounded", refusal)
        self.assertIn("No space left on device", refusal)
        self.assertIn(refusal, sandbox.warnings)
        failure = await self.assertFailure(sandbox.run(["echo", "ran anyway"]), SandboxRefused)
        self.assertEqual(str(failure), refusal)
        self.assertEqual(sandbox.pool.free, 2)

        port = reactor.listenTCP(0, build_site(sandbox, CollectorRegistry()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/health"
        response = await within(treq.get(url, persistent=False))
        body = json.loads(await within(treq.content(response)))
        self.assertEqual((response.code, body["status"], body["error"]), (503, "refusing jobs", refusal))

    def test_an_old_kernel_is_refused_without_trying(self):
        why = userns_refusal("/nonexistent/jail", "/nonexistent", False, release="5.10.0-28-amd64")
        self.assertIn("Linux 5.10.0-28-amd64 counts RLIMIT_NPROC per user", why)
