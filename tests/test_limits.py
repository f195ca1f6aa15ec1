"""Limit arithmetic: capping and the jail's rlimit arguments."""

import math
from dataclasses import fields

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from mathrun.sandbox.limits import Limits

value = st.one_of(st.none(), st.integers(1, 1 << 40))
limits = st.builds(Limits, **{f.name: value for f in fields(Limits)})


def parse_args(args):
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    return {k: int(v) for k, v in pairs.items()}


class LimitsTests(unittest.TestCase):
    def test_rejects_nonsense(self):
        for bad in (0, -1, float("nan"), float("inf")):
            self.assertRaises(ValueError, Limits, cpu_seconds=bad)
        self.assertRaises(TypeError, Limits, memory_bytes="1G")
        self.assertRaises(TypeError, Limits, processes=True)

    @given(limits, limits)
    def test_capped_never_exceeds_either(self, mine, cap):
        capped = mine.capped_by(cap)
        for f in fields(Limits):
            got, asked, maximum = (getattr(x, f.name) for x in (capped, mine, cap))
            if maximum is None:
                self.assertEqual(got, asked)
            else:
                self.assertIsNotNone(got)
                self.assertLessEqual(got, maximum)
                if asked is not None:
                    self.assertEqual(got, min(asked, maximum))

    @given(limits, st.booleans())
    def test_jail_args_carry_each_limit(self, lim, in_cgroup):
        args = parse_args(lim.jail_args(memory_in_cgroup=in_cgroup))
        self.assertEqual(args.get("--cpu"), None if lim.cpu_seconds is None else math.ceil(lim.cpu_seconds))
        self.assertEqual(args.get("--fsize"), lim.file_size_bytes)
        self.assertEqual(args.get("--nofile"), lim.open_files)
        self.assertEqual(args.get("--nproc"), lim.processes)
        candidates = [lim.address_space_bytes]
        if not in_cgroup:
            candidates.append(lim.memory_bytes)
        candidates = [c for c in candidates if c is not None]
        self.assertEqual(args.get("--as"), min(candidates) if candidates else None)

    def test_fractional_cpu_rounds_up(self):
        self.assertEqual(parse_args(Limits(cpu_seconds=0.2).jail_args(True))["--cpu"], 1)
        self.assertEqual(parse_args(Limits(cpu_seconds=2.5).jail_args(True))["--cpu"], 3)
