"""`failover probe`: a prober at its own vantage point, feeding the orchestrator over NATS."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

from orchestrator.bus.client import Bus
from orchestrator.bus.state import StateStore
from orchestrator.core.config import Config
from orchestrator.core.errors import PermanentError
from orchestrator.probes.prober import Prober

log = structlog.get_logger(__name__)


async def run_prober(config: Config, vantage: str | None) -> None:
    if config.nats.url is None:
        raise PermanentError("a stand-alone prober needs nats.url: it reports to the orchestrator's NATS")
    bus = await Bus.connect(config.nats, config.state_path, name=f"failover-probe-{vantage or ''}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await bus.ensure_topology()  # idempotent; the KV holds the scale baselines kube_workload needs
        await Prober(config, bus.publish, vantage=vantage, baseline=StateStore(bus).original_scale).run(stop)
    finally:
        await bus.close()
