"""Every fake of the tests, and the real part it stands in for, hold to
the same declared interface (zope.interface's ``verifyObject``)."""

from __future__ import annotations

from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from zope.interface.verify import verifyClass, verifyObject

from mathrun.asy.backends import LocalBackend, RemoteBackend, RemoteTask
from mathrun.asy.config import AsyConfig
from mathrun.asy.protocol import RunOptions
from mathrun.asy.queue_ws import QueueProtocol
from mathrun.asy.runner import AsyRun
from mathrun.asy.runner_ws import FrameSink
from mathrun.interfaces import (
    IAsyBackend,
    IAsyHandle,
    IFrontEnd,
    IJob,
    IJobStarter,
    ILease,
    IMaximaChild,
    IMaximaPool,
    IMother,
    IQueueClient,
    IRunSink,
    ISandbox,
)
from mathrun.maxima.child import Child
from mathrun.maxima.config import MaximaConfig
from mathrun.maxima.mother import Mother
from mathrun.maxima.pool import MaximaPool
from mathrun.sandbox.job import Job
from mathrun.sandbox.sandbox import Lease, Sandbox
from mathrun.why3.service import Why3Service

from . import fakes
from .test_asy_queue_load import FakeClient
from .test_maxima_logic import FakeChild, FakeMother, FakePool
from .test_maxima_logic import FakeSandbox as MaximaFakeSandbox
from .test_spawner import FakeStarter as SpawnerFakeStarter
from .test_why3_protocol import FakeLease, FakeSandbox


class FakesTests(unittest.SynchronousTestCase):
    def test_process_fakes(self):
        reactor = fakes.ProcessReactor()
        verifyObject(IReactorProcess, reactor)
        verifyObject(IProcessTransport, fakes.FakeProcessTransport())

    def test_starter_sink_and_back_end_fakes(self):
        verifyObject(IJobStarter, fakes.FakeStarter())
        verifyObject(IRunSink, fakes.RecordingSink())
        backend = fakes.FakeBackend("a", MemoryReactorClock())
        verifyObject(IAsyBackend, backend)
        verifyObject(IAsyHandle, backend.start({}, None, RunOptions(), fakes.RecordingSink()))
        verifyObject(IQueueClient, FakeClient(None))

    def test_sandbox_fakes(self):
        sandbox = FakeSandbox()
        verifyObject(ISandbox, sandbox)
        verifyObject(ISandbox, MaximaFakeSandbox(2))
        lease = FakeLease(sandbox)
        verifyObject(ILease, lease)
        verifyObject(IJob, lease.spawn(["true"], None, output_fd=-1))

    def test_maxima_fakes(self):
        verifyObject(IMaximaPool, FakePool())
        verifyObject(IMother, FakeMother())
        verifyObject(IMaximaChild, FakeChild(MemoryReactorClock(), None, MaximaConfig()))

    def test_the_spawner_tests_starter(self):
        verifyObject(IJobStarter, SpawnerFakeStarter())


class RealPartsTests(unittest.SynchronousTestCase):
    """The real classes declare (or, for the sandbox's and Maxima's, hold
    to) the interfaces their fakes stand in for."""

    def test_declared(self):
        for interface, cls in [
            (IAsyBackend, LocalBackend),
            (IAsyBackend, RemoteBackend),
            (IAsyHandle, RemoteTask),
            (IAsyHandle, AsyRun),
            (IRunSink, FrameSink),
            (IFrontEnd, Why3Service),
        ]:
            self.assertTrue(interface.implementedBy(cls), cls)
            verifyClass(interface, cls)

    def test_the_sandbox_and_maxima_hold_to_theirs(self):
        verifyClass(ISandbox, Sandbox, tentative=True)
        verifyClass(ILease, Lease, tentative=True)
        verifyClass(IJob, Job, tentative=True)
        verifyClass(IMaximaPool, MaximaPool, tentative=True)
        verifyClass(IMother, Mother, tentative=True)
        verifyClass(IMaximaChild, Child, tentative=True)
        verifyClass(IQueueClient, QueueProtocol, tentative=True)

    def test_front_end_services(self):
        from mathrun.asy.service import AsyService
        from mathrun.maxima.service import MaximaService

        reactor = MemoryReactorClock()
        sandbox = MaximaFakeSandbox(2)
        verifyObject(IFrontEnd, AsyService(sandbox, AsyConfig(local=1), reactor))
        verifyObject(IFrontEnd, MaximaService(sandbox, MaximaConfig(core_cache=self.mktemp()), reactor))
        verifyObject(IFrontEnd, Why3Service(sandbox, "/nonexistent/why3.sock", reactor=reactor))
