"""The HTTP API (DESIGN §8): health, readiness and Prometheus metrics for kubelets and scrapers.

`/healthz` says the process is alive; `/readyz` says it is connected to NATS and its detector is
consuming, so a Service never routes commands to a replica that cannot act. Neither reveals a secret.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.bus import Bus
from orchestrator.commands import Commands
from orchestrator.config import Config
from orchestrator.metrics import Metrics
from orchestrator.playbooks.journal import BusJournal

Readiness = Callable[[], dict[str, Any]]


@dataclass
class ApiContext:
    """Everything the HTTP API reads or calls; built by the runtime."""

    config: Config
    metrics: Metrics
    readiness: Readiness
    status: Callable[[], dict[str, Any]]
    """Daemon status: clusters' states, frozen, suspects, active runs, approvals, playbooks, leader."""
    commands: Commands | None = None
    """Authentication (`authenticate(token, via)`) and every command (`handle(command, args, token, via)`)."""
    journal: BusJournal | None = None
    """Runs: `recent(limit)` and `load(run_id)`."""
    bus: Bus | None = None
    """For the live event stream: subscribe to `failover.events.>` and `failover.runs.>`."""
    weights: Callable[[], Awaitable[dict[str, dict[str, int]]]] | None = None
    """balancer -> cluster -> current native weight (read from the balancers)."""


def build_app(ctx: ApiContext) -> web.Application:
    metrics, readiness = ctx.metrics, ctx.readiness
    app = web.Application()

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        checks = readiness()
        ready = all(bool(v) for k, v in checks.items() if k != "leader")
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics_route(_request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_route)
    return app


class ApiServer:
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        # handle_signals=False: the supervisor owns signals and shutdown order
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            for address in self._runner.addresses:
                self.port = int(address[1])
                break

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
