"""The C jail helper's own refusals and reports, run directly."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time

from twisted.trial import unittest

from mathrun.sandbox.result import parse_report
from mathrun.sandbox.sandbox import DEFAULT_JAIL

from .helpers import HELPER_USER, ROOT, USER_PREFIX


def jail(*args, **kw):
    r, w = os.pipe()
    proc = subprocess.run([DEFAULT_JAIL, *args], pass_fds=(w,), capture_output=True, **kw)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read()
    return proc, report


class JailTests(unittest.TestCase):
    def test_usage(self):
        for args in (
            [],
            ["bogus"],
            ["run"],
            ["run", "--cpu", "x", "--", "true"],
            ["reap", "--uid", "0", "--kill-ruid", "1"],
        ):
            proc, _ = jail(*args)
            self.assertEqual(proc.returncode, 2, args)
            self.assertIn(b"mathrun-jail", proc.stderr)

    def test_refuses_root_jobs(self):
        for uid, gid in (("0", "100"), ("100", "0")):
            proc, report = jail(
                "run", "--uid", uid, "--gid", gid, "--kill-ruid", "99", "--report-fd", "3", "--", "true"
            )
            self.assertEqual(proc.returncode, 2)
            self.assertIn(b"refusing to run a job as root", proc.stderr)

    def test_refuses_root_as_killer(self):
        proc, _ = jail("run", "--uid", "100", "--gid", "100", "--kill-ruid", "0", "--", "true")
        self.assertEqual(proc.returncode, 2)
        self.assertIn(b"another unprivileged user", proc.stderr)

    def test_report(self):
        w = os.pipe()
        proc = subprocess.run(
            [DEFAULT_JAIL, "run", "--report-fd", str(w[1]), "--", "sh", "-c", "exit 5"],
            pass_fds=(w[1],),
            capture_output=True,
        )
        os.close(w[1])
        report = parse_report(os.read(w[0], 4096))
        os.close(w[0])
        self.assertEqual(proc.returncode, 0)
        self.assertEqual((report["status"], report["code"], report["remaining"]), ("exited", 5, 0))

    def test_job_runs_as_the_job_user_without_privileges(self):
        if not ROOT:
            raise unittest.SkipTest("needs root")
        user, helper = pwd.getpwnam(f"{USER_PREFIX}-1"), pwd.getpwnam(HELPER_USER)
        w = os.pipe()
        proc = subprocess.run(
            [
                DEFAULT_JAIL,
                "run",
                "--uid",
                str(user.pw_uid),
                "--gid",
                str(user.pw_gid),
                "--kill-ruid",
                str(helper.pw_uid),
                "--report-fd",
                str(w[1]),
                "--dir",
                "/",
                "--",
                "sh",
                "-c",
                "id -u; id -G; grep -E 'NoNewPrivs|CapEff' /proc/self/status",
            ],
            pass_fds=(w[1],),
            capture_output=True,
            text=True,
        )
        os.close(w[1])
        os.close(w[0])
        lines = proc.stdout.split("\n")
        self.assertEqual(lines[0], str(user.pw_uid))
        self.assertEqual(lines[1], str(user.pw_gid))
        self.assertIn("NoNewPrivs:\t1", proc.stdout)
        self.assertIn("CapEff:\t0000000000000000", proc.stdout)


def run_reaper(helper: int, requests: str) -> subprocess.CompletedProcess:
    """``mathrun-jail reaper`` fed ``requests``, to the end of its input."""
    return subprocess.run(
        [DEFAULT_JAIL, "reaper", "--kill-ruid", str(helper)], input=requests.encode(), capture_output=True, timeout=60
    )


def wait_until_running_as(pid: int, uid: int, comm: str, seconds: float = 10) -> None:
    """Until process ``pid`` is ``comm`` with real uid ``uid`` (a kill by
    uid before that would miss it, and the test would wait for nothing)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if fields["Name"].strip() == comm and int(fields["Uid"].split()[0]) == uid:
                return
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never ran {comm} as uid {uid}")


