"""The hand-off: ``mathrun-why3server`` passing its socket to a running
``twistd mathrun``, which serves the session with provers as job users.
Real processes throughout: the daemon, the standalone, why3, z3, cvc4."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time

from twisted.trial import unittest

from . import test_why3_server as base
from .helpers import ROOT, USER_PREFIX, processes_of, server_args, temp_dir

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Daemon:
    """A ``twistd mathrun`` with the Why3 front end only, on the suite's users."""

    def __init__(self, testcase, jobs: int = 4):
        self.dir = temp_dir(testcase, "mathrun-why3-daemon-")
        os.chmod(self.dir, 0o755)
        self.control = os.path.join(self.dir, "why3-control.sock")
        self.log_path = os.path.join(self.dir, "twistd.log")
        args = ["--why3-socket", os.path.join(self.dir, "why3.sock"), "--no-maxima", "--no-asy", "--no-http"]
        args += ["--jobs", str(jobs), *server_args()]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [TWISTD, "-n", "--pidfile=", "mathrun", *args], cwd=self.dir, stdout=log, stderr=subprocess.STDOUT
            )
        testcase.addCleanup(self.kill)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.control):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the daemon did not start: " + self.log())
            time.sleep(0.05)
        self.job_uids = [pwd.getpwnam(f"{USER_PREFIX}-{n}").pw_uid for n in range(1, jobs + 1)]

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_for(predicate, seconds: float = 10, what: str = "a condition"):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class HandoffMixin:
    def setUp(self):
        if not ROOT:
            raise unittest.SkipTest("the hand-off needs a privileged daemon (root)")
        self.daemon = Daemon(self)
        self.control = self.daemon.control
        super().setUp()


class HandoffConformance(HandoffMixin, base.Conformance, unittest.TestCase):
    """The conformance cases, served by the daemon through the hand-off."""

    def test_the_daemon_served_them(self):
        c = self.client()
        c.send("run;1;0;0;/usr/bin/id;-u")
        c.read()
        self.assertIn(int(self.finished(c.read()[0], "1")[3]), self.daemon.job_uids)
        self.assertIn("why3 hand-off", self.daemon.log())


