"""cgroup handling, on a fake v2 tree (this host has v1) and on the real host."""

import os

from twisted.trial import unittest

from mathrun.sandbox import cgroups

from .helpers import temp_dir


def fake_v2(testcase, controllers="cpu memory pids"):
    root = temp_dir(testcase)
    with open(os.path.join(root, "cgroup.controllers"), "w") as f:
        f.write(controllers + "\n")
    open(os.path.join(root, "cgroup.subtree_control"), "w").close()
    return root


def seed(slot_dir, events="oom 0\noom_kill 0\n"):
    for name, text in [("memory.events", events), ("memory.peak", "0"), ("memory.max", "max"), ("pids.max", "max")]:
        with open(os.path.join(slot_dir, name), "w") as f:
            f.write(text)


class V2Tests(unittest.TestCase):
    def test_detect_and_limits(self):
        root = fake_v2(self)
        cg = cgroups.detect(root)
        self.assertEqual(
            (cg.version, cg.memory_root, cg.pids_root),
            (2, os.path.join(root, "mathrun"), os.path.join(root, "mathrun")),
        )
        with open(os.path.join(root, "mathrun", "cgroup.subtree_control")) as f:
            self.assertEqual(f.read(), "+memory +pids")
        os.makedirs(os.path.join(root, "mathrun", "u1"))
        seed(os.path.join(root, "mathrun", "u1"))
        slot = cg.slot("u1")
        self.assertEqual(slot.dirs, [os.path.join(root, "mathrun", "u1")] * 2)
        slot.prepare(1 << 20, 10)
        with open(os.path.join(slot.memory_dir, "memory.max")) as f:
            self.assertEqual(f.read(), str(1 << 20))
        with open(os.path.join(slot.memory_dir, "pids.max")) as f:
            self.assertEqual(f.read(), "10")
        self.assertFalse(slot.oom_killed())
        seed(slot.memory_dir, "oom 1\noom_kill 1\n")
        self.assertTrue(slot.oom_killed())
        self.assertFalse(slot.oom_killed())  # counted once, for the job it happened in

    def test_no_memory_controller(self):
        self.assertIsNone(cgroups.detect(fake_v2(self, "cpu pids")))

    def test_nothing_at_all(self):
        self.assertIsNone(cgroups.detect(temp_dir(self)))


class HostTests(unittest.TestCase):
    def test_host(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root")
        cg = cgroups.detect()
        if cg is None:
            raise unittest.SkipTest("this host offers no memory cgroup")
        slot = cg.slot("mathrun-test")
        self.addCleanup(lambda: [os.rmdir(d) for d in set(slot.dirs)])
        slot.prepare(64 << 20, 16)
        self.assertFalse(slot.oom_killed())
        self.assertIsInstance(slot.peak_memory(), int)
