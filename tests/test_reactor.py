"""mathrun's reactor (mathrun/reactor.py): events still reach their
selectables, and one that raises is logged without stopping the others."""

from __future__ import annotations

import os

from twisted.internet import abstract
from twisted.trial import unittest

from mathrun.reactor import LeanEPollReactor


class Reader(abstract.FileDescriptor):
    def __init__(self, reactor, fd, fail=False):
        super().__init__(reactor)
        self.fd, self.fail, self.read = fd, fail, []

    def fileno(self):
        return self.fd

    def doRead(self):
        self.read.append(os.read(self.fd, 100))
        if self.fail:
            raise RuntimeError("broken reader")

    def connectionLost(self, reason):
        self.lost = reason


class LeanReactorTests(unittest.TestCase):
    def test_events_are_delivered_and_a_failure_logged(self):
        reactor = LeanEPollReactor()
        self.addCleanup(reactor._poller.close)
        readers = []
        for fail in (True, False):
            r, w = os.pipe()
            self.addCleanup(os.close, w)
            self.addCleanup(os.close, r)
            readers.append(Reader(reactor, r, fail))
            reactor.addReader(readers[-1])
            os.write(w, b"x%d" % fail)
        reactor.doPoll(1)
        self.assertEqual([r.read for r in readers], [[b"x1"], [b"x0"]])
        # The broken one is disconnected with its error, as Twisted does it.
        self.assertIn("broken reader", str(readers[0].lost.value))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertNotIn(readers[0], reactor.getReaders())
        self.assertIn(readers[1], reactor.getReaders())
