"""In-memory stand-ins for the seams of the server, each declaring the
interface it stands in for (tests check them with ``verifyObject``): a
process reactor on ``MemoryReactorClock`` (as Twisted's procmon tests
have), process transports, a job starter, sinks and back ends."""

from __future__ import annotations

from twisted.internet import address, defer, error
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from mathrun.interfaces import IAsyBackend, IAsyHandle, IRunSink
from mathrun.sandbox.spawner import IJobStarter


@implementer(IProcessTransport)
class FakeProcessTransport:
    """What a process protocol writes, the signals it sends; ``end()``
    makes the process end as the reactor would report it."""

    pid = 4242

    def __init__(self, proto=None):
        self.proto = proto
        self.written = b""
        self.stdin_closed = False
        self.signals: list = []
        self.exited = False

    def write(self, data: bytes) -> None:
        self.written += data

    def writeSequence(self, data) -> None:
        self.written += b"".join(data)

    def writeToChild(self, childFD: int, data: bytes) -> None:
        self.written += data

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def closeStdout(self) -> None:
        pass

    def closeStderr(self) -> None:
        pass

    def closeChildFD(self, descriptor: int) -> None:
        pass

    def loseConnection(self) -> None:
        self.closeStdin()

    def signalProcess(self, signalID) -> None:
        if self.exited:
            raise error.ProcessExitedAlready()
        self.signals.append(signalID)

    def getPeer(self):
        return address._ProcessAddress()

    def getHost(self):
        return address._ProcessAddress()

    def end(self, code: int = 1) -> None:
        """The process exits with ``code``: the protocol hears processEnded."""
        from twisted.python.failure import Failure

        self.exited = True
        reason = error.ProcessDone(0) if code == 0 else error.ProcessTerminated(exitCode=code)
        self.proto.processEnded(Failure(reason))


@implementer(IReactorProcess)
class ProcessReactor(MemoryReactorClock):
    """A clock and memory reactor whose ``spawnProcess`` connects the protocol
    to a :class:`FakeProcessTransport` and records the call."""

    def __init__(self):
        super().__init__()
        self.spawned: list = []  # (protocol, executable, args, env)

    def spawnProcess(self, processProtocol, executable, args=(), env=None, path=None, uid=None, gid=None,
                     usePTY=False, childFDs=None):  # fmt: skip
        transport = FakeProcessTransport(processProtocol)
        processProtocol.makeConnection(transport)
        self.spawned.append((processProtocol, executable, args, env))
        return transport


@implementer(IJobStarter)
class FakeStarter:
    """A job starter that spawns nothing: it records kills, and the test
    plays the job's events (``spawned``, ``output``, ``exited``) on
    ``events``, the last job's (as a Maxima child keeps its job's output)."""

    job_id = 7

    def __init__(self):
        self.kills: list = []
        self.events = None
        self.requests: list = []

    def start(self) -> None:
        pass

    def spawn(self, argv, env, options, events, output_fd=None, stdin=True, output_create=None) -> int:
        self.events = events
        self.requests.append((argv, env, options, output_fd, stdin))
        return self.job_id

    def kill(self, job_id: int) -> None:
        self.kills.append(job_id)

    def stop(self):
        return defer.succeed(None)


@implementer(IRunSink)
class RecordingSink:
    """A run's sink that keeps what it was told, in order."""

    def __init__(self):
        self.events: list = []

    def output(self, stream, data) -> None:
        self.events.append(("output", stream, data))

    def result(self, fmt, data) -> None:
        self.events.append(("result", fmt, data))

    def complete(self, success, error, time_ms) -> None:
        self.events.append(("complete", success, error))

    @property
    def completed(self) -> list:
        """Every ``complete``: exactly one is the contract."""
        return [e for e in self.events if e[0] == "complete"]


@implementer(IAsyHandle)
class FakeRun:
    """A task handed to a fake back end: the test ends it (``finish``, or
    through ``sink``)."""

    def __init__(self, files, main, options, sink):
        self.files, self.main, self.options, self.sink = files, main, options, sink
        self.timeouts: list = []
        self.inputs: list = []
        self.aborted = None

    def lower_timeout(self, timeout_ms: int) -> None:
        self.timeouts.append(timeout_ms)

    def write_input(self, data: bytes) -> None:
        self.inputs.append(data)

    def abort(self, reason: str = "aborted") -> None:
        self.aborted = reason

    def finish(self) -> None:
        """A successful run with one image."""
        self.sink.result(self.options.format, b"<svg/>")
        self.sink.complete(True, None, 5)


@implementer(IAsyBackend)
class FakeBackend:
    """An Asymptote back end that runs nothing: each ``start`` makes a
    :class:`FakeRun`; ``fail(seconds)`` (with a ``clock``) takes it out of
    rotation for that long, as a RemoteBackend's ``mark_down`` does."""

    def __init__(self, name: str = "fake", clock=None):
        self.name = name
        self.clock = clock
        self.down_until = 0.0
        self.runs: list[FakeRun] = []

    def available(self) -> bool:
        return self.clock is None or self.clock.seconds() >= self.down_until

    def start(self, files, main, options, sink) -> FakeRun:
        run = FakeRun(files, main, options, sink)
        self.runs.append(run)
        return run

    def fail(self, seconds: float) -> None:
        self.down_until = self.clock.seconds() + seconds
