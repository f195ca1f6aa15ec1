"""mathrun as an installed package: build the wheel, install it into a new
venv in a temporary directory, run its set-up step (``mathrun-setup``), and
serve from there, outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

from twisted.trial import unittest

from .helpers import ROOT, USER_PREFIX, server_args
from .test_twistd import PROJECT, free_port

# Build products and caches of a checkout: not part of what is packaged.
IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".build",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "_trial_temp",
    ".hypothesis",
    ".pytest_cache",
    ".ruff_cache",
    "node_modules",
    "artifacts",
    "mathrun-jail",
    "mathrun-spawn",
    "libmathrun-fork.so",
    "seccomp-gen",
)


# The page's bundle, where the set-up step could make it (it needs npm).
BUNDLE = [n for n in ("app.js",) if os.path.exists(os.path.join(PROJECT, "web", "static", n))]


def run(argv, timeout, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    done = subprocess.run(argv, timeout=timeout, text=True, **kwargs)
    if done.returncode != 0:
        raise AssertionError(f"{argv[:3]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


class WheelTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        """One wheel and one venv for the class: building and installing take ~20 s."""
        cls.dir = tempfile.mkdtemp(prefix="mathrun-wheel-")
        try:
            src, dist = os.path.join(cls.dir, "src"), os.path.join(cls.dir, "dist")
            shutil.copytree(PROJECT, src, ignore=IGNORE)
            # The checkout venv's setuptools and wheel (pinned in requirements.txt).
            pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
            run(pip + ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, src], 120)
            (cls.wheel,) = [os.path.join(dist, n) for n in os.listdir(dist) if n.endswith(".whl")]
            cls.venv = os.path.join(cls.dir, "venv")
            run(["/usr/bin/python3", "-m", "venv", cls.venv], 120)
            requirements = os.path.join(PROJECT, "requirements.txt")
            run([cls.bin("pip"), "install", "-q", "--disable-pip-version-check", "-c", requirements, cls.wheel], 300)
            # Its own job users: the suite's (the set-up step skips users that exist).
            cls.setup_output = run([cls.bin("mathrun-setup"), "--user-prefix", USER_PREFIX, "--job-users", "4"], 300)
        except BaseException:
            shutil.rmtree(cls.dir, True)
            raise

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, True)

    @classmethod
    def bin(cls, name) -> str:
        return os.path.join(cls.venv, "bin", name)

    def env(self) -> dict:
        """No trace of the checkout: not its venv, not its sources."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = os.path.join(self.venv, "bin") + ":/usr/local/bin:/usr/bin:/bin"
        return env

    def test_wheel_carries_the_sources_not_the_build(self):
        names = set(zipfile.ZipFile(self.wheel).namelist())
        for name in (
            "mathrun/_data/ext/Makefile",
            "mathrun/_data/ext/jail.c",
            "mathrun/_data/ext/maxima-fork.c",
            "mathrun/_data/lisp/mathrun-mother.lisp",
            "mathrun/_data/scripts/setup.sh",
            "mathrun/_data/scripts/save-maxima-core.sh",
            "mathrun/_data/web/static/index.html",
            "twisted/plugins/mathrun_plugin.py",
        ) + tuple(f"mathrun/_data/web/static/{n}" for n in BUNDLE):
            self.assertIn(name, names)
        for built in ("jail-seccomp-bpf.h", "mathrun-jail", "mathrun-spawn", "libmathrun-fork.so"):
            self.assertNotIn(f"mathrun/_data/ext/{built}", names)

    def test_installed_package_finds_its_data_and_helpers(self):
        """Package data for the Lisp, the set-up's state directory for the
        helpers (built there), never the checkout."""
        code = (
            "import mathrun, mathrun.sandbox.sandbox as s, mathrun.maxima.config as m;"
            "print(mathrun.__file__); print(s.DEFAULT_JAIL); print(s.DEFAULT_SPAWN); print(m.FORK_LIBRARY);"
            "print(m.MOTHER_LISP); print(m.DEFAULT_CORE)"
        )
        out = run([self.bin("python"), "-c", code], 60, cwd=self.dir, env=self.env()).stdout.split()
        package, jail, spawn, fork, lisp, core = out
        site = os.path.dirname(os.path.dirname(package))
        state = os.path.join(self.venv, "var", "mathrun", "ext")
        self.assertTrue(package.startswith(self.venv), package)
        self.assertEqual(
            [jail, spawn, fork],
            [os.path.join(state, n) for n in ("mathrun-jail", "mathrun-spawn", "libmathrun-fork.so")],
        )
        for helper in (jail, spawn, fork):
            self.assertTrue(os.access(helper, os.X_OK), helper)
        self.assertEqual(lisp, os.path.join(site, "mathrun", "_data", "lisp", "mathrun-mother.lisp"))
        # The same Lisp as the checkout's, so the same (shared) mother core.
        from mathrun.maxima.config import DEFAULT_CORE

        self.assertEqual(core, DEFAULT_CORE)

    def test_jail_option_points_elsewhere(self):
        """``--jail``: a server whose helpers are not there refuses to start."""
        elsewhere = os.path.join(self.dir, "nowhere", "mathrun-jail")
        args = [self.bin("twistd"), "-n", "--pidfile=", "mathrun", "--no-why3", "--no-maxima", "--no-asy"]
        args += ["--http", f"tcp:{free_port()}:interface=127.0.0.1", "--jail", elsewhere] + self.job_args()
        done = subprocess.run(args, cwd=self.dir, env=self.env(), capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 1, done.stdout)
        self.assertIn(f"sandbox helper {elsewhere} is missing: run the set-up step", done.stdout)

    def job_args(self) -> list[str]:
        args = ["--jobs", "3"] + server_args()
        return args if ROOT else args + ["--job-root", os.path.join(self.dir, "jobs")]

    def test_serves_maxima_and_asy_outside_the_checkout(self):
        cwd = tempfile.mkdtemp(dir=self.dir)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args = [self.bin("twistd"), "-n", "--pidfile=", "mathrun", "--http", f"tcp:{port}:interface=127.0.0.1"]
        args += ["--no-why3", "--asy-local", "1", "--maxima-ready", "1"] + self.job_args()
        with open(os.path.join(cwd, "twistd.log"), "wb") as log:
            proc = subprocess.Popen(args, cwd=cwd, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        self.wait_healthy(url, proc, cwd)
        client = [self.bin("mathrun")]
        out = run(client + ["maxima", "--url", url, "integrate(x^2,x);"], 60, cwd=cwd, env=self.env()).stdout
        self.assertEqual(out.split(), ["3", "x", "--", "3"])
        with open(os.path.join(cwd, "pic.asy"), "w") as f:
            f.write("draw(unitcircle);")
        run(client + ["asy", "--url", url, "-q", "pic.asy"], 60, cwd=cwd, env=self.env())
        with open(os.path.join(cwd, "pic.svg"), "rb") as f:
            self.assertIn(b"<svg", f.read())
        # The page, from the package data: the checkout's files, bundle included.
        for path, name in [("/", "index.html")] + [(f"/static/{n}", n) for n in BUNDLE]:
            with (
                urllib.request.urlopen(url + path, timeout=30) as r,
                open(os.path.join(PROJECT, "web", "static", name), "rb") as f,
            ):
                self.assertEqual(r.read(), f.read())
        proc.terminate()
        proc.wait(timeout=30)
        with open(os.path.join(cwd, "twistd.log")) as f:
            log = f.read()
        self.assertIn(f"job {USER_PREFIX + '-' if ROOT else 'self-'}", log)
        self.assertIn("Server Shut Down", log)

    def wait_healthy(self, url, proc, cwd):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        with open(os.path.join(cwd, "twistd.log")) as f:
            self.fail("the installed server did not answer /health:\n" + f.read())
