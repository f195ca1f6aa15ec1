"""A server that needs no TLS leaves pyOpenSSL unloaded (mathrun/tls.py)."""

from __future__ import annotations

import subprocess
import sys

from twisted.trial import unittest

from mathrun.options import Options
from mathrun.tls import needs_tls


def _options(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class NeedsTlsTests(unittest.TestCase):
    def test_plain_maxima_only_server_needs_none(self):
        self.assertFalse(needs_tls(_options("--no-asy", "--http", "tcp:0:interface=127.0.0.1")))
        self.assertFalse(needs_tls(_options("--no-asy", "--no-why3", "--http", "unix:/tmp/x.sock")))

    def test_a_tls_endpoint_or_the_asy_front_end_needs_it(self):
        self.assertTrue(needs_tls(_options("--no-asy", "--http", "ssl:8443:privateKey=k.pem")))
        self.assertTrue(needs_tls(_options("--no-asy", "--asy-runner", "ssl:9000")))
        self.assertTrue(needs_tls(_options()))

    def test_without_tls_twisted_web_still_serves(self):
        """In a fresh process, as twistd: pyOpenSSL and cryptography stay
        unloaded, and a TCP site still answers."""
        script = """
import sys, urllib.request
from mathrun.options import Options
from mathrun.tls import leave_tls_unloaded
o = Options(); o.parseOptions(["--no-asy", "--no-why3"])
assert leave_tls_unloaded(o)
from twisted.internet import reactor, threads
from twisted.web import server, static
page = static.Data(b"up", "text/plain")
page.isLeaf = True
port = reactor.listenTCP(0, server.Site(page), interface="127.0.0.1")
url = "http://127.0.0.1:%d/" % port.getHost().port
d = threads.deferToThread(lambda: urllib.request.urlopen(url, timeout=10).read())
d.addBoth(lambda r: (print(r, "cryptography" in sys.modules, sys.modules.get("OpenSSL")), reactor.stop()))
reactor.callLater(20, reactor.stop)
reactor.run()
"""
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.stdout.strip(), "b'up' False None", out.stderr)
