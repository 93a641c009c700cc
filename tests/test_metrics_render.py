"""`/metrics` is rendered off the event loop, once for concurrent scrapers (issue 19): a Prometheus
scrape of a large fleet (471 ms of rendering at 10,000 clusters) must not stall the API, detection or
lease renewals. Checked by ordering and by counts, never by time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from orchestrator.api.context import ApiContext
from orchestrator.api.server import ApiServer, build_app
from orchestrator.core.config import load_config
from orchestrator.core.metrics import Metrics


class SlowCollector(Collector):
    """A collector that holds the render until released (or 5 s pass), noting the thread it ran on."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.threads: list[int] = []
        self.released_in_time: list[bool] = []

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """Names without collecting: registering must not run (and hold) `collect`."""
        yield GaugeMetricFamily("failover_test_slow", "a collector that takes its time")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.threads.append(threading.get_ident())
        self.entered.set()
        self.released_in_time.append(self.release.wait(5))
        yield GaugeMetricFamily("failover_test_slow", "a collector that takes its time", value=1)


async def test_a_slow_scrape_does_not_stall_the_api_and_concurrent_scrapes_share_one_render(
    tmp_path: Path,
) -> None:
    """Before: `generate_latest` ran in the handler, on the loop: while it rendered, /healthz could not
    answer (the collector here would have timed out before /healthz got its turn)."""
    config_path = tmp_path / "failover.yaml"
    config_path.write_text(
        "clusters:\n  - {name: solo, probes: [{name: ingress, tcp: {host: 127.0.0.1, port: 1}}]}\n"
    )
    metrics = Metrics()
    slow = SlowCollector()
    metrics.registry.register(slow)
    ctx = ApiContext(
        load_config(config_path),
        metrics,
        readiness=lambda: {"nats": True, "detector": True},
        status=lambda: {"ready": True, "clusters": {}, "frozen": False},
    )
    server = ApiServer(build_app(ctx), "127.0.0.1", 0)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{server.port}"

            async def scrape() -> str:
                async with session.get(base + "/metrics") as resp:
                    assert resp.status == 200
                    return await resp.text()

            scrapes = [asyncio.ensure_future(scrape()) for _ in range(3)]
            for _ in range(500):  # bounded: until the render has started
                if slow.entered.is_set():
                    break
                await asyncio.sleep(0.01)
            assert slow.entered.is_set()
            async with session.get(base + "/healthz") as resp:
                assert resp.status == 200  # answered while the render is still held
            slow.release.set()
            bodies = await asyncio.gather(*scrapes)
    finally:
        await server.stop()
    assert slow.released_in_time == [True], "the API answered during the render"
    assert slow.threads[0] != threading.get_ident(), "rendered off the loop thread"
    assert len(slow.threads) == 1, "three concurrent scrapes, one render"
    assert all("failover_test_slow 1.0" in body for body in bodies)
