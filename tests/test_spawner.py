"""The spawn server's protocol and keeper on fakes: framing under any
chunking, the requests as sent, a server that dies mid-job, restarts with
backoff; and Job fed by a fake starter (real pipes, real reactor)."""

from __future__ import annotations

import os
import socket

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, error, reactor, task
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mathrun.sandbox import Limits, Status
from mathrun.sandbox.job import Job
from mathrun.sandbox.spawner import (
    FrameError,
    FrameParser,
    IJobEvents,
    IJobStarter,
    Message,
    SpawnProtocol,
    SpawnServer,
    SpawnSocket,
    encode,
    option_fields,
)

from .helpers import async_test

# Any field but a NUL or the frame's own "fds=" (the parser reads the first one).
field = st.binary(max_size=30).filter(lambda b: b"\0" not in b and not b.startswith(b"fds="))
verb = st.sampled_from([b"ready", b"spawned", b"exited", b"error"])
message = st.tuples(verb, st.lists(field, max_size=5), st.integers(min_value=0, max_value=4))


def framed(verb, fields, nfds):
    return encode([verb, *fields, *([b"fds=%d" % nfds] if nfds else [])])


class FramingTests(unittest.SynchronousTestCase):
    @given(st.lists(message, max_size=8), st.lists(st.integers(min_value=1, max_value=50), max_size=40))
    def test_any_chunking_gives_the_same_messages(self, messages, cuts):
        """Descriptors come with the chunk that holds their frame's first byte
        (as recvmsg gives them); the frames may be cut anywhere."""
        stream, starts, fds, next_fd = b"", [], [], 100
        for v, fields, nfds in messages:
            starts.append((len(stream), list(range(next_fd, next_fd + nfds))))
            fds.append(tuple(range(next_fd, next_fd + nfds)))
            next_fd += nfds
            stream += framed(v, fields, nfds)
        parser, got, position = FrameParser(), [], 0
        for cut in [*cuts, len(stream)]:
            chunk = stream[position : position + cut]
            for start, frame_fds in starts:
                if position <= start < position + len(chunk):
                    parser.fds_received(frame_fds)
            got += parser.feed(chunk)
            position += len(chunk)
            if position >= len(stream):
                break
        expected = [
            Message(v, tuple(f) + ((b"fds=%d" % n,) if n else ()), fd)
            for (v, f, n), fd in zip(messages, fds, strict=True)
        ]
        self.assertEqual(got, expected)

    def test_broken_frames(self):
        self.assertRaises(FrameError, FrameParser(max_frame=10).feed, (11).to_bytes(4, "little"))
        self.assertRaises(FrameError, FrameParser().feed, (2).to_bytes(4, "little") + b"ab")
        self.assertRaises(FrameError, FrameParser().feed, encode([b"spawned", b"1", b"fds=4"]))

    def test_no_nul_in_a_field(self):
        self.assertRaises(ValueError, encode, [b"spawn", b"a\0b"])

    def test_options_become_fields(self):
        options = ["--uid", "1001", "--unshare-net", "--dir", "/w", "--cpu", "3"]
        self.assertEqual(option_fields(options), [b"uid=1001", b"unshare-net=1", b"dir=/w", b"cpu=3"])
        limits = Limits(cpu_seconds=2.5, processes=7, memory_bytes=None)
        self.assertIn(b"cpu=3", option_fields(limits.jail_args(True)))
        self.assertIn(b"nproc=7", option_fields(limits.jail_args(True)))


@implementer(IJobEvents)
class Events:
    def __init__(self):
        self.seen = []

    def spawned(self, pid, fds):
        self.seen.append(("spawned", pid, fds))

    def exited(self, report):
        self.seen.append(("exited", report))

    def lost(self, problem):
        self.seen.append(("lost", problem))

    def output(self, stream, data):
        self.seen.append(("output", stream, data))

    def output_created(self, name):
        self.seen.append(("output_created", name))


class FakeProcess:
    def __init__(self, proto, pid):
        self.proto, self.pid, self.signals = proto, pid, []

    def signalProcess(self, name):
        self.signals.append(name)


class ProcessReactor(MemoryReactorClock):
    def __init__(self):
        super().__init__()
        self.processes = []

    def spawnProcess(self, proto, executable, args, env=None, childFDs=None, **kw):
        process = FakeProcess(proto, 1000 + len(self.processes))
        self.processes.append((process, args, childFDs))
        return process


class SpawnServerTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.reactor = ProcessReactor()
        self.server = SpawnServer(self.reactor, "/x/mathrun-spawn")
        self.server.start()
        self.connect()

    def connect(self):
        """The keeper's protocol, moved onto a StringTransport."""
        self.proto = self.server._proto
        self.proto.transport.socket.close()
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def sent(self):
        messages = FrameParser().feed(self.transport.value())
        self.transport.clear()
        return messages

    def receive(self, *fields, fds=()):
        for fd in fds:
            self.proto.fileDescriptorReceived(fd)
        self.proto.dataReceived(encode(list(fields)))

    def die(self):
        process = self.reactor.processes[-1][0]
        self.proto.connectionLost(Failure(error.ConnectionDone()))
        process.proto.processEnded(Failure(error.ProcessTerminated(signal=9)))
        return process

    def test_interfaces(self):
        verifyObject(IJobStarter, self.server)
        verifyObject(IJobEvents, Events())

    def test_started_once_with_its_socket_as_fd_3(self):
        _process, args, child_fds = self.reactor.processes[0]
        self.assertEqual(args, ["/x/mathrun-spawn", "--fd", "3"])
        self.assertEqual(sorted(child_fds), [1, 2, 3])

    def test_a_job_from_request_to_report(self):
        events = Events()
        job_id = self.server.spawn(["sh", "-c", "true"], {"PATH": "/bin"}, ["--dir", "/w", "--cpu", "2"], events)
        [request] = self.sent()
        self.assertEqual(request.verb, b"spawn")
        self.assertEqual(request.fields[0], b"%d" % job_id)
        self.assertEqual(
            list(request.fields[1:]), [b"dir=/w", b"cpu=2", b"env=PATH=/bin", b"arg=sh", b"arg=-c", b"arg=true"]
        )
        fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(4)]
        self.receive(b"spawned", b"%d" % job_id, b"pid=77", b"fds=4", fds=fds)
        self.receive(b"exited", b"%d" % job_id, b"report=status=exited code=0")
        self.assertEqual(events.seen, [("spawned", 77, tuple(fds)), ("exited", b"status=exited code=0")])
        for fd in fds:
            os.close(fd)
        self.server.kill(job_id)  # over: nothing is sent
        self.assertEqual(self.sent(), [])

    def test_kill_is_sent_for_a_running_job(self):
        job_id = self.server.spawn(["sleep", "9"], {}, [], Events())
        self.sent()
        self.server.kill(job_id)
        self.assertEqual(self.sent(), [Message(b"kill", (b"%d" % job_id,))])

    def test_death_mid_job_fails_every_waiting_job_and_restarts(self):
        waiting = [Events() for _ in range(3)]
        for events in waiting:
            self.server.spawn(["sleep", "9"], {}, [], events)
        process = self.die()
        for events in waiting:
            [(what, problem)] = events.seen
            self.assertEqual(what, "lost")
            self.assertIn("spawn server", problem)
        # The socket went first: the keeper made sure the process ends too.
        self.assertEqual(process.signals, ["KILL"])
        # Down until the restart: a job asked for now fails at once.
        late = Events()
        self.server.spawn(["true"], {}, [], late)
        self.assertEqual(late.seen[0][0], "lost")
        self.reactor.advance(SpawnServer.min_restart_delay)
        self.assertEqual(len(self.reactor.processes), 2)
        self.assertTrue(self.server.ready)

    def test_no_restart_once_the_reactor_shuts_down(self):
        """A signal to the whole process group ends the spawn server too."""
        self.die()
        for trigger, args, kwargs in self.reactor.triggers["before"]["shutdown"]:
            trigger(*args, **kwargs)
        self.reactor.advance(SpawnServer.max_restart_delay)
        self.assertEqual(len(self.reactor.processes), 1)

    def test_backoff_doubles_until_stable(self):
        delays = []
        for _ in range(4):
            self.die()
            delays.append(round(self.reactor.getDelayedCalls()[0].getTime() - self.reactor.seconds(), 6))
            self.reactor.advance(delays[-1])
            self.connect()
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8])
        self.reactor.advance(SpawnServer.stable_after + 1)
        self.die()
        self.assertAlmostEqual(self.reactor.getDelayedCalls()[0].getTime() - self.reactor.seconds(), 0.1)

    def test_a_bad_frame_loses_the_server(self):
        events = Events()
        self.server.spawn(["true"], {}, [], events)
        self.proto.dataReceived((5 << 20).to_bytes(4, "little"))
        self.assertEqual(events.seen[0][0], "lost")
        self.assertIn("bad frame", events.seen[0][1])
        self.assertEqual(self.reactor.processes[-1][0].signals, ["KILL"])

    def test_stop_closes_the_socket_and_waits(self):
        d = self.server.stop()
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(d)
        self.die()
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])  # no restart


class SpawnSocketTests(unittest.TestCase):
    @async_test
    async def test_a_bad_frame_on_a_real_socket_aborts_it(self):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        self.addCleanup(theirs.close)
        lost, messages = defer.Deferred(), []
        proto = SpawnProtocol(messages.append, lambda problem: lost.called or lost.callback(problem))
        SpawnSocket(reactor, ours, proto)
        proto.transport.write(encode([b"kill", b"1"]))
        self.assertEqual(FrameParser().feed(theirs.recv(100)), [Message(b"kill", (b"1",))])
        theirs.sendall(encode([b"ready", b"pid=1"]) + b"\xff\xff\xff\xff")
        self.assertIn("bad frame", await lost)
        self.assertEqual(messages, [Message(b"ready", (b"pid=1",))])
        while ours.fileno() != -1:
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(theirs.recv(100), b"")  # closed on our side


