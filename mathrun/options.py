"""The ``twistd mathrun`` command line, and the configuration file behind it.

Every option can also be given in an ini file (``--config FILE``), in a
``[mathrun]`` section, by its long name (``http = tcp:8080``, ``no-why3 =
true``).  The command line wins over the file, the file over the defaults.
"""

from __future__ import annotations

import configparser
import os

from twisted.python import usage

from . import __version__
from .maxima.config import DEFAULT_CORE


def _positive_int(value):
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _positive_float(value):
    number = float(value)
    if not number > 0:
        raise ValueError("must be positive")
    return number


_positive_int.coerceDoc = "A whole number, at least 1."
_positive_float.coerceDoc = "A positive number."

DEFAULT_RUN_DIR = "/run/mathrun"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "mathrun serves Maxima, Asymptote and Why3 to network clients, running every job "
        "as a separate job user in a sandbox.  With no options, every front end is served "
        "on its defaults."
    )

    optFlags = [
        ["no-why3", None, "Do not serve Why3's VC server on the unix socket."],
        ["no-asy", None, "Do not serve the Asymptote queue at /asy."],
        ["no-maxima", None, "Do not serve Maxima at /maxima and /goemaxima."],
        ["no-http", None, "Do not serve the HTTP site (health, metrics and the HTTP front ends)."],
        ["unprivileged", None, "Run jobs as the server's own user (weaker isolation; automatic when not root)."],
        ["job-network", None, "Let jobs use the network (default: none, not even loopback)."],
        ["no-cgroups", None, "Do not use cgroups for memory and process limits."],
        [
            "maxima-quiet",
            None,
            "Answer Maxima requests with the output alone (no REPL labels and prompts, unlike goemaxima).",
        ],
    ]

    optParameters = [
        ["config", "c", None, "Read options from this ini file ([mathrun] section)."],
        ["http", None, "tcp:8080:interface=127.0.0.1", "Endpoint of the HTTP site (a Twisted endpoint string)."],
        ["why3-socket", None, os.path.join(DEFAULT_RUN_DIR, "why3.sock"), "Unix socket of Why3's VC server."],
        ["why3-jobs", None, 2, "Provers run at once by the Why3 server (its -j).", _positive_int],
        [
            "asy-backends",
            None,
            None,
            "Comma-separated ws:// URLs of Asymptote runner back ends (default: local runners).",
        ],
        [
            "asy-local",
            None,
            os.cpu_count() or 1,
            "Local Asymptote runners when no back end URL is given.",
            _positive_int,
        ],
        ["asy-runner", None, None, "Also serve an Asymptote runner back end (WebSocket at /) on this endpoint."],
        [
            "asy-origins",
            None,
            "http://localhost:*,http://127.0.0.1:*,https://localhost:*",
            "Comma-separated origins allowed to open /asy from a browser (patterns with *; '*' for any).",
        ],
        ["asy-max-connections", None, 2048, "Open /asy connections at most.", _positive_int],
        [
            "asy-max-image",
            None,
            32.0,
            "Images of one Asymptote run together, in MiB, on every hop (runner, back end, queue, browser).",
            _positive_float,
        ],
        ["maxima-core", None, DEFAULT_CORE, "The Maxima mother core (made by the set-up step)."],
        ["maxima-ready", None, 3, "Forked Maxima children kept ready for requests.", _positive_int],
        ["maxima-max-timeout", None, 30000, "Longest Maxima timeout a request may ask for, in ms.", _positive_int],
        ["maxima-heap", None, 1024, "The Maxima mother's heap (SBCL --dynamic-space-size), in MiB.", _positive_int],
        ["maxima-memory", None, 1536, "Memory of one Maxima job (with gnuplot), in MiB (cgroups).", _positive_int],
        [
            "maxima-libraries",
            None,
            None,
            "Comma-separated Maxima files loaded into the mother (e.g. STACK's stackmaxima.mac); "
            "entries VERSION=FILE start one mother per version, chosen by the request's version.",
        ],
        ["maxima-packages", None, None, "Comma-separated Maxima packages loaded into the mother."],
        [
            "maxima-stack",
            None,
            None,
            "Comma-separated [VERSION=]DIR: STACK's stack/maxima directory from a STACK install, loaded as "
            "STACK's install helper and goemaxima do, one mother per STACK version (a request's version picks "
            "it; default: the version in DIR's stackmaxima.mac).",
        ],
        [
            "maxima-core-cache",
            None,
            None,
            "Directory of the saved mother cores with the libraries loaded (default: beside the base core "
            "as root, else ~/.cache/mathrun/maxima-cores).",
        ],
        ["maxima-queue-wait", None, 10.0, "Seconds a Maxima request may wait for a child.", _positive_float],
        ["maxima-max-waiting", None, 256, "Maxima requests that may wait at once (then 503).", _positive_int],
        ["maxima-max-input", None, 1024, "Largest Maxima input, in KiB (then 413).", _positive_int],
        ["maxima-output-limit", None, 4.0, "Output of one Maxima job, in MiB.", _positive_float],
        ["jobs", "j", 8, "Job users (mathrun-1 .. mathrun-N) shared by all front ends.", _positive_int],
        ["user-prefix", None, "mathrun", "Job users are named PREFIX-1 .. PREFIX-N."],
        ["helper-user", None, "mathrun", "Unprivileged user that owns no process (used to kill jobs)."],
        ["job-root", None, None, "Directory of the per-job workspaces (default /run/mathrun/jobs)."],
        [
            "cpu-limit",
            None,
            10.0,
            "CPU seconds of a job whose front end sets no limit (the health probe).",
            _positive_float,
        ],
        ["wall-limit", None, 20.0, "Wall-clock seconds of a job whose front end sets no limit.", _positive_float],
        ["memory-limit", None, 512.0, "Memory of a job whose front end sets no limit, in MiB.", _positive_float],
        [
            "output-limit",
            None,
            16.0,
            "Output (stdout+stderr) of a job whose front end sets no limit, in MiB.",
            _positive_float,
        ],
        ["workspace-limit", None, 128.0, "Size of a job's workspace (and its /tmp), in MiB.", _positive_float],
        ["processes-limit", None, 64, "Processes a job may run at once.", _positive_int],
        # -- why3 hand-off (issue 14) --
        [
            "why3-control",
            None,
            None,
            "Control socket that mathrun-why3server (started by why3) hands its session to "
            "(default: why3-control.sock beside --why3-socket; 'none': no hand-off).",
        ],
    ]

    compData = usage.Completions(optActions={"config": usage.CompleteFiles("*.ini"), "job-root": usage.CompleteDirs()})

    def opt_version(self):
        """Print the version and exit."""
        print(f"mathrun {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options=None):
        import sys

        argv = sys.argv[1:] if options is None else list(options)
        path = _config_path(argv)
        if path:
            self.load_config(path)
        super().parseOptions(argv)

    def load_config(self, path: str) -> None:
        """Set options from an ini file (before the command line is read)."""
        parser = configparser.ConfigParser()
        if not parser.read(path):
            raise usage.UsageError(f"cannot read configuration file {path}")
        if not parser.has_section("mathrun"):
            raise usage.UsageError(f"{path}: no [mathrun] section")
        flags = {f[0] for f in self.optFlags}
        params = {p[0]: p for p in self.optParameters}
        for key, value in parser.items("mathrun"):
            if key in flags:
                try:
                    self[key] = parser.getboolean("mathrun", key)
                except ValueError:
                    raise usage.UsageError(f"{path}: {key} must be true or false, not {value!r}") from None
            elif key in params:
                coerce = params[key][4] if len(params[key]) > 4 else None
                try:
                    self[key] = coerce(value) if coerce else value
                except ValueError as e:
                    raise usage.UsageError(f"{path}: {key}: {e}") from None
            else:
                raise usage.UsageError(f"{path}: unknown option {key!r}")


def _config_path(argv: list[str]):
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg.startswith("-c") and not arg.startswith("--") and len(arg) > 2:
            return arg[2:]
    return None
