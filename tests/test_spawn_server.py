"""The C spawn server on its socket, and a sandbox whose spawn server is
killed mid-job: real processes."""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import subprocess

from twisted.trial import unittest

from mathrun.sandbox import Status
from mathrun.sandbox.result import parse_report
from mathrun.sandbox.sandbox import DEFAULT_SPAWN
from mathrun.sandbox.spawner import FrameParser, encode

from .helpers import async_test, make_sandbox, make_unprivileged_sandbox, processes_of, temp_dir, until, within


class Peer:
    """The reactor's side of the socket, spoken by hand."""

    def __init__(self, testcase):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen(
            [DEFAULT_SPAWN, "--fd", str(theirs.fileno())], pass_fds=[theirs.fileno()], stderr=subprocess.PIPE
        )
        theirs.close()
        self.sock, self.parser, self.pending = ours, FrameParser(), []
        self.sock.settimeout(20)
        testcase.addCleanup(self.close)

    def send(self, *fields: bytes) -> None:
        self.sock.sendall(encode(list(fields)))

    def next(self):
        while not self.pending:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 8)
            self.parser.fds_received(fds)
            if not data:
                raise EOFError("the spawn server closed its socket")
            self.pending += self.parser.feed(data)
        message = self.pending.pop(0)
        for fd in message.fds[:3]:
            os.set_blocking(fd, True)  # they come non-blocking, for the reactor
        return message

    def close(self):
        self.sock.close()
        self.proc.wait(20)
        self.proc.stderr.close()


def alive(pidfd: int) -> bool:
    """A pidfd turns readable when its process ends."""
    return not select.select([pidfd], [], [], 0)[0]