class Sessions(HandoffMixin, unittest.TestCase):
    control = None

    def standalone(self, directory: str, user: str | None = None, single: bool = True):
        """A standalone server in ``directory`` (as ``user``), handing off."""
        path = os.path.join(directory, "s.sock")
        command = [base.OURS, "--socket", path, "-j", "2"] + (["--single-client"] if single else [])
        if user is not None:  # (setpriv execs: the process is the standalone itself)
            command = ["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--init-groups", *command]
        env = dict(os.environ, MATHRUN_WHY3_CONTROL=self.control)
        proc = subprocess.Popen(command, cwd=directory, env=env)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        wait_for(lambda: os.path.exists(path), what="the standalone's socket")
        wait_for(lambda: "why3 hand-off" in self.daemon.log(), what="the hand-off")
        client = base.Client(path)
        self.addCleanup(client.close)
        return proc, client, path

    def user_dir(self, user: str) -> str:
        directory = temp_dir(self, f"mathrun-why3-{user}-")
        entry = pwd.getpwnam(user)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
        os.chmod(directory, 0o700)
        return directory

    def answer(self, client, id: str):
        """The F line's (exit code, output file path)."""
        fields = client.read(timeout=30)[0].split(";")
        self.assertEqual(fields[:2], ["F", id], fields)
        return int(fields[2]), fields[5]

    def test_provers_run_as_job_users_and_files_belong_to_the_caller(self):
        proc, c, path = self.standalone(self.user_dir("nobody"), "nobody")
        c.send("run;1;0;0;/usr/bin/id;-u")
        self.assertEqual(c.read(), ["S;1"])
        code, output = self.answer(c, "1")
        st = os.stat(output)
        with open(output) as f:
            prover_uid = int(f.read())
        self.assertEqual((code, st.st_uid, st.st_mode & 0o777), (0, 65534, 0o600))
        self.assertEqual(os.path.dirname(output), os.path.dirname(path))  # the caller's directory
        self.assertIn(prover_uid, self.daemon.job_uids)
        c.close()
        self.assertEqual(proc.wait(10), 1)  # --single-client: as the C server
        self.assertFalse(os.path.lexists(path))
        log = self.daemon.log()
        self.assertIn("uid 65534", log)
        self.assertRegex(log, r"why3 hand-off \d+ ended: its last client left \(1 tasks\)")

    def test_two_users_at_once(self):
        sessions = {}
        for user in ("nobody", "daemon"):
            directory = self.user_dir(user)
            secret = os.path.join(directory, "secret.txt")
            with open(secret, "w") as f:
                f.write(f"{user}'s secret\n")
            entry = pwd.getpwnam(user)
            os.chown(secret, entry.pw_uid, entry.pw_gid)
            os.chmod(secret, 0o600)
            _proc, client, _path = self.standalone(directory, user)
            sessions[user] = (client, secret, entry.pw_uid)
        a, a_secret, a_uid = sessions["nobody"]
        b, b_secret, b_uid = sessions["daemon"]
        a.send("run;1;0;0;/bin/sleep;1", f"run;2;0;0;/bin/cat;{a_secret}", f"run;3;0;0;/bin/cat;{b_secret}")
        b.send("interrupt;1", "interrupt;2", f"run;9;0;0;/bin/cat;{b_secret}")
        self.assertEqual(b.read(), ["S;9"])
        code, b_output = self.answer(b, "9")
        with open(b_output) as f:
            self.assertEqual((code, f.read()), (0, "daemon's secret\n"))
        self.assertEqual(os.stat(b_output).st_uid, b_uid)
        self.assertTrue(b.quiet())  # its interrupts touched nothing: a's ids are not its own
        answers = {}
        for line in a.read(6, timeout=30):
            fields = line.split(";")
            if fields[0] == "F":
                with open(fields[5]) as f:
                    answers[fields[1]] = (int(fields[2]), f.read(), os.stat(fields[5]).st_uid)
                a_output = fields[5]
        self.assertEqual(answers["1"], (0, "", a_uid))  # not interrupted by the other user
        self.assertEqual(answers["2"], (0, "nobody's secret\n", a_uid))
        self.assertNotEqual(answers["3"][0], 0)
        self.assertNotIn("daemon's secret", answers["3"][1])  # the other user's file was not read for it
        # Neither may read the other's output files.
        for user, path in (("nobody", b_output), ("daemon", a_output)):
            r = subprocess.run(["runuser", "-u", user, "--", "cat", path], capture_output=True, timeout=10)
            self.assertNotEqual(r.returncode, 0)

    def test_a_signal_to_the_standalone_ends_its_session(self):
        proc, c, path = self.standalone(self.user_dir("nobody"), "nobody", single=False)
        c.send("run;1;0;0;/bin/sleep;60")
        self.assertEqual(c.read(), ["S;1"])
        wait_for(lambda: any(processes_of(uid) for uid in self.daemon.job_uids), what="the prover")
        proc.send_signal(signal.SIGTERM)
        # As when it serves in-process: provers killed, socket removed, exit 0;
        # the daemon has ended the session (and its prover) before it exits.
        self.assertEqual(proc.wait(15), 0)
        self.assertFalse(os.path.lexists(path))
        self.assertFalse(any(processes_of(uid) for uid in self.daemon.job_uids))
        self.assertRegex(self.daemon.log(), r"why3 hand-off \d+ ended: the standalone server was told to stop")
        self.assertIsNone(self.daemon.proc.poll())

    def test_a_bad_hand_off_is_refused(self):
        import socket as sockets

        with sockets.socket(sockets.AF_UNIX) as control:
            control.connect(self.control)
            control.sendall(b"handoff jobs=1 single-client=0 time-format=1.5 cwd=2f\n")  # no descriptors
            self.assertTrue(control.recv(200).startswith(b"refused "))
        self.assertIsNone(self.daemon.proc.poll())

    def test_the_daemon_killed_mid_session(self):
        proc, c, path = self.standalone(self.user_dir("nobody"), "nobody")
        c.send("run;1;0;0;/bin/sleep;60")
        self.assertEqual(c.read(), ["S;1"])
        wait_for(lambda: any(processes_of(uid) for uid in self.daemon.job_uids), what="the prover")
        self.daemon.proc.send_signal(signal.SIGKILL)
        # The standalone notices and dies as a killed C server would; the
        # client sees the end of its connection; nothing is left.
        self.assertEqual(proc.wait(10), -signal.SIGKILL)
        with self.assertRaises(EOFError):
            c.read(timeout=10)
        self.assertFalse(os.path.lexists(path))
        wait_for(lambda: not any(processes_of(uid) for uid in self.daemon.job_uids), what="the provers' end")


class RealWhy3Handoff(HandoffMixin, base.RealWhy3):
    """Debian's why3 proving and replaying through the hand-off: the C
    server's verdicts, the provers run as job users, the daemon logs it."""

    control = None

    def setUp(self):
        super().setUp()
        self.env["MATHRUN_WHY3_CONTROL"] = self.control

    def test_prove_through_a_bind_mount_equals_the_c_server(self):
        for prover in ("z3", "cvc4"):
            theirs, ours = base._summary(self.prove(prover)), base._summary(self.prove(prover, base.OURS))
            self.assertEqual(len(ours), 4, ours)
            # The first three exactly; the last one times out on the prover's own
            # wall-clock timer, which why3 reads as "High failure" when the
            # loaded host gave the prover under 90% of it in CPU time (either server).
            self.assertEqual(ours[:3], theirs[:3])
            self.assertIn(ours[3][1], ("Timeout", "High failure"))
        log = self.daemon.log()
        self.assertRegex(log, r"why3 hand-off \d+ ended: its last client left \(4 tasks\)")
        self.assertRegex(log, rf"job {USER_PREFIX}-\d+ ok: .*\(why3\)")

    def test_replay_with_why3lib(self):
        super().test_replay_with_why3lib()
        self.assertIn("why3 hand-off", self.daemon.log())