@implementer(IJobStarter)
class FakeStarter:
    """Hands out real pipes; the test plays the server's part."""

    def __init__(self):
        self.jobs, self.killed = {}, []

    def start(self):
        pass

    def spawn(self, argv, env, options, events, output_fd=None, stdin=True, output_create=None):
        job_id = len(self.jobs) + 1
        self.jobs[job_id] = events
        return job_id

    def kill(self, job_id):
        self.killed.append(job_id)

    def stop(self):
        return None


def server_pipes():
    """Three pipes whose job's ends are non-blocking, as the spawn server sends them."""
    pipes = [os.pipe() for _ in range(3)]
    for fd in (pipes[0][1], pipes[1][0], pipes[2][0]):
        os.set_blocking(fd, False)
    return pipes


class FakeLease:
    def __init__(self):
        self.sandbox, self.cgroup, self.external_processes, self.finished = self, None, False, []
        self.reactor = reactor

    def _job_finished(self, job, result):
        self.finished.append(result)


class JobOnFakeStarterTests(unittest.TestCase):
    def setUp(self):
        self.starter = FakeStarter()
        verifyObject(IJobStarter, self.starter)
        self.lease = FakeLease()

    def start(self, limits=None):
        job = Job(self.lease, limits or Limits(wall_seconds=None), None)
        verifyObject(IJobEvents, job)
        job.start(self.starter, ["prog"], {}, [])
        pipes = server_pipes()
        job.spawned(42, (pipes[0][1], pipes[1][0], pipes[2][0]))
        self.held = {pipes[0][0], pipes[1][1], pipes[2][1]}  # the test's ends (the job owns the others)
        self.addCleanup(lambda: [os.close(fd) for fd in self.held])
        return job, pipes[0][0], pipes[1][1], pipes[2][1]

    def close(self, fd):
        self.held.discard(fd)
        os.close(fd)

    @async_test
    async def test_server_death_mid_job_is_an_internal_error(self):
        job, *_ = self.start()
        job.lost("the spawn server's socket closed (Connection was closed cleanly.): the job was lost with it")
        result = await job.done
        self.assertEqual(result.status, Status.INTERNAL_ERROR)
        self.assertIn("spawn server", result.detail)
        self.assertTrue(self.lease.external_processes)
        self.assertEqual(self.lease.finished, [result])

    @async_test
    async def test_output_after_the_report_is_kept(self):
        job, stdin, stdout, stderr = self.start()
        job.exited(b"status=exited code=0 utime=0.1 stime=0 maxrss_kb=10 wall=0.2 leftover=0 killed=0 remaining=0")
        os.write(stdout, b"late")
        self.close(stdout)
        self.close(stderr)
        result = await job.done
        self.assertEqual((result.status, result.stdout), (Status.OK, b"late"))

    @async_test
    async def test_a_pipe_held_open_elsewhere_stops_counting_after_the_drain_time(self):
        job, _stdin, _stdout, stderr = self.start()
        job.drain_seconds = 0.05
        self.close(stderr)
        job.exited(b"status=exited code=0 utime=0 stime=0 maxrss_kb=1 wall=0 leftover=1 killed=0 remaining=0")
        self.assertEqual((await job.done).status, Status.OK)

    @async_test
    async def test_stdin_written_before_the_pipes_came(self):
        job = Job(self.lease, Limits(wall_seconds=None), None)
        job.start(self.starter, ["cat"], {}, [])
        job.write(b"early ")
        job.write(b"input")
        job.close_stdin()
        pipes = server_pipes()
        os.set_blocking(pipes[0][0], False)
        job.spawned(7, (pipes[0][1], pipes[1][0], pipes[2][0]))
        got = b""
        while True:
            await task.deferLater(reactor, 0.01, lambda: None)
            try:
                chunk = os.read(pipes[0][0], 100)
            except BlockingIOError:
                continue
            if not chunk:
                break  # closed after the queue
            got += chunk
        self.assertEqual(got, b"early input")
        job.lost("gone")
        await job.done
        for fd in (pipes[0][0], pipes[1][1], pipes[2][1]):
            os.close(fd)

    @async_test
    async def test_output_cap_kills_and_closes(self):
        job, _stdin, stdout, _stderr = self.start(Limits(wall_seconds=None, output_bytes=10))
        os.write(stdout, b"x" * 50)
        while not self.starter.killed:
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(self.starter.killed, [1])
        job.exited(b"status=signalled signal=9 utime=0 stime=0 maxrss_kb=1 wall=0 leftover=0 killed=1 remaining=0")
        result = await job.done
        self.assertEqual((result.status, result.stdout), (Status.OUTPUT_LIMIT, b"x" * 10))

    @async_test
    async def test_wall_limit_counts_from_the_request(self):
        job = Job(self.lease, Limits(wall_seconds=0.05), None)
        job.start(self.starter, ["sleep"], {}, [])  # no answer from the server yet
        while not self.starter.killed:
            await task.deferLater(reactor, 0.01, lambda: None)
        job.exited(b"status=signalled signal=9 utime=0 stime=0 maxrss_kb=1 wall=0 leftover=0 killed=1 remaining=0")
        self.assertEqual((await job.done).status, Status.TIME_LIMIT)
