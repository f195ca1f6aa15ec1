"""Builds the ``twistd mathrun`` service tree from its options.

One sandbox (the job users) is shared by every front end; each front end is
a child service that can be switched off by an option.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry
from twisted.application import service, strports
from twisted.logger import Logger

from . import logformat, paths
from .asy.config import AsyConfig, RunnerConfig
from .interfaces import IFrontEnd
from .metrics import SandboxMetrics
from .sandbox import Limits, Sandbox, SandboxConfig
from .sandbox.limits import MiB
from .web.auth import protect_site
from .web.perclient import limit_maxima
from .web.site import build_site
from .why3.config import Why3Config
from .why3.service import Why3Service

URLENCODED_GROWTH = 3  # "%XX" for a byte
FORM_SLACK = 64 << 10  # the other fields of a Maxima request


class SandboxService(service.Service):
    """Starts the sandbox with the server and kills every job at shutdown."""

    name = "sandbox"

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox

    def startService(self):
        # twistd's log observer exists by now: its job lines cost less this way.
        logformat.speed_up()
        self.sandbox.start()
        super().startService()

    def stopService(self):
        super().stopService()
        if self.sandbox.pool is not None:
            return self.sandbox.stop()


def sandbox_config(options) -> SandboxConfig:
    """The sandbox's settings: job users, where, and the default limits."""
    return SandboxConfig(
        jobs=options["jobs"],
        user_prefix=options["user-prefix"],
        helper_user=options["helper-user"],
        job_root=options["job-root"],
        privileged=False if options["unprivileged"] else None,
        network=bool(options["job-network"]),
        use_cgroups=not options["no-cgroups"],
        keeper=not options["no-job-keeper"],
        jail=options["jail"],
        spawn_server=paths.helper(paths.SPAWN, options["jail"]),
        limits=Limits(
            cpu_seconds=options["cpu-limit"],
            wall_seconds=options["wall-limit"],
            memory_bytes=int(options["memory-limit"] * MiB),
            output_bytes=int(options["output-limit"] * MiB),
            workspace_bytes=int(options["workspace-limit"] * MiB),
            processes=options["processes-limit"],
        ),
    )


LISTEN_BACKLOG = 1024  # Twisted's default (50) resets connections of a burst (exam day)


def with_backlog(endpoint: str) -> str:
    """A TCP or TLS endpoint string with a listen backlog fit for bursts of
    clients, unless the operator set one."""
    kind = endpoint.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in endpoint:
        return f"{endpoint}:backlog={LISTEN_BACKLOG}"
    return endpoint


def _split(value) -> list[str]:
    """The items of a comma-separated option."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def asy_config(options) -> AsyConfig:
    """The Asymptote front end's settings: one image limit for every hop."""
    runner = RunnerConfig.for_images(int(options["asy-max-image"] * MiB))
    return AsyConfig(
        runner=runner,
        backends=tuple(_split(options["asy-backends"])),
        local=options["asy-local"],
        origins=tuple(_split(options["asy-origins"])),
        max_connections=options["asy-max-connections"],
        per_client=options["asy-per-client"],
        token=runner_token(options),
        backends_ca=options["asy-backends-ca"],
        render_cache_entries=options["asy-render-cache"],
        render_cache_bytes=int(options["asy-render-cache-mb"] * MiB),
        render_cache_seconds=options["asy-render-cache-seconds"],
    )


def runner_token(options):
    """The shared queue-runner token (asy/token.py), None without the option."""
    from .asy.token import TokenError, read_token

    path = options["asy-runner-token-file"]
    if not path:
        return None
    try:
        return read_token(path)
    except TokenError as e:
        raise SystemExit(f"mathrun: {e}") from None


def why3_config(options) -> Why3Config:
    """The VC server's settings; its output files go beside its socket."""
    output_dir = os.path.join(os.path.dirname(os.path.abspath(options["why3-socket"])), "why3-output")
    return Why3Config(jobs=options["why3-jobs"], output_dir=output_dir)


