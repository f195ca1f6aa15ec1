"""The ``twistd mathrun`` command line, and the configuration file behind it.

Every option can also be given in an ini file (``--config FILE``), in a
``[mathrun]`` section, by its long name (``http = tcp:8080``, ``no-why3 =
true``).  The command line wins over the file, the file over the defaults.
"""

from __future__ import annotations

import configparser
import os
import sys

from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import AuthOptionMixin
from twisted.python import usage

from . import __version__
from .asy.config import DEFAULT_ORIGINS, AsyConfig, RunnerConfig
from .maxima.config import DEFAULT_CORE, MaximaConfig
from .sandbox import SandboxConfig
from .sandbox.limits import Limits, MiB
from .sandbox.sandbox import DEFAULT_JAIL

# The defaults are the configuration classes' own, stated there once.
_ASY, _MAXIMA, _LIMITS, _SANDBOX = AsyConfig(), MaximaConfig(), Limits(), SandboxConfig()
WHY3_JOBS = 2  # twistd's Why3 server runs two provers at once (the standalone server one, as why3server)


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


# -- Access (issue 13): a limit that 0 switches off.
def _count(value):
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 (off) or more")
    return number


_count.coerceDoc = "A whole number, 0 for no limit."

DEFAULT_RUN_DIR = "/run/mathrun"


