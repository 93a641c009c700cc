"""`failover probe`: a prober at its own vantage point, feeding the orchestrator over NATS."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

from orchestrator.bus.client import Bus
from orchestrator.bus.state import StateStore
from orchestrator.core.config import Config
from orchestrator.core.config_clusters import VANTAGE_RE
from orchestrator.core.errors import PermanentError
from orchestrator.probes.prober import Prober

log = structlog.get_logger(__name__)


async def run_prober(config: Config, vantage: str | None) -> None:
    if config.nats.url is None:
        raise PermanentError("a stand-alone prober needs nats.url: it reports to the orchestrator's NATS")
    name = vantage or config.probing.vantage
    if not VANTAGE_RE.match(name):
        raise PermanentError(
            f"--vantage {name!r}: letters, digits, '-' and '_' only (one NATS subject token)"
        )
    if name not in config.counted_vantages:
        log.warning(
            "probe.vantage_not_counted",
            vantage=name,
            vantages=config.counted_vantages,
            hint="the orchestrator drops these reports: add this vantage to detection.vantages",
        )
    bus = await Bus.connect(config.nats, config.state_path, name=f"failover-probe-{vantage or ''}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await bus.ensure_topology()  # idempotent; the KV holds the scale baselines kube_workload needs
        await Prober(config, bus.publish_live, vantage=name, baseline=StateStore(bus).original_scale).run(
            stop
        )
    finally:
        await bus.close()