def maxima_config(options):
    """The Maxima front end's settings; library entries VERSION=FILE and
    STACK's [VERSION=]DIR make one mother per version."""
    from .maxima.config import MaximaConfig

    libraries, versions = [], {}
    for entry in _split(options["maxima-libraries"]):
        version, sep, path = entry.partition("=")
        if sep:
            versions.setdefault(version.strip(), []).append(path.strip())
        else:
            libraries.append(entry)
    stack = {}
    for entry in _split(options["maxima-stack"]):
        version, sep, path = entry.rpartition("=")
        stack[version.strip()] = path.strip()
    extra = {"core_cache": options["maxima-core-cache"]} if options["maxima-core-cache"] else {}
    return MaximaConfig(
        labels=not options["maxima-quiet"],
        stack=stack,
        **extra,
        core=options["maxima-core"],
        fork_library=paths.helper(paths.FORK_LIBRARY, options["jail"]),
        ready=options["maxima-ready"],
        max_timeout_ms=options["maxima-max-timeout"],
        heap_mib=options["maxima-heap"],
        memory_bytes=options["maxima-memory"] * MiB,
        libraries=libraries,
        packages=_split(options["maxima-packages"]),
        versions=versions,
        queue_wait=options["maxima-queue-wait"],
        max_waiting=options["maxima-max-waiting"],
        max_input_bytes=options["maxima-max-input"] * 1024,
        output_bytes=int(options["maxima-output-limit"] * MiB),
    )


def front_ends(options, sandbox, reactor) -> list:
    """The front-end services the options ask for (each an IFrontEnd)."""
    services = []
    if not options["no-why3"]:
        run_dir = os.path.dirname(os.path.abspath(options["why3-socket"]))
        control = options.get("why3-control") or os.path.join(run_dir, "why3-control.sock")
        why3 = Why3Service(
            sandbox,
            options["why3-socket"],
            why3_config(options),
            reactor,
            control_path=None if control == "none" else control,
        )
        services.append(why3)
    if not options["no-maxima"] and not options["no-http"]:
        from .maxima.service import MaximaService

        maxima = MaximaService(sandbox, maxima_config(options), reactor)
        maxima.resource = limit_maxima(maxima.resource, options["maxima-per-client"])
        services.append(maxima)
    if not options["no-asy"] and not options["no-http"]:
        from .asy.service import AsyService

        services.append(AsyService(sandbox, asy_config(options), reactor))
    return services


def make_service(options, reactor=None) -> service.MultiService:
    """The service tree: the sandbox first, then each front end, the
    Asymptote runner back end and the site (see docs/architecture.md)."""
    if reactor is None:
        from twisted.internet import reactor
    log = Logger(namespace="mathrun")
    top = service.MultiService()
    sandbox = Sandbox(sandbox_config(options), reactor=reactor)
    SandboxService(sandbox).setServiceParent(top)
    registry = CollectorRegistry()
    SandboxMetrics(registry, sandbox)
    resources = []
    for front_end in front_ends(options, sandbox, reactor):
        front_end.setServiceParent(top)
        front_end.register_metrics(registry)
        resources += [(path, front_end.resource) for path in front_end.paths]
    if not options["no-why3"]:
        log.info("Why3 VC server on {path}", path=options["why3-socket"])
    if options["asy-runner"]:
        from .asy.service import runner_service

        config = asy_config(options)
        if config.token is None:
            log.warn(
                "asy runner on {endpoint} without --asy-runner-token-file: any queue that reaches it may use it",
                endpoint=options["asy-runner"],
            )
        runner_service(options["asy-runner"], sandbox, config.runner, config.token).setServiceParent(top)
    if not options["no-http"]:
        from .web.site import default_static_dir

        reports = {s.name: s.snapshot for s in top if IFrontEnd.providedBy(s)}
        static_dir = options["web-static"] or default_static_dir()
        lean = not options.get("no-lean-http")
        site = build_site(sandbox, registry, resources, max_body(options), reports, static_dir, lean=lean)
        if protect_site(site, options):
            opened = ", ".join(sorted("/" + p.decode() for p in site.resource.open_paths)) or "none"
            log.info("HTTP site behind basic auth (open: {paths})", paths=opened)
        http = strports.service(with_backlog(options["http"]), site)
        http.setName("http")
        http.setServiceParent(top)
        log.info("HTTP site on {endpoint}", endpoint=options["http"])
    return top


def max_body(options) -> int:
    """Request bodies: a Maxima input urlencoded (at most 3 bytes a byte),
    and room for the other fields."""
    return URLENCODED_GROWTH * options["maxima-max-input"] * 1024 + FORM_SLACK
