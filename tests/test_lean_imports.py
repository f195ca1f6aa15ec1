"""Which options keep pyOpenSSL in the server (mathrun/lean_imports.py), and
a fresh interpreter without it still running Twisted's TCP, endpoints and web."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial import unittest

from mathrun.lean_imports import needs_tls

PROBE = """
import sys
from mathrun.lean_imports import leave_out_tls
left_out = leave_out_tls({options!r})
from twisted.internet import endpoints, reactor, tcp
from twisted.web import server
endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
print(left_out, sys.modules.get("OpenSSL") is not None)
"""


def probe(options: dict, env: dict | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(options=options)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    if done.returncode != 0:
        raise AssertionError(done.stderr)
    return done.stdout.strip()


class NeedsTlsTests(unittest.SynchronousTestCase):
    def test_options_that_need_tls(self):
        for options in (
            {"http": "ssl:port=8443:privateKey=k.pem"},
            {"http": " TLS:host:443"},
            {"asy-runner": "ssl:9001:privateKey=k.pem"},
            {"asy-backends": "ws://a:1/, wss://b:2/"},
            {"asy-backends-ca": "ca.pem"},
        ):
            self.assertTrue(needs_tls(options), options)

    def test_options_that_do_not(self):
        for options in ({}, {"http": "tcp:8080", "asy-backends": "ws://a:1/", "asy-runner": "unix:/run/r.sock"}):
            self.assertFalse(needs_tls(options), options)

    def test_twisted_runs_without_it(self):
        self.assertEqual(probe({"http": "tcp:8080"}), "True False")

    def test_a_tls_option_keeps_it(self):
        self.assertEqual(probe({"http": "ssl:8443"}), "False True")
        self.assertEqual(probe({}, {"MATHRUN_TLS": "1"}), "False True")
