"""Options: command line over configuration file over defaults."""

import os
import tempfile

from twisted.python import usage
from twisted.trial import unittest

from mathrun.options import Options
from mathrun.service import sandbox_config


def ini(text):
    fd, path = tempfile.mkstemp(suffix=".ini")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


class OptionsTests(unittest.TestCase):
    def test_defaults(self):
        o = Options()
        o.parseOptions([])
        self.assertEqual(o["http"], "tcp:8080:interface=127.0.0.1")
        self.assertEqual(o["why3-socket"], "/run/mathrun/why3.sock")
        self.assertFalse(o["no-why3"])
        config = sandbox_config(o)
        self.assertEqual(config.limits.memory_bytes, 512 << 20)
        self.assertIsNone(config.privileged)
        self.assertFalse(config.network)

    def test_file_then_command_line(self):
        path = ini("[mathrun]\nhttp = tcp:9999\njobs = 3\nno-why3 = true\nmemory-limit = 64\n")
        self.addCleanup(os.unlink, path)
        o = Options()
        o.parseOptions(["--config", path, "--jobs", "5"])
        self.assertEqual((o["http"], o["jobs"], o["no-why3"]), ("tcp:9999", 5, True))
        self.assertEqual(sandbox_config(o).limits.memory_bytes, 64 << 20)
        o = Options()
        o.parseOptions([f"-c{path}"])
        self.assertEqual(o["http"], "tcp:9999")

    def test_every_spelling_of_config_and_its_value_not_taken_for_it(self):
        path = ini("[mathrun]\nhttp = tcp:9999\n")
        self.addCleanup(os.unlink, path)
        for argv in (["-c", path], [f"-c{path}"], [f"--config={path}"], ["--jobs", "2", "--config", path]):
            o = Options()
            o.parseOptions(argv)
            self.assertEqual(o["http"], "tcp:9999", argv)
        # "-c" inside another option's value is not a configuration file.
        o = Options()
        o.parseOptions(["--user-prefix", "-cfoo"])
        self.assertEqual((o["user-prefix"], o["http"]), ("-cfoo", "tcp:8080:interface=127.0.0.1"))

    def test_a_flag_set_in_the_file_is_turned_off_by_unset(self):
        path = ini("[mathrun]\nno-why3 = true\njobs = 3\n")
        self.addCleanup(os.unlink, path)
        o = Options()
        o.parseOptions(["--config", path, "--unset", "no-why3", "--unset=jobs"])
        self.assertEqual((o["no-why3"], o["jobs"]), (0, 8))
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--unset", "bogus"])

    def test_bad_files(self):
        for text, message in [
            ("[other]\n", "no [mathrun] section"),
            ("[mathrun]\nbogus = 1\n", "unknown option 'bogus'"),
            ("[mathrun]\njobs = 0\n", "jobs"),
            ("[mathrun]\nno-why3 = maybe\n", "true or false"),
        ]:
            path = ini(text)
            self.addCleanup(os.unlink, path)
            e = self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", path])
            self.assertIn(message, str(e))
        e = self.assertRaises(usage.UsageError, Options().parseOptions, ["--config", "/nonexistent.ini"])
        self.assertIn("cannot read", str(e))

    def test_bad_values(self):
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--jobs", "x"])
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--wall-limit", "-1"])


class BacklogTests(unittest.TestCase):
    def test_tcp_endpoints_get_a_burst_sized_backlog(self):
        from mathrun.service import LISTEN_BACKLOG, with_backlog

        self.assertEqual(
            with_backlog("tcp:8080:interface=127.0.0.1"), f"tcp:8080:interface=127.0.0.1:backlog={LISTEN_BACKLOG}"
        )
        self.assertEqual(with_backlog("tcp:8080:backlog=10"), "tcp:8080:backlog=10")
        self.assertEqual(with_backlog("unix:/run/x.sock"), "unix:/run/x.sock")