class ReaperTests(unittest.TestCase):
    """``mathrun-jail reaper``: the server's long-lived killer."""

    def test_answers_each_request_in_order(self):
        if not ROOT:
            raise unittest.SkipTest("needs root and job users")
        helper = pwd.getpwnam(HELPER_USER).pw_uid
        victim = pwd.getpwnam(f"{USER_PREFIX}-4")
        sleeper = subprocess.Popen(["setpriv", f"--reuid={victim.pw_uid}", f"--regid={victim.pw_gid}",
                                    "--clear-groups", "sleep", "600"])  # fmt: skip
        self.addCleanup(lambda: sleeper.poll() is None and sleeper.kill())
        wait_until_running_as(sleeper.pid, victim.pw_uid, "sleep")  # setpriv switches, then execs
        requests = f"0\n{helper}\nnonsense\n{victim.pw_uid}\n{victim.pw_uid} /nonexistent/pids.current\n"
        proc = run_reaper(helper, requests)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(
            proc.stdout.decode().splitlines(),
            ["failed - bad request", "failed - bad request", "failed - bad request",
             f"ok {victim.pw_uid}", f"ok {victim.pw_uid}"],
        )  # fmt: skip
        # The sleeper was the victim's: killed (by SIGKILL, as the jail kills).
        self.assertEqual(sleeper.wait(timeout=10), -9)

    def test_unmounts_the_workspace_after_the_kill(self):
        """``UID [FILE] umount=DIR``: the kill, then the tmpfs detached; a
        DIR that is no mount point fails the request with the reason."""
        if not ROOT:
            raise unittest.SkipTest("needs root and job users")
        import tempfile

        from mathrun.sandbox.workspace import mount_tmpfs

        helper = pwd.getpwnam(HELPER_USER).pw_uid
        victim = pwd.getpwnam(f"{USER_PREFIX}-4").pw_uid
        base = tempfile.mkdtemp(prefix="mathrun-reaper-")
        self.addCleanup(os.rmdir, base)
        mount_tmpfs(base, 1 << 20, 64, victim, victim)
        self.addCleanup(lambda: os.path.ismount(base) and subprocess.run(["umount", "-l", base]))
        requests = f"{victim} umount={base}\n{victim} umount={base}\n{victim} umount=relative\n"
        proc = run_reaper(helper, requests)
        lines = proc.stdout.decode().splitlines()
        self.assertEqual(lines[0], f"ok {victim}")
        self.assertTrue(lines[1].startswith(f"failed {victim} unmount {base}: "), lines[1])
        self.assertEqual(lines[2], "failed - bad request")
        self.assertFalse(os.path.ismount(base))


class PidNamespaceTests(unittest.TestCase):
    """``jail_fork`` with a PID namespace, through ``mathrun-jail run --pidns``."""

    def setUp(self):
        if not ROOT:
            raise unittest.SkipTest("a PID namespace needs root (the user-namespace path is unprivileged mode's)")

    def test_killing_the_job_ends_its_namespace(self):
        """SIGKILL of the job's pid ends everything it started, even a
        setsid'd orphan, with no uid-wide kill (no --uid: there is none)."""
        marker = f"mathrun-pidns-{os.getpid()}"
        r, w = os.pipe()
        proc = subprocess.Popen(
            [DEFAULT_JAIL, "run", "--pidns", "--report-fd", str(w), "--",
             "bash", "-c", f"(setsid bash -c 'exec -a {marker} sleep 1000' &); exec -a {marker}-main sleep 1000"],
            pass_fds=(w,),
        )  # fmt: skip
        os.close(w)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        deadline = time.monotonic() + 10
        while len(_pids_named(marker)) < 2:
            self.assertLess(time.monotonic(), deadline, "the job never started")
            time.sleep(0.05)
        (main,) = _pids_named(marker + "-main")
        self.assertEqual(_parent(main), proc.pid, "the job is the jail's own child")
        # The jail stopped, so that none of its own killing can be what
        # ends the orphan: only the namespace's end can.
        os.kill(proc.pid, signal.SIGSTOP)
        os.kill(main, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _pids_named(marker):
            self.assertLess(time.monotonic(), deadline, "the orphan outlived the job's namespace")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGCONT)
        self.assertEqual(proc.wait(timeout=10), 0)
        with os.fdopen(r, "rb") as f:
            report = parse_report(f.read())
        self.assertEqual((report["status"], report["signal"], report["leftover"]), ("signalled", 9, 1))
        self.assertEqual(_pids_named(marker), [])


def _pids_named(prefix: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[0].decode(errors="replace").startswith(prefix):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])
