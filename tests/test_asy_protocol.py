"""Framing and option parsing of the Asymptote protocols (pure)."""

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from mathrun.asy.protocol import (
    FileEntry,
    Message,
    ProtocolError,
    Reassembler,
    RunOptions,
    encode,
    parse_add,
    parse_options,
    parse_text,
    parse_timeout_update,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


class FramingTests(unittest.TestCase):
    @given(st.sampled_from(["add", "options", "run", "queue", "complete", "missing"]), json_values)
    def test_round_trip(self, verb, body):
        message = parse_text(encode(verb, body))
        self.assertEqual(message.verb, verb)
        self.assertEqual(message.body, json.loads(json.dumps(body)))

    @given(st.binary(max_size=100), st.booleans())
    def test_reassembler_never_crashes(self, data, binary):
        frames = Reassembler(50)
        try:
            frames.feed(data, binary)
        except ProtocolError:
            pass

    def test_payload_pairs(self):
        frames = Reassembler(10)
        self.assertIsNone(frames.feed(b'add {"filename": "a.asy"}', False))
        self.assertEqual(frames.feed(b"xyz", True), Message("add", {"filename": "a.asy"}, b"xyz"))
        self.assertEqual(frames.feed(b"run", False), Message("run"))
        self.assertRaises(ProtocolError, frames.feed, b"stray", True)
        frames.feed(b"input", False)
        self.assertRaises(ProtocolError, frames.feed, b"run", False)
        small = Reassembler(2)
        small.feed(b"input", False)
        e = self.assertRaises(ProtocolError, small.feed, b"abc", True)
        self.assertIn("larger than 2 bytes", str(e))
        # A restore needs no payload.
        self.assertEqual(Reassembler(10).feed(b'add {"restore": true}', False), Message("add", {"restore": True}))

    def test_bad_text(self):
        for text in ("", "{}", "add {", "a-b", "x" * 70000):
            self.assertRaises(ProtocolError, parse_text, text)


class ValidationTests(unittest.TestCase):
    def test_add(self):
        self.assertEqual(parse_add({"filename": "main.asy", "main": True}), FileEntry("main.asy", True))
        for body in (
            {"filename": "../a.asy"},
            {"filename": "a.txt"},
            {"filename": "a.asy", "main": 1},
            [],
            {"filename": "/a.asy"},
        ):
            self.assertRaises(ProtocolError, parse_add, body)
        self.assertRaises(ProtocolError, parse_add, {"filename": "a.asy"}, require_hash=True)
        self.assertRaises(ProtocolError, parse_add, {"filename": "a.asy", "hash": "ABC"})

    @given(
        st.dictionaries(
            st.sampled_from(["interactive", "timeout", "format", "stderr", "verbosity", "other"]), json_values
        )
    )
    def test_options_are_either_valid_or_refused(self, body):
        try:
            options = parse_options(body, RunOptions())
        except ProtocolError:
            return
        self.assertIn(options.format, ("svg", "pdf", "png"))
        self.assertIn(options.stderr, ("stdout", "separate"))
        self.assertIn(options.verbosity, range(4))
        self.assertTrue(options.timeout is None or (isinstance(options.timeout, int) and options.timeout > 0))

    def test_queue_timeouts(self):
        allowed = (3000, 10000, 30000, None)
        for t in allowed:
            self.assertEqual(parse_options({"timeout": t}, RunOptions(), allowed).timeout, t)
        self.assertRaises(ProtocolError, parse_options, {"timeout": 2999}, RunOptions(), allowed)

    def test_timeout_update(self):
        self.assertEqual(parse_timeout_update({"timeout": 500}), 500)
        for body in ({"timeout": 0}, {"timeout": True}, {"format": "svg"}, {"timeout": 1, "x": 2}):
            self.assertRaises(ProtocolError, parse_timeout_update, body)
