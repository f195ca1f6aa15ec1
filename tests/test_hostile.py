"""The hostile suite: real jobs that attack the sandbox.

Each case asserts how the job ended and that nothing is left behind: no
process of the job user, no workspace, no file of the job user in the shared
temporary directories, and the sandbox still serving the next job.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

from twisted.internet import defer
from twisted.trial import unittest

from mathrun.sandbox import Limits, Status
from mathrun.sandbox.sandbox import DEFAULT_JAIL

from .helpers import (
    PYTHON,
    ROOT,
    assert_still_serving,
    async_test,
    make_sandbox,
    make_unprivileged_sandbox,
    processes_of,
    temp_dir,
    workspace_left,
)

SHARED_TMP = tuple(d for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock") if os.path.isdir(d))


def files_owned_by(uid: int) -> list[str]:
    found = []
    for top in SHARED_TMP:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                try:
                    if os.lstat(path).st_uid == uid:
                        found.append(path)
                except FileNotFoundError:
                    pass
    return found


class HostileTests(unittest.TestCase):
    if not ROOT:
        skip = "the hostile suite needs root (job users, namespaces, cgroups)"

    def setUp(self):
        self.sandbox = make_sandbox(self, jobs=4)

    async def run_job(self, script, limits=None, files=None, argv=None):
        """Run a shell script in a lease, then check the cleanup."""
        limits = limits or Limits(wall_seconds=10)
        lease = await self.sandbox.acquire(limits.workspace_bytes)
        user, root = lease.user, lease.workspace.root
        try:
            for name, data in (files or {}).items():
                lease.workspace.write_file(name, data)
            job = lease.spawn(argv or ["sh", "-c", script], limits)
            job.close_stdin()
            result = await job.done
        finally:
            await lease.release()
        await self.assert_clean(user, root)
        return result

    async def assert_clean(self, user, root):
        self.assertEqual(processes_of(user.uid), [], f"processes of {user.name} survived")
        self.assertIsNone(workspace_left(root))
        self.assertEqual(files_owned_by(user.uid), [], "files left in shared temporary directories")
        await assert_still_serving(self, self.sandbox)

    @async_test
    async def test_fork_bomb(self):
        bomb = (
            "import os, time\n"
            "if os.fork() == 0:\n"
            "    while True:\n"
            "        try: os.fork()\n"
            "        except OSError: pass\n"
            "time.sleep(60)\n"
        )
        r = await self.run_job(None, Limits(wall_seconds=2, processes=32), argv=[PYTHON, "-c", bomb])
        self.assertEqual(r.status, Status.TIME_LIMIT)

    @async_test
    async def test_endless_output(self):
        r = await self.run_job("yes mathrun", Limits(output_bytes=100_000))
        self.assertEqual(r.status, Status.OUTPUT_LIMIT)
        self.assertEqual(len(r.stdout) + len(r.stderr), 100_000)

    @async_test
    async def test_endless_output_on_stderr(self):
        r = await self.run_job("yes >&2", Limits(output_bytes=10_000))
        self.assertEqual((r.status, len(r.stderr)), (Status.OUTPUT_LIMIT, 10_000))

    @async_test
    async def test_disk_fill(self):
        # The workspace and the private /tmp share one 4 MiB tmpfs.
        r = await self.run_job(
            "dd if=/dev/zero of=big bs=1M count=100 2>/dev/null; echo ws=$?;"
            " dd if=/dev/zero of=/tmp/big bs=1M count=100 2>/dev/null; echo tmp=$?;"
            " for i in $(seq 100000); do true > f$i || break; done; echo files=$i",
            Limits(workspace_bytes=4 << 20, file_size_bytes=1 << 30),
        )
        self.assertEqual(r.status, Status.OK)
        self.assertIn(b"ws=1", r.stdout)
        self.assertIn(b"tmp=1", r.stdout)
        self.assertNotIn(b"files=100000", r.stdout)

    @async_test
    async def test_file_size_limit(self):
        r = await self.run_job("exec head -c 2000000 /dev/zero > f", Limits(file_size_bytes=1_000_000))
        self.assertEqual(r.status, Status.OUTPUT_LIMIT)
        self.assertIn("file size", r.detail)

    @async_test
    async def test_cpu_loop(self):
        r = await self.run_job("while :; do :; done", Limits(cpu_seconds=1, wall_seconds=10))
        self.assertEqual(r.status, Status.TIME_LIMIT)
        self.assertIn("CPU", r.detail)
        self.assertGreaterEqual(r.user_cpu + r.system_cpu, 0.9)

    @async_test
    async def test_memory_hog(self):
        r = await self.run_job(
            None,
            Limits(memory_bytes=64 << 20),
            argv=[PYTHON, "-c", "b = bytearray(1 << 30); b[::4096] = b'x' * len(b[::4096])"],
        )
        self.assertEqual(r.status, Status.MEMORY_LIMIT if self.sandbox.cgroups else Status.NONZERO_EXIT)
        if self.sandbox.cgroups:
            self.assertLessEqual(r.peak_memory, 64 << 20)

    @async_test
    async def test_sleep_past_wall_limit(self):
        r = await self.run_job("sleep 60", Limits(wall_seconds=0.5))
        self.assertEqual(r.status, Status.TIME_LIMIT)
        self.assertLess(r.wall, 5)

    @async_test
    async def test_setsid_double_fork(self):
        r = await self.run_job("setsid sh -c 'sleep 1000 & sleep 1000 &' ; (setsid sleep 1000 &); echo parent done")
        self.assertEqual((r.status, r.stdout), (Status.OK, b"parent done\n"))
        self.assertTrue(r.leftover)

    @async_test
    async def test_no_network(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        script = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')\n"
            "except OSError as e: print('connect failed', e.errno)\n"
            "try:\n"
            "    socket.getaddrinfo('deb.debian.org', 80); print('resolved')\n"
            "except OSError as e: print('resolve failed')\n"
        )
        r = await self.run_job(None, argv=[PYTHON, "-c", script])
        self.assertEqual(r.status, Status.OK)
        self.assertIn(b"connect failed", r.stdout)
        self.assertIn(b"resolve failed", r.stdout)

    @async_test
    async def test_writing_outside_the_workspace(self):
        target = os.path.join(self.sandbox.job_root, "planted")
        r = await self.run_job(
            f"for f in /etc/mathrun-x /root/x /usr/x {target} /run/x; do"
            f" (echo x > $f) 2>/dev/null && echo wrote $f; done; echo done"
        )
        self.assertEqual(r.stdout, b"done\n")
        self.assertFalse(os.path.exists(target))

    @async_test
    async def test_reading_another_jobs_workspace(self):
        first = await self.sandbox.acquire()
        try:
            first.workspace.write_file("secret", b"hush", mode=0o644)
            secret = os.path.join(first.workspace.path, "secret")
            r = await self.run_job(f"cat {secret} || echo denied; ls {first.workspace.root} || echo denied")
            self.assertNotIn(b"hush", r.stdout)
            self.assertEqual(r.stdout.count(b"denied"), 2)
        finally:
            await first.release()

    @async_test
    async def test_planted_symlinks_are_not_followed_by_cleanup(self):
        victim_dir = temp_dir(self, "mathrun-victim-")
        victim = os.path.join(victim_dir, "precious")
        with open(victim, "w") as f:
            f.write("keep me")
        os.chmod(victim_dir, 0o755)
        r = await self.run_job(
            f"ln -s {victim} link; ln -s {victim_dir} dirlink; mkdir -p d/e; ln -s / d/e/root; echo ok"
        )
        self.assertEqual(r.stdout, b"ok\n")
        with open(victim) as f:
            self.assertEqual(f.read(), "keep me")

    @async_test
    async def test_reading_planted_symlink_is_refused(self):
        lease = await self.sandbox.acquire()
        try:
            job = lease.spawn(["ln", "-s", "/etc/shadow", "out.svg"])
            self.assertEqual((await job.done).status, Status.OK)
            self.assertRaises(OSError, lease.workspace.read_file, "out.svg", 1 << 20)
        finally:
            await lease.release()

    @async_test
    async def test_signals_to_the_server(self):
        # kill(-1) reaches only the job user's own processes (not the caller).
        r = await self.run_job(
            f"kill -TERM {os.getpid()} || echo denied; kill -KILL {os.getppid()} 1 || echo denied;"
            " sleep 100 & kill -KILL -1; wait $!; echo sleep ended $?"
        )
        self.assertEqual(r.stdout, b"denied\ndenied\nsleep ended 137\n")

    @async_test
    async def test_files_left_in_temporary_directories(self):
        r = await self.run_job(
            f"for d in {' '.join(SHARED_TMP)}; do echo x > $d/mathrun-left-behind && mkdir $d/dir.left; done;"
            f" ls {' '.join(SHARED_TMP)} | grep -c mathrun-left-behind"
        )
        self.assertEqual((r.status, r.stdout), (Status.OK, b"%d\n" % len(SHARED_TMP)))
        for top in SHARED_TMP:
            self.assertFalse(os.path.exists(os.path.join(top, "mathrun-left-behind")))

    @async_test
    async def test_sysv_ipc_objects_die_with_the_job(self):
        lease = await self.sandbox.acquire()
        uid = lease.user.uid
        try:
            job = lease.spawn(
                ["sh", "-c", "ipcmk -M 4096 && ipcmk -Q && ipcmk -S 1 >/dev/null && ipcs | grep -c 0x"], Limits()
            )
            r = await job.done
        finally:
            await lease.release()
        self.assertEqual((r.status, r.stdout.splitlines()[-1]), (Status.OK, b"3"))
        for kind in ("shm", "msg", "sem"):
            with open(f"/proc/sysvipc/{kind}") as f:
                rows = [line.split() for line in f.read().splitlines()[1:]]
            header = open(f"/proc/sysvipc/{kind}").readline().split()
            owners = [int(row[header.index("uid")]) for row in rows]
            self.assertNotIn(uid, owners, kind)

    @async_test(timeout=120)
    async def test_fifty_jobs_racing_their_cleanups(self):
        results = await defer.gatherResults(
            [
                self.sandbox.run(
                    ["sh", "-c", f"(setsid sleep 100 &); echo x > /tmp/f; echo {i}"], Limits(wall_seconds=30)
                )
                for i in range(50)
            ]
        )
        self.assertEqual([r.stdout for r in results], [f"{i}\n".encode() for i in range(50)])
        self.assertTrue(all(r.status is Status.OK and r.leftover for r in results))
        self.assertEqual((self.sandbox.pool.free, self.sandbox.pool.waiting), (4, 0))
        for user in self.sandbox.pool._all:
            self.assertEqual(processes_of(user.uid), [])
        for name in os.listdir(self.sandbox.job_root):
            path = os.path.join(self.sandbox.job_root, name)
            self.assertIsNone(workspace_left(path))

    @async_test
    async def test_a_kept_workspace_comes_back_empty_and_closed(self):
        """A slot's tmpfs stays mounted from job to job: whatever a job left
        (files, a closed-off tree, a FIFO, its directories opened up or
        moved) is gone for the slot's next job, which finds an empty
        work/ and tmp/, its own, mode 0700, and a root nobody else can enter."""
        script = (
            "mkdir -p deep/a/b && echo x > deep/a/b/f && chmod 000 deep/a deep; mkfifo fifo;"
            " echo t > /tmp/t; ln -s / /tmp/root; mv /tmp/t ../stray; chmod 777 . .. /tmp; echo done"
        )
        first = await self.sandbox.acquire()
        user = first.user
        try:
            job = first.spawn(["sh", "-c", script])
            job.close_stdin()
            self.assertEqual((await job.done).stdout, b"done\n")
        finally:
            await first.release()
        second = await self.sandbox.acquire()
        try:
            self.assertEqual(second.user, user)  # (the slot released last goes out first)
            job = second.spawn(["sh", "-c", "ls -A . /tmp ..; stat -c '%a %U' . /tmp .."])
            job.close_stdin()
            result = await job.done
        finally:
            await second.release()
        listing = f".:\n\n..:\ntmp\nwork\n\n/tmp:\n700 {user.name}\n700 {user.name}\n700 {user.name}\n"
        self.assertEqual(result.stdout.decode(), listing)


class JailParentDeathTests(unittest.TestCase):
    def test_jobs_die_with_the_server(self):
        """A server killed with SIGKILL takes its jobs with it: the jail gets
        SIGTERM when its parent dies, and kills everything."""
        marker = f"mathrun-orphan-{os.getpid()}"
        server = (
            "import subprocess, sys, time\n"
            f"subprocess.Popen([{DEFAULT_JAIL!r}, 'run', '--', 'bash', '-c', 'exec -a {marker} sleep 100'])\n"
            "time.sleep(100)\n"
        )
        proc = subprocess.Popen([PYTHON, "-c", server])
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        deadline = time.monotonic() + 10
        while not subprocess.run(["pgrep", "-f", "^" + marker], capture_output=True).stdout:
            self.assertLess(time.monotonic(), deadline, "the job never started")
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while subprocess.run(["pgrep", "-f", "^" + marker], capture_output=True).stdout:
            self.assertLess(time.monotonic(), deadline, "the job outlived its server")
            time.sleep(0.05)


class UnprivilegedTests(unittest.TestCase):
    """Without job users the jail still kills everything the job started."""

    def setUp(self):
        self.sandbox = make_unprivileged_sandbox(self)

    @async_test
    async def test_escaped_processes_are_killed(self):
        marker = f"mathrun-escape-{os.getpid()}"
        r = await self.sandbox.run(
            [
                "sh",
                "-c",
                f"(setsid bash -c 'exec -a {marker} sleep 1000' &); sleep 0.2; pgrep -f ^{marker} >/dev/null && echo ok",
            ]
        )
        self.assertEqual((r.status, r.stdout, r.stderr, r.leftover), (Status.OK, b"ok\n", b"", True))
        survivors = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).startswith(marker)]
        self.assertEqual(survivors, [])
        self.assertTrue(any("unprivileged" in w for w in self.sandbox.warnings))

    @async_test
    async def test_workspace_swapped_for_a_symlink(self):
        victim = temp_dir(self, "mathrun-victim-")
        with open(os.path.join(victim, "keep"), "w") as f:
            f.write("keep")
        lease = await self.sandbox.acquire()
        try:
            job = lease.spawn(["sh", "-c", f"cd .. && rm -rf work tmp && ln -s {victim} work && ln -s {victim} tmp"])
            self.assertEqual((await job.done).status, Status.OK)
        finally:
            await lease.release()
        self.assertEqual(os.listdir(victim), ["keep"])
        r = await self.sandbox.run(["sh", "-c", "pwd && ls"])
        self.assertEqual(r.status, Status.OK)

    @async_test
    async def test_limits_still_apply(self):
        r = await self.sandbox.run(["sh", "-c", "sleep 60"], Limits(wall_seconds=0.3))
        self.assertEqual(r.status, Status.TIME_LIMIT)
        r = await self.sandbox.run(["sh", "-c", "yes"], Limits(output_bytes=1000))
        self.assertEqual((r.status, len(r.stdout)), (Status.OUTPUT_LIMIT, 1000))


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""