def gone(pid: int) -> bool:
    """Ended (a zombie is the new parent's to reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


class SpawnServerProtocolTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.peer = Peer(self)
        self.dir = temp_dir(self)
        ready = self.peer.next()
        self.assertEqual((ready.verb, ready.value(b"pid")), (b"ready", b"%d" % self.peer.proc.pid))

    def spawn(self, job_id: int, *argv: str, extra=()):
        fields = [b"spawn", b"%d" % job_id, b"dir=" + self.dir.encode(), b"env=PATH=/usr/bin:/bin", *extra]
        self.peer.send(*fields, *[b"arg=" + a.encode() for a in argv])

    def test_a_job_gets_its_pipes_a_pidfd_and_a_report(self):
        self.spawn(1, "sh", "-c", "cat; echo done >&2; exit 3")
        spawned = self.peer.next()
        self.assertEqual((spawned.verb, spawned.fields[0], len(spawned.fds)), (b"spawned", b"1", 4))
        stdin, stdout, stderr, pidfd = spawned.fds
        self.assertTrue(alive(pidfd))
        os.write(stdin, b"echoed\n")
        os.close(stdin)
        with os.fdopen(stdout, "rb") as out, os.fdopen(stderr, "rb") as err:
            self.assertEqual((out.read(), err.read()), (b"echoed\n", b"done\n"))
        exited = self.peer.next()
        self.assertEqual((exited.verb, exited.fields[0]), (b"exited", b"1"))
        report = parse_report(exited.value(b"report"))
        self.assertEqual((report["status"], report["code"], report["leftover"]), ("exited", 3, 0))
        self.assertFalse(alive(pidfd))
        os.close(pidfd)

    def test_output_straight_to_a_file_and_no_stdin(self):
        """output-fd: the descriptor sent with the request is the job's
        stdout and stderr (no pipes come back); stdin=null: /dev/null."""
        out = os.open(os.path.join(self.dir, "out"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.addCleanup(os.close, out)
        fields = [b"spawn", b"3", b"dir=" + self.dir.encode(), b"stdin=null", b"output-fd=1"]
        script = b"arg=echo out; cat; echo err >&2"
        socket.send_fds(self.peer.sock, [encode([*fields, b"arg=sh", b"arg=-c", script])], [out])
        spawned = self.peer.next()
        self.assertEqual((spawned.verb, len(spawned.fds)), (b"spawned", 1))  # the pidfd alone
        report = parse_report(self.peer.next().value(b"report"))
        self.assertEqual((report["status"], report["code"]), ("exited", 0))
        self.assertEqual(os.pread(out, 100, 0), b"out\nerr\n")
        os.close(spawned.fds[0])

    def create(self, job_id: int, directory: int, script: bytes):
        """A spawn whose output file is made by the server, as nobody."""
        fields = [b"spawn", b"%d" % job_id, b"dir=" + self.dir.encode(), b"stdin=null", b"output-create=why3"]
        fields += [b"as-uid=65534", b"as-gid=65534", b"as-groups=65534", b"arg=sh", b"arg=-c", b"arg=" + script]
        socket.send_fds(self.peer.sock, [encode(fields)], [directory])

    def test_output_file_made_as_the_caller_with_the_spawn(self):
        """output-create: the file is made in the directory sent (as the
        as-* user: nobody's, 0600, named as mkstemp's), is the job's stdout
        and stderr, and its name comes with ``spawned``; where that user may
        not write, the job fails at stage output; a file made for a job that
        then cannot start is removed."""
        where = temp_dir(self)
        os.chmod(where, 0o777)
        directory = os.open(where, os.O_PATH | os.O_DIRECTORY)
        self.addCleanup(os.close, directory)
        self.create(6, directory, b"echo out; echo err >&2")
        spawned = self.peer.next()
        name = spawned.value(b"output").decode()
        self.assertEqual((spawned.verb, len(spawned.fds), name[:4], len(name)), (b"spawned", 1, "why3", 10))
        report = parse_report(self.peer.next().value(b"report"))
        self.assertEqual((report["status"], report["code"]), ("exited", 0))
        made = os.stat(os.path.join(where, name))
        self.assertEqual((made.st_uid, made.st_gid, made.st_mode & 0o777), (65534, 65534, 0o600))
        with open(os.path.join(where, name), "rb") as f:
            self.assertEqual(f.read(), b"out\nerr\n")
        os.close(spawned.fds[0])
        self.spawn(7, "sleep", "60")
        running = self.peer.next()
        self.create(7, directory, b"true")  # the same id: refused after its file was made
        report = parse_report(self.peer.next().value(b"report"))
        self.assertEqual((report["status"], report["errno"]), ("failed", errno.EEXIST))
        self.assertEqual(os.listdir(where), [name])
        os.chmod(where, 0o755)
        self.create(8, directory, b"true")
        failed = self.peer.next()
        report = parse_report(failed.value(b"report"))
        self.assertEqual((failed.verb, report["stage"], report["errno"]), (b"exited", "output", errno.EACCES))
        self.peer.send(b"kill", b"7")
        self.assertEqual(self.peer.next().verb, b"exited")
        for fd in running.fds:
            os.close(fd)

    def test_a_quiet_job_is_heard_of_once(self):
        """quiet=1 (no stdin, output to a file): no ``spawned``, the made
        file's name with ``exited``; refused for a job with pipes."""
        where = temp_dir(self)
        os.chmod(where, 0o777)
        directory = os.open(where, os.O_PATH | os.O_DIRECTORY)
        self.addCleanup(os.close, directory)
        fields = [b"spawn", b"9", b"dir=" + self.dir.encode(), b"stdin=null", b"quiet=1", b"output-create=q"]
        fields += [b"as-uid=65534", b"as-gid=65534", b"as-groups=", b"arg=sh", b"arg=-c", b"arg=echo quiet"]
        socket.send_fds(self.peer.sock, [encode(fields)], [directory])
        exited = self.peer.next()
        name = exited.value(b"output").decode()
        self.assertEqual((exited.verb, exited.fields[0], exited.fds), (b"exited", b"9", ()))
        self.assertEqual(parse_report(exited.value(b"report"))["status"], "exited")
        with open(os.path.join(where, name), "rb") as f:
            self.assertEqual(f.read(), b"quiet\n")
        self.spawn(10, "true", extra=[b"quiet=1"])
        self.assertEqual(self.peer.next().verb, b"error")
        report = parse_report(self.peer.next().value(b"report"))
        self.assertEqual((report["status"], report["errno"]), ("failed", errno.EINVAL))

    def test_output_fd_without_its_descriptor_fails_the_job(self):
        self.spawn(4, "true", extra=[b"output-fd=1"])
        self.assertEqual(self.peer.next().verb, b"error")
        report = parse_report(self.peer.next().value(b"report"))
        self.assertEqual((report["status"], report["errno"]), ("failed", errno.EBADF))

    def test_jobs_run_side_by_side(self):
        """The server waits on no job: the second ends while the first still
        reads its input."""
        self.spawn(1, "sh", "-c", "read x; echo got $x")
        first = self.peer.next()
        self.spawn(2, "echo", "second")
        second = self.peer.next()
        self.assertEqual(second.verb, b"spawned")
        exited = self.peer.next()
        self.assertEqual((exited.verb, exited.fields[0]), (b"exited", b"2"))
        os.write(first.fds[0], b"it\n")
        self.assertEqual(os.read(first.fds[1], 100), b"got it\n")
        self.assertEqual(self.peer.next().fields[0], b"1")
        for fd in first.fds + second.fds:
            os.close(fd)

    def test_kill_ends_the_job_and_what_it_left(self):
        self.spawn(5, "sh", "-c", "sleep 60 & sleep 60")
        spawned = self.peer.next()
        self.peer.send(b"kill", b"5")
        report = parse_report(self.peer.next().value(b"report"))
        self.assertEqual((report["status"], report["signal"], report["killed"]), ("signalled", 9, 1))
        self.assertEqual(os.read(spawned.fds[1], 10), b"")  # every writer is gone
        for fd in spawned.fds:
            os.close(fd)

    def test_exec_failure_is_reported(self):
        self.spawn(2, "/nonexistent/tool")
        spawned = self.peer.next()
        self.assertIn(b"exec of '/nonexistent/tool' failed", os.read(spawned.fds[2], 200))
        report = parse_report(self.peer.next().value(b"report"))
        self.assertEqual((report["status"], report["stage"], report["errno"]), ("failed", "exec", 2))
        for fd in spawned.fds:
            os.close(fd)

    def test_bad_requests(self):
        for extra, words in (
            ([b"colour=blue"], b"bad field 'colour=blue'"),
            ([b"uid=0", b"gid=5", b"kill-ruid=7"], b"refusing to run a job as root"),
            ([b"uid=5", b"gid=5"], b"kill-ruid must name another unprivileged user"),
        ):
            self.spawn(9, "true", extra=extra)
            error = self.peer.next()
            self.assertEqual(error.verb, b"error")
            self.assertIn(words, error.fields[0])
            report = parse_report(self.peer.next().value(b"report"))
            self.assertEqual((report["status"], report["errno"]), ("failed", 22))
        self.peer.send(b"launch", b"1")
        self.assertEqual(self.peer.next(), self.peer.parser._message(b"error\0unknown request\0"))

    def test_end_of_input_kills_every_job(self):
        self.spawn(1, "sleep", "60")
        pidfd = self.peer.next().fds[3]
        self.peer.sock.shutdown(socket.SHUT_WR)
        self.assertEqual(self.peer.proc.wait(20), 0)
        self.assertFalse(alive(pidfd))


