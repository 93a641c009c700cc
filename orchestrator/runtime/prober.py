"""`failover probe`: a prober at its own vantage point, feeding the orchestrator over NATS."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import structlog

from orchestrator.bus.client import Bus
from orchestrator.bus.natsauth import prober_inbox
from orchestrator.bus.state import read_original_scale
from orchestrator.core.config import Config
from orchestrator.core.config_clusters import VANTAGE_RE
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.probes.prober import Prober

log = structlog.get_logger(__name__)


async def run_prober(config: Config, vantage: str | None, stop: asyncio.Event | None = None) -> None:
    """Probe and publish until SIGTERM/SIGINT (or `stop`, for tests and embedding)."""
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
    nats = config.nats
    if nats.inbox_prefix == "_INBOX":  # a prober's credential may read only its own replies
        nats = nats.model_copy(update={"inbox_prefix": prober_inbox(name)})
    bus = await Bus.connect(nats, config.state_path, name=f"failover-probe-{name}")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        state: list[Any] = []  # the state bucket, once the daemon has created it
        warned: list[bool] = []

        async def baseline(cluster: str, namespace: str, kind: str, workload: str) -> int | None:
            """The scale baselines kube_workload needs, read-only. A prober may start before the
            daemon has created the bucket (they start in any order): it probes at once and reads the
            baselines once the bucket exists; until then the spec alone counts."""
            if not state:
                try:
                    state.append(await bus.state_bucket())
                except TemporaryError as e:
                    if not warned:  # once, not at every probe
                        warned.append(True)
                        log.warning("probe.baselines_unavailable", error=str(e), hint="daemon not up yet?")
                    return None
            return await read_original_scale(state[0], cluster, namespace, kind, workload)

        await Prober(config, bus.publish_live, vantage=name, baseline=baseline).run(stop)
    finally:
        await bus.close()
