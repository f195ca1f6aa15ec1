"""The VC server as a real process on a real unix socket: conformance cases
run against mathrun-why3server and, where Debian's C why3server is present,
against it too; hostile provers; and Debian's real ``why3`` end to end."""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from twisted.trial import unittest

from .helpers import ROOT, async_test, temp_dir, within

DEBIAN = "/usr/lib/ocaml/why3/why3server"
FIXTURES = os.path.join(os.path.dirname(__file__), "why3")
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ours() -> str:
    """The installed console script, else a wrapper running the module."""
    installed = os.path.join(os.path.dirname(sys.executable), "mathrun-why3server")
    if os.access(installed, os.X_OK):
        return installed
    import atexit
    import tempfile

    directory = tempfile.mkdtemp(prefix="mathrun-why3-bin-")
    atexit.register(shutil.rmtree, directory, True)
    wrapper = os.path.join(directory, "mathrun-why3server")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nPYTHONPATH={PROJECT} exec {sys.executable} -m mathrun.why3.standalone "$@"\n')
    os.chmod(wrapper, 0o755)
    return wrapper


OURS = _ours()


class Client:
    """A blocking line client with a deadline on every read."""

    def __init__(self, path):
        # Retried like why3 does: a server may have bound its path but not yet
        # be listening (the C server too).
        deadline = time.monotonic() + 10
        while True:
            self.sock = socket.socket(socket.AF_UNIX)
            try:
                self.sock.connect(path)
                break
            except (ConnectionRefusedError, FileNotFoundError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.buffer = b""

    def send(self, *lines):
        self.sock.sendall(b"".join(line.encode() + b"\n" for line in lines))

    def read(self, count=1, timeout=30):
        deadline = time.monotonic() + timeout
        while self.buffer.count(b"\n") < count:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError(f"waited for {count} lines, have {self.buffer!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        lines = self.buffer.split(b"\n")
        self.buffer = b"\n".join(lines[count:])
        return [line.decode() for line in lines[:count]]

    def quiet(self, seconds=0.3):
        """Nothing more arrives for a while."""
        return not select.select([self.sock], [], [], seconds)[0]

    def close(self):
        self.sock.close()


class ServerMixin:
    server = OURS
    time_digits = 2
    control = "none"  # the standalone serves in-process (no hand-off to a daemon)

    def setUp(self):
        if not os.access(self.server, os.X_OK):
            raise unittest.SkipTest(f"{self.server} is not installed")
        self.dir = temp_dir(self, "mathrun-why3-")
        self.path = os.path.join(self.dir, "s.sock")
        self.env = dict(os.environ, MATHRUN_WHY3_CONTROL=self.control)
        self.proc = subprocess.Popen([self.server, "--socket", self.path, "-j", "1"], cwd=self.dir, env=self.env)
        self.addCleanup(self.stop_server)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.path):
            self.assertLess(time.monotonic(), deadline, "server did not bind")
            time.sleep(0.01)

    def stop_server(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)

    def client(self):
        c = Client(self.path)
        self.addCleanup(c.close)
        return c

    def finished(self, line, id):
        fields = line.split(";")
        self.assertEqual(fields[:2], ["F", id], line)
        self.assertEqual(len(fields), 6, line)
        self.assertRegex(fields[3], rf"^\d+\.\d{{{self.time_digits}}}$")
        output = b""
        if fields[5]:
            with open(fields[5], "rb") as f:
                output = f.read()
            os.unlink(fields[5])
        self.finished_output = output
        return int(fields[2]), float(fields[3]), fields[4], output


class Conformance(ServerMixin):
    """Byte-exact behaviour that both servers share."""

    def test_run_and_output(self):
        c = self.client()
        c.send("run;1;0;0;/bin/sh;-c;echo out && echo err >&2")  # fields end at every ;
        self.assertEqual(c.read(), ["S;1"])
        code, _, killed, output = self.finished(c.read()[0], "1")
        self.assertEqual((code, killed, sorted(output.split())), (0, "0", [b"err", b"out"]))

    def test_exit_code_and_signal(self):
        c = self.client()
        c.send("run;a;0;0;/bin/sh;-c;exit 3")
        c.read()
        self.assertEqual(self.finished(c.read()[0], "a")[:3:2], (3, "0"))
        c.send("run;b;0;0;/bin/sh;-c;kill -TERM $$")
        c.read()
        self.assertEqual(self.finished(c.read()[0], "b")[:3:2], (15, "1"))

    def test_exec_failure(self):
        c = self.client()
        c.send("run;x;0;0;/nonexistent/prover;arg")
        self.assertEqual(c.read(), ["S;x"])
        code, _, killed, output = self.finished(c.read()[0], "x")
        self.assertEqual((code, killed), (1, "0"))
        self.assertIn(b"/nonexistent/prover", output)

    def test_runstdin(self):
        data = os.path.join(self.dir, "in.txt")
        with open(data, "w") as f:
            f.write("fed on stdin\n")
        c = self.client()
        c.send(f"runstdin;s;0;0;/bin/cat;{data}")
        c.read()
        self.assertEqual(self.finished(c.read()[0], "s")[3], b"fed on stdin\n")

    def test_cpu_limit(self):
        c = self.client()
        c.send("run;t;1;0;/usr/bin/sha256sum;/dev/zero")
        c.read()
        code, cpu, killed, _ = self.finished(c.read(timeout=20)[0], "t")
        # The C server's hard CPU limit is its soft one (SIGKILL); mathrun's
        # jail sends SIGXCPU first, and the server reports 9 all the same.
        self.assertEqual((code, killed), (signal.SIGKILL, "1"))
        self.assertGreaterEqual(cpu, 0.5)  # user CPU; the rest is system time

    def test_parallel(self):
        c = self.client()
        c.send("parallel;2", "run;1;0;0;/bin/sleep;0.5", "run;2;0;0;/bin/sleep;0.5")
        self.assertEqual(sorted(c.read(2)), ["S;1", "S;2"])
        for line in c.read(2):
            self.assertEqual(self.finished(line, line.split(";")[1])[0], 0)

    def test_malformed_lines_are_ignored(self):
        c = self.client()
        c.send("bogus", "run;1;2", "parallel;0", "interrupt", "", "run;ok;0;0;/bin/true")
        self.assertEqual(c.read(), ["S;ok"])
        self.assertEqual(self.finished(c.read()[0], "ok")[0], 0)
        self.assertTrue(c.quiet())

    def test_interrupt_running(self):
        c = self.client()
        c.send("run;r;0;0;/bin/sleep;100")
        self.assertEqual(c.read(), ["S;r"])
        c.send("interrupt;r")
        code, _, killed, _ = self.finished(c.read()[0], "r")
        self.assertEqual((code, killed), (9, "1"))
        c.send("interrupt;r", "interrupt;unknown")  # finished or unknown: no reply
        self.assertTrue(c.quiet())

    def test_interrupt_queued(self):
        c = self.client()
        c.send("run;r;0;0;/bin/sleep;100", "run;q;0;0;/bin/sleep;100")
        self.assertEqual(c.read(), ["S;r"])
        c.send("interrupt;q")
        if self.server == DEBIAN:
            # Differs on purpose: 1.5.1 drops it without a word (the client
            # waits forever); mathrun answers as 1.8 does, with a real file.
            self.assertTrue(c.quiet())
        else:
            self.assertEqual(self.finished(c.read()[0], "q")[:4:2] + (self.finished_output,), (0, "0", b""))
        c.send("interrupt;r")
        self.assertEqual(self.finished(c.read()[0], "r")[0], 9)
        self.assertTrue(c.quiet())

    def test_command_line_errors(self):
        # (arguments, stdout, stderr): the server's own messages on stdout, getopt's on stderr
        cases = [
            ([], "need to specify a socket name using --socket\n", ""),
            (["--socket"], "", "{prog}: option '--socket' requires an argument\n"),
            (["--socket", "/x", "-j"], "", "{prog}: option requires an argument -- 'j'\n"),
            (["--socket", "/x", "-j", "zero"], "-j requires a positive number\n", ""),
            (["--socket", "/x", "-j", "-3"], "-j requires a positive number\n", ""),
            (["--bogus"], "", "{prog}: unrecognized option '--bogus'\n"),
            (["-help"], "", "{prog}: invalid option -- 'h'\n"),
            (["-j3", "-x"], "", "{prog}: invalid option -- 'x'\n"),
            (["--soc"], "", "{prog}: option '--socket' requires an argument\n"),
            (["--logging=1"], "", "{prog}: option '--logging' doesn't allow an argument\n"),
            (["--s", "/x"], "", "{prog}: option '--s' is ambiguous; possibilities: '--socket' '--single-client'\n"),
            (["--socket", "/x", "extra"], "extra arguments, stopping [opt_index=3,argc=4]\n", ""),
            (["--socket", "/nonexistent/dir/s.sock"], "", ""),
        ]
        for args, out, err in cases:
            r = subprocess.run([self.server, *args], capture_output=True, text=True, timeout=10, cwd=self.dir)
            self.assertEqual((r.returncode, r.stdout, r.stderr), (1, out, err.format(prog=self.server)), args)

    def test_logging(self):
        path = os.path.join(self.dir, "logged.sock")
        proc = subprocess.Popen([self.server, "--socket", path, "--logging"], cwd=self.dir)
        self.addCleanup(lambda: proc.poll() is None and (proc.terminate(), proc.wait()))
        while not os.path.exists(path):
            time.sleep(0.01)
        c = Client(path)
        c.send("run;1;0;0;/bin/true", "bogus;line")
        self.assertEqual(c.read(), ["S;1"])
        self.finished(c.read()[0], "1")
        c.close()
        time.sleep(0.3)
        with open(os.path.join(self.dir, "why3server.log")) as f:
            log = f.read()
        self.assertIn("received query", log)
        self.assertIn("bogus;line", log)

    def test_single_client_exits_when_it_leaves(self):
        path = os.path.join(self.dir, "single.sock")
        proc = subprocess.Popen([self.server, "--socket", path, "--single-client"], cwd=self.dir, env=self.env)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        while not os.path.exists(path):
            time.sleep(0.01)
        c = Client(path)
        c.send("run;1;0;0;/bin/true")
        c.read(2)
        c.close()
        # The C server exits 1 then, and removes its socket.
        self.assertEqual(proc.wait(10), 1)
        self.assertFalse(os.path.lexists(path))

    def test_results_go_to_their_client(self):
        a, b = self.client(), self.client()
        a.send("run;1;0;0;/bin/echo;a")
        b.send("run;1;0;0;/bin/echo;b")
        for c, text in ((a, b"a\n"), (b, b"b\n")):
            self.assertEqual(c.read(), ["S;1"])
            self.assertEqual(self.finished(c.read()[0], "1")[3], text)


class OursConformance(Conformance, unittest.TestCase):
    pass


class DebianConformance(Conformance, unittest.TestCase):
    server = DEBIAN


class OursOnly(ServerMixin, unittest.TestCase):
    """What mathrun adds or fixes (1.8 behaviour, limits the C server lacks)."""

    def test_wall_clock_backstop(self):
        c = self.client()
        start = time.monotonic()
        c.send("run;z;1;0;/bin/sleep;100")
        c.read()
        code, _, killed, _ = self.finished(c.read(timeout=30)[0], "z")
        self.assertEqual((code, killed), (9, "1"))
        self.assertLess(time.monotonic() - start, 15)

    def test_prover_that_forks_and_exits(self):
        marker = f"mathrun-why3-{os.getpid()}-{random.randrange(1 << 30)}"
        c = self.client()
        c.send(
            f"run;f;0;0;/bin/bash;-c;(exec -a {marker} sleep 100 &) && sleep 0.2 && pgrep -f ^{marker} >/dev/null && echo forked"
        )
        c.read()
        code, _, _, output = self.finished(c.read()[0], "f")
        self.assertEqual((code, output), (0, b"forked\n"))
        self.assertFalse(subprocess.run(["pgrep", "-f", "^" + marker], capture_output=True).stdout)

    def test_disconnect_mid_run_kills(self):
        marker = f"mathrun-why3-dc-{random.randrange(1 << 30)}"
        c = Client(self.path)
        c.send(f"run;d;0;0;/bin/bash;-c;exec -a {marker} sleep 100")
        c.read()
        deadline = time.monotonic() + 10
        while not subprocess.run(["pgrep", "-f", "^" + marker], capture_output=True).stdout:
            self.assertLess(time.monotonic(), deadline, "the prover never started")
            time.sleep(0.05)
        c.close()
        deadline = time.monotonic() + 10
        while subprocess.run(["pgrep", "-f", "^" + marker], capture_output=True).stdout:
            self.assertLess(time.monotonic(), deadline, "prover survived its client")
            time.sleep(0.05)
        self.assertIsNone(self.proc.poll())

    def test_flood_is_capped(self):
        c = self.client()
        c.send("run;y;0;0;/usr/bin/yes")
        c.read()
        code, _, killed, output = self.finished(c.read(timeout=60)[0], "y")
        # Killed at the cap: by SIGKILL, or by SIGPIPE when its pipe closed first.
        self.assertIn(code, (signal.SIGKILL, signal.SIGPIPE))
        self.assertEqual(killed, "1")
        self.assertEqual(len(output), 64 << 20)

    def test_term_int_hup_kill_provers_and_unlink_the_socket(self):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            path = os.path.join(self.dir, f"{sig.name}.sock")
            proc = subprocess.Popen([OURS, "--socket", path], cwd=self.dir, env=self.env)
            self.addCleanup(lambda p=proc: p.poll() is None and p.kill())
            while not os.path.exists(path):
                time.sleep(0.01)
            marker = f"mathrun-why3-{sig.name}-{random.randrange(1 << 30)}"
            c = Client(path)
            self.addCleanup(c.close)
            c.send(f"run;s;0;0;/bin/bash;-c;exec -a {marker} sleep 100")
            c.read()
            while not subprocess.run(["pgrep", "-f", "^" + marker], capture_output=True).stdout:
                time.sleep(0.05)
            proc.send_signal(sig)
            proc.wait(10)
            self.assertFalse(os.path.exists(path), sig.name)
            self.assertFalse(subprocess.run(["pgrep", "-f", "^" + marker], capture_output=True).stdout, sig.name)

    def test_twenty_clients_fifty_jobs_random_interrupts(self):
        results = {}

        def client(n):
            rng = random.Random(n)
            c = Client(self.path)
            ids = [f"{n}-{i}" for i in range(50)]
            c.send("parallel;2", *(f"run;{i};0;0;/bin/echo;{i}" for i in ids))
            interrupted = set(rng.sample(ids, 10))
            c.send(*(f"interrupt;{i}" for i in interrupted))
            finals, starts = {}, set()
            while len(finals) < len(ids):
                (line,) = c.read(timeout=120)
                fields = line.split(";")
                if fields[0] == "S":
                    starts.add(fields[1])
                    continue
                assert fields[1] not in finals, f"second F for {fields[1]}"
                finals[fields[1]] = fields
            assert c.quiet(0.5)
            c.close()
            results[n] = (ids, finals)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        self.assertEqual(len(results), 20)
        for ids, finals in results.values():
            self.assertEqual(sorted(finals), sorted(ids))
            for id, fields in finals.items():
                if fields[5]:
                    with open(fields[5], "rb") as f:
                        content = f.read()
                    os.unlink(fields[5])
                    self.assertIn(content, (b"", f"{id}\n".encode()))  # never another client's output
        leftovers = [n for n in os.listdir(self.dir) if n.startswith("why3")]
        self.assertEqual(leftovers, [])

    def test_binds_fast(self):
        path = os.path.join(self.dir, "fast.sock")
        start = time.monotonic()
        proc = subprocess.Popen([OURS, "--socket", path], cwd=self.dir, env=self.env)
        self.addCleanup(lambda: (proc.terminate(), proc.wait()))
        while not os.path.exists(path):
            time.sleep(0.002)
        # Not a timing assertion on the whole start: the socket must exist
        # before why3's second connection attempt at 0.1 s (checked loosely).
        self.assertLess(time.monotonic() - start, 0.5)


class RealWhy3(unittest.TestCase):
    """Debian's why3 proving a small theory through each server."""

    def setUp(self):
        if not (shutil.which("why3") and os.access(DEBIAN, os.X_OK) and os.access(OURS, os.X_OK)):
            raise unittest.SkipTest("why3 is not installed")
        self.dir = temp_dir(self, "mathrun-why3-real-")
        shutil.copy(os.path.join(FIXTURES, "theory.mlw"), self.dir)
        self.env = dict(os.environ, HOME=self.dir, MATHRUN_WHY3_CONTROL="none")
        subprocess.run(["why3", "config", "detect"], cwd=self.dir, env=self.env, capture_output=True, check=True)

    def prove(self, prover, server=None):
        command = ["why3", "prove", "-P", prover, "-t", "2", "theory.mlw"]
        if server is not None:
            if not ROOT:
                raise unittest.SkipTest("the private bind mount needs root")
            command = ["unshare", "-m", "sh", "-c", f'mount --bind "$0" {DEBIAN} && exec "$@"', server, *command]
        r = subprocess.run(command, cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=120)
        return r.stdout + r.stderr

    def test_prove_through_a_bind_mount_equals_the_c_server(self):
        verdicts = {}
        for prover in ("z3", "cvc4"):
            theirs = self.prove(prover)
            ours = self.prove(prover, OURS)
            self.assertEqual(len(_summary(ours)), 4, ours)
            self.assertEqual(_summary(ours), _summary(theirs))
            verdicts[prover] = [verdict for _goal, verdict in _summary(ours)]
        # Two valid goals, an invalid one, and one that cvc4 gives up on at its
        # time limit (Debian's z3 4.8.12 prints "timeout", which why3 1.5.1's
        # driver reads as a failure: the same through either server).
        self.assertEqual(verdicts["cvc4"], ["Valid", "Valid", "Unknown", "Timeout"])
        self.assertEqual(verdicts["z3"][:3], ["Valid", "Valid", "Unknown"])

    def test_replay_with_why3lib(self):
        lib = os.path.join(self.dir, "lib")
        os.mkdir(lib)
        marker = os.path.join(self.dir, "ours-was-used")
        wrapper = os.path.join(lib, "why3server")
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\ntouch {marker}\nexec {OURS} "$@"\n')
        os.chmod(wrapper, 0o755)

        def replay(env):
            """On a fresh copy of the session: a replay updates it."""
            work = temp_dir(self)
            shutil.copy(os.path.join(FIXTURES, "theory.mlw"), work)
            shutil.copytree(os.path.join(FIXTURES, "theory"), os.path.join(work, "theory"))
            r = subprocess.run(
                ["why3", "replay", "theory"], cwd=work, env=env, capture_output=True, text=True, timeout=120
            )
            text = (r.stdout + r.stderr).replace("\r", "\n")
            return [line for line in text.splitlines() if line.strip() and "Progress" not in line]

        ours = replay(dict(self.env, WHY3LIB=lib))
        self.assertTrue(os.path.exists(marker))
        self.assertTrue(any("replay OK" in line for line in ours), ours)
        self.assertEqual(ours, replay(self.env))


def _summary(output: str) -> list[tuple[str, str]]:
    """(goal, verdict) pairs, times left out."""
    pairs, goal = [], None
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("Goal "):
            goal = line
        elif line.startswith("Prover result is:") and goal:
            pairs.append((goal, line.split(":", 1)[1].split("(")[0].strip()))
            goal = None
    return pairs


class OpenAsTheClient(unittest.TestCase):
    """As root, the spawn server opens the files a request names with the
    client's own uid, gid and groups (its file-system ids, for the open
    alone): the kernel's check, with no stat-then-open race, and the
    daemon's own ids never change."""

    def setUp(self):
        if not ROOT:
            raise unittest.SkipTest("needs root")
        from mathrun.why3.files import Credentials

        self.nobody = Credentials.of(65534, 65534)
        self.dir = temp_dir(self, "mathrun-why3-read-")
        os.chmod(self.dir, 0o755)

    def file(self, name, mode, text=b"data\n"):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    @async_test
    async def test_what_nobody_may_and_may_not_read_and_make(self):
        from twisted.internet import reactor

        from mathrun.sandbox.sandbox import DEFAULT_SPAWN
        from mathrun.sandbox.spawner import SpawnServer
        from mathrun.why3.files import Credentials, read_fd

        spawner = SpawnServer(reactor, DEFAULT_SPAWN)
        spawner.start()
        self.addCleanup(lambda: within(spawner.stop()))
        readable = self.file("public", 0o644)
        secret = self.file("secret", 0o600)
        hidden_dir = os.path.join(self.dir, "private")
        os.mkdir(hidden_dir, 0o700)
        behind = os.path.join(hidden_dir, "public-inside")
        with open(behind, "wb") as f:
            f.write(b"x")
        os.chmod(behind, 0o644)
        link = os.path.join(self.dir, "link")
        os.symlink(secret, link)
        fifo = os.path.join(self.dir, "fifo")
        os.mkfifo(fifo, 0o666)
        ids = (os.geteuid(), os.getegid(), os.getgroups())
        self.assertEqual(read_fd(await within(spawner.open_as(self.nobody, readable)), 100), b"data\n")
        self.assertEqual(read_fd(await within(spawner.open_as(self.nobody, readable)), 2), b"da")
        for path in (secret, behind, link, fifo, self.dir, "/nonexistent"):
            with self.assertRaises(OSError, msg=path):
                await within(spawner.open_as(self.nobody, path))
        root = Credentials(0, 0, (0,))
        self.assertEqual(read_fd(await within(spawner.open_as(root, secret)), 100), b"data\n")
        # Made in a directory as its caller: owned by nobody, 0600; refused where nobody may not write.
        directory = os.open(self.dir, os.O_PATH | os.O_DIRECTORY)
        self.addCleanup(os.close, directory)
        os.chmod(self.dir, 0o777)
        fd = await within(spawner.open_as(self.nobody, directory=directory, name="why3made"))
        os.close(fd)
        made = os.stat(os.path.join(self.dir, "why3made"))
        self.assertEqual((made.st_uid, made.st_gid, made.st_mode & 0o777), (65534, 65534, 0o600))
        with self.assertRaises(FileExistsError):
            await within(spawner.open_as(self.nobody, directory=directory, name="why3made"))
        os.chmod(self.dir, 0o755)
        with self.assertRaises(PermissionError):
            await within(spawner.open_as(self.nobody, directory=directory, name="why3other"))
        self.assertEqual((os.geteuid(), os.getegid(), os.getgroups()), ids)
