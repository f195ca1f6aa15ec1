"""Builds the ``twistd mathrun`` service tree from its options.

One sandbox (the job users) is shared by every front end; each front end is
a child service that can be switched off by an option.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.application import service, strports
from twisted.logger import Logger

from .metrics import SandboxMetrics
from .sandbox import Limits, Sandbox, SandboxConfig
from .sandbox.limits import MiB
from .web.site import build_site


class SandboxService(service.Service):
    """Starts the sandbox with the server and kills every job at shutdown."""

    name = "sandbox"

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox

    def startService(self):
        self.sandbox.start()
        super().startService()

    def stopService(self):
        super().stopService()
        if self.sandbox.pool is not None:
            return self.sandbox.stop()


def sandbox_config(options) -> SandboxConfig:
    return SandboxConfig(
        jobs=options["jobs"],
        user_prefix=options["user-prefix"],
        helper_user=options["helper-user"],
        job_root=options["job-root"],
        privileged=False if options["unprivileged"] else None,
        network=bool(options["job-network"]),
        use_cgroups=not options["no-cgroups"],
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
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def asy_front_end(options, sandbox, reactor):
    """The /asy queue resource: local runners, or the given back ends."""
    from autobahn.twisted.resource import WebSocketResource

    from .asy.backends import LocalBackend, RemoteBackend
    from .asy.queue import AsyQueue, QueueConfig
    from .asy.queue_ws import QueueFactory
    from .asy.runner_ws import FRAME_SLACK, limit_websocket

    runner_config = asy_runner_config(options)
    urls = _split(options["asy-backends"])
    if urls:
        backends = [
            RemoteBackend(url, reactor, max_image=runner_config.max_image, max_upload=runner_config.max_upload)
            for url in urls
        ]
    else:
        backends = [LocalBackend(sandbox, runner_config, f"local-{n}") for n in range(1, options["asy-local"] + 1)]
    queue_config = QueueConfig(
        max_upload=runner_config.max_upload, max_image=runner_config.max_image, max_files=runner_config.max_files
    )
    factory = QueueFactory(AsyQueue(backends, reactor, queue_config))
    limit_websocket(
        factory,
        queue_config.max_upload + FRAME_SLACK,
        _split(options["asy-origins"]),
        options["asy-max-connections"],
        max_send=queue_config.max_image + FRAME_SLACK,
    )
    return ("asy", WebSocketResource(factory))


def asy_runner_config(options):
    """One image limit for every hop.  The workspace must hold the image and
    asy's intermediate files (EPS, PDF: a raster image's are several times
    its SVG)."""
    from .asy.runner import RunnerConfig

    max_image = int(options["asy-max-image"] * MiB)
    return RunnerConfig(max_image=max_image, workspace_bytes=max(RunnerConfig.workspace_bytes, 4 * max_image))


def asy_runner(options, sandbox) -> service.Service:
    """This host as an Asymptote back end (WebSocket at /), on its own endpoint."""
    from .asy.runner_ws import RunnerFactory

    runner = strports.service(options["asy-runner"], RunnerFactory(sandbox, asy_runner_config(options)))
    runner.setName("asy-runner")
    return runner


def maxima_config(options):
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


def make_service(options, reactor=None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor
    log = Logger(namespace="mathrun")
    top = service.MultiService()
    sandbox = Sandbox(sandbox_config(options), reactor=reactor)
    SandboxService(sandbox).setServiceParent(top)
    registry = CollectorRegistry()
    SandboxMetrics(registry, sandbox)

    if not options["no-why3"]:
        import os

        from .why3.server import Why3Config
        from .why3.service import Why3Service

        run_dir = os.path.dirname(os.path.abspath(options["why3-socket"]))
        output_dir = os.path.join(run_dir, "why3-output")
        control = options.get("why3-control") or os.path.join(run_dir, "why3-control.sock")
        why3 = Why3Service(
            sandbox,
            options["why3-socket"],
            Why3Config(jobs=options["why3-jobs"], output_dir=output_dir),
            reactor,
            control_path=None if control == "none" else control,
        )
        why3.setServiceParent(top)
        log.info("Why3 VC server on {path}", path=options["why3-socket"])

    front_ends = []
    reports = {}
    # Bodies: a Maxima input urlencoded (at most 3 bytes a byte), and room
    # for the other fields.
    max_body = 3 * options["maxima-max-input"] * 1024 + 65536
    if not options["no-maxima"] and not options["no-http"]:
        from .maxima.service import MaximaService

        maxima = MaximaService(sandbox, maxima_config(options), reactor, registry)
        maxima.setServiceParent(top)
        front_ends += [("maxima", maxima.resource), ("goemaxima", maxima.resource)]
        reports["maxima"] = maxima.report
    if not options["no-asy"]:
        front_ends.append(asy_front_end(options, sandbox, reactor))
    if options["asy-runner"]:
        asy_runner(options, sandbox).setServiceParent(top)
    if not options["no-http"]:
        site = build_site(sandbox, registry, front_ends, max_body, reports)
        http = strports.service(with_backlog(options["http"]), site)
        http.setName("http")
        http.setServiceParent(top)
        log.info("HTTP site on {endpoint}", endpoint=options["http"])
    return top