class SpawnServerDeathTests(unittest.TestCase):
    def setUp(self):
        self.sandbox = make_sandbox(self, jobs=2)

    @async_test
    async def test_killed_server_fails_the_jobs_and_comes_back(self):
        starter = self.sandbox.starter
        leases = [await within(self.sandbox.acquire(), 20) for _ in range(2)]
        jobs = [lease.spawn(["sleep", "60"]) for lease in leases]
        await until(lambda: all(job.pid is not None for job in jobs), "the sleepers never started")
        old = starter.pid
        os.kill(old, signal.SIGKILL)
        for job in jobs:
            result = await within(job.done, 20)
            self.assertEqual(result.status, Status.INTERNAL_ERROR)
            self.assertIn("spawn server", result.detail)
        for lease in leases:
            await within(lease.release(), 20)
            if self.sandbox.privileged:
                self.assertEqual(processes_of(lease.user.uid), [])
        for job in jobs:  # the jobs die with their server (parent-death signal)
            await until(lambda job=job: gone(job.pid), f"job {job.pid} outlived its spawn server")
        await until(lambda: starter.ready, "the spawn server never came back", step=0.05)
        self.assertNotEqual(starter.pid, old)
        self.assertEqual(starter.restarts, 1)
        result = await within(self.sandbox.run(["echo", "back"]), 20)
        self.assertEqual((result.status, result.stdout), (Status.OK, b"back\n"))


class SpawnServerDeathUnprivilegedTests(SpawnServerDeathTests):
    def setUp(self):
        self.sandbox = make_unprivileged_sandbox(self)