class Options(AuthOptionMixin, usage.Options):
    """The options of ``twistd mathrun``, from the command line over an ini file."""

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
        # -- the per-slot keeper (issue 9/14 speed work) --
        ["no-job-keeper", None, "Root mode: fork each job afresh into its cgroups and namespaces (no slot keeper)."],
        # -- twistd's own cost (issue 10, front-end speed and memory) --
        [
            "twisted-reactor",
            None,
            "Run on Twisted's epoll reactor (or twistd --reactor's), not mathrun's (mathrun/reactor.py).",
        ],
        [
            "no-lean-http",
            None,
            "Answer every HTTP request through twisted.web (not Maxima's plain requests on the lean channel).",
        ],
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
        ["why3-jobs", None, WHY3_JOBS, "Provers run at once by the Why3 server (its -j).", _positive_int],
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
            ",".join(DEFAULT_ORIGINS),
            "Comma-separated origins allowed to open /asy from a browser (patterns with *; '*' for any).",
        ],
        ["asy-max-connections", None, _ASY.max_connections, "Open /asy connections at most.", _positive_int],
        [
            "asy-max-image",
            None,
            RunnerConfig.max_image / MiB,
            "Images of one Asymptote run together, in MiB, on every hop (runner, back end, queue, browser).",
            _positive_float,
        ],
        ["maxima-core", None, DEFAULT_CORE, "The Maxima mother core (made by the set-up step)."],
        ["maxima-ready", None, _MAXIMA.ready, "Forked Maxima children kept ready for requests.", _positive_int],
        [
            "maxima-max-timeout",
            None,
            _MAXIMA.max_timeout_ms,
            "Longest Maxima timeout a request may ask for, in ms.",
            _positive_int,
        ],
        [
            "maxima-heap",
            None,
            _MAXIMA.heap_mib,
            "The Maxima mother's heap (SBCL --dynamic-space-size), in MiB.",
            _positive_int,
        ],
        [
            "maxima-memory",
            None,
            _MAXIMA.memory_bytes // MiB,
            "Memory of one Maxima job (with gnuplot), in MiB (cgroups).",
            _positive_int,
        ],
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
        [
            "maxima-queue-wait",
            None,
            _MAXIMA.queue_wait,
            "Seconds a Maxima request may wait for a child.",
            _positive_float,
        ],
        [
            "maxima-max-waiting",
            None,
            _MAXIMA.max_waiting,
            "Maxima requests that may wait at once (then 503).",
            _positive_int,
        ],
        [
            "maxima-max-input",
            None,
            _MAXIMA.max_input_bytes // 1024,
            "Largest Maxima input, in KiB (then 413).",
            _positive_int,
        ],
        ["maxima-output-limit", None, _MAXIMA.output_bytes / MiB, "Output of one Maxima job, in MiB.", _positive_float],
        ["jobs", "j", _SANDBOX.jobs, "Job users (mathrun-1 .. mathrun-N) shared by all front ends.", _positive_int],
        ["user-prefix", None, _SANDBOX.user_prefix, "Job users are named PREFIX-1 .. PREFIX-N."],
        ["helper-user", None, _SANDBOX.helper_user, "Unprivileged user that owns no process (used to kill jobs)."],
        ["job-root", None, None, "Directory of the per-job workspaces (default /run/mathrun/jobs)."],
        [
            "cpu-limit",
            None,
            _LIMITS.cpu_seconds,
            "CPU seconds of a job whose front end sets no limit (the health probe).",
            _positive_float,
        ],
        [
            "wall-limit",
            None,
            _LIMITS.wall_seconds,
            "Wall-clock seconds of a job whose front end sets no limit.",
            _positive_float,
        ],
        [
            "memory-limit",
            None,
            _LIMITS.memory_bytes / MiB,
            "Memory of a job whose front end sets no limit, in MiB.",
            _positive_float,
        ],
        [
            "output-limit",
            None,
            _LIMITS.output_bytes / MiB,
            "Output (stdout+stderr) of a job whose front end sets no limit, in MiB.",
            _positive_float,
        ],
        [
            "workspace-limit",
            None,
            _LIMITS.workspace_bytes / MiB,
            "Size of a job's workspace (and its /tmp), in MiB.",
            _positive_float,
        ],
        ["processes-limit", None, _LIMITS.processes, "Processes a job may run at once.", _positive_int],
        # -- the web page and the Asymptote render cache (issue 12) --
        [
            "web-static",
            None,
            None,
            "Directory of the page served at / and /static/ (default: the checkout's web/static).",
        ],
        [
            "asy-render-cache",
            None,
            256,
            "Renders the Asymptote queue keeps to answer repeats (0: no render cache).",
            int,
        ],
        ["asy-render-cache-mb", None, 64.0, "Bytes of those renders together, in MiB.", float],
        ["asy-render-cache-seconds", None, 600.0, "Seconds a render is kept after it ran.", float],
        # -- installed package: where the built C helpers are --------------
        [
            "jail",
            None,
            DEFAULT_JAIL,
            "The built jail helper mathrun-jail; mathrun-spawn and libmathrun-fork.so are taken from its "
            "directory (default: the checkout's ext/, or an installed package's mathrun-setup state directory).",
        ],
        # -- why3 hand-off (issue 14) --
        [
            "why3-control",
            None,
            None,
            "Control socket that mathrun-why3server (started by why3) hands its session to "
            "(default: why3-control.sock beside --why3-socket; 'none': no hand-off).",
        ],
    ]

    # -- Access (issue 13): --auth (AuthOptionMixin), runner tokens, TLS trust, per-client limits.
    supportedInterfaces = (IUsernamePassword,)  # HTTP basic auth hands over a name and a password
    optFlags = optFlags + [
        ["auth-health", None, "With --auth, /health needs credentials too (default: open, for monitors)."],
        ["metrics-open", None, "With --auth, serve /metrics without credentials (default: protected)."],
    ]
    optParameters = optParameters + [
        [
            "asy-runner-token-file",
            None,
            None,
            "File holding the token the Asymptote queue and its runner back ends share (--asy-runner "
            "requires it from the queue, --asy-backends sends it).",
        ],
        ["asy-backends-ca", None, None, "PEM file of CA certificates trusted for wss:// back ends (default: system)."],
        ["maxima-per-client", None, 0, "Maxima requests in progress per client address (then 429); 0: off.", _count],
        ["asy-per-client", None, 0, "Open /asy connections per client address (then denied); 0: off.", _count],
    ]

    def opt_auth_help(self):
        """List the --auth checkers (as --help-auth)."""
        self.opt_help_auth()

    def load_auth(self, path: str, value: str) -> None:
        """``auth`` in the ini file: one checker a line."""
        for line in filter(None, (v.strip() for v in value.splitlines())):
            try:
                self.opt_auth(line)
            except usage.UsageError as e:
                raise usage.UsageError(f"{path}: auth: {e}") from None

    compData = usage.Completions(optActions={"config": usage.CompleteFiles("*.ini"), "job-root": usage.CompleteDirs()})

    def opt_version(self):
        """Print the version and exit."""
        print(f"mathrun {__version__}")
        raise SystemExit(0)

    def opt_unset(self, name):
        """Back to the default for option NAME, whatever the configuration
        file set (how a flag set in the file is turned off)."""
        name = name.removeprefix("--")
        if name not in self.defaults or name == "config":
            raise usage.UsageError(f"--unset: no option {name!r}")
        self[name] = self.defaults[name]

    def parseOptions(self, options=None):
        """The file named by ``--config`` (found by usage's own parser, so
        ``-cFILE`` and ``--config=FILE`` work too) sets its options first;
        the command line is then parsed over them."""
        argv = sys.argv[1:] if options is None else list(options)
        scout = _ConfigScout()
        scout.parseOptions(argv)
        if scout["config"]:
            self.load_config(scout["config"])
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
            if key == "auth":
                self.load_auth(path, value)
            elif key in flags:
                try:
                    self[key] = parser.getboolean("mathrun", key)
                except ValueError:
                    raise usage.UsageError(f"{path}: {key} must be true or false, not {value!r}") from None
            elif key in params and key != "config":
                coerce = params[key][4] if len(params[key]) > 4 else None
                try:
                    self[key] = coerce(value) if coerce else value
                except ValueError as e:
                    raise usage.UsageError(f"{path}: {key}: {e}") from None
            else:
                raise usage.UsageError(f"{path}: unknown option {key!r}")


class _ConfigScout(Options):
    """The same options, parsed only to learn which file ``--config`` names."""

    def parseOptions(self, options=None):
        usage.Options.parseOptions(self, options)

    def opt_help(self):
        """Left to the real parse."""

    def opt_version(self):
        """Left to the real parse."""

    def opt_auth(self, description):
        """Left to the real parse (a checker is made once)."""

    def opt_help_auth(self):
        """Left to the real parse."""

    opt_auth_help = opt_help_auth
