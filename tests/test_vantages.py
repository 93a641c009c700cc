"""Several probers at different vantage points feed one orchestrator over a real nats-server.

Each vantage reaches each cluster through its own TCP proxy, so a test can cut one vantage off from one
cluster without touching the cluster. One prober of the three runs as a real `failover probe` process.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core import subjects
from orchestrator.core.config import load_config
from orchestrator.core.config_daemon import NatsConfig
from orchestrator.probes.prober import Prober
from orchestrator.runtime.daemon import Daemon
from orchestrator.sandbox.proxy import TcpProxy
from tests.daemons import DaemonProcess
from tests.helpers import Fleet, fleet, hook_receiver, wait_for, write_config

pytestmark = pytest.mark.timeout(90)

VANTAGES = ("v1", "v2", "v3")
PROBING = "{interval: 200ms, timeout: 150ms, jitter: 20ms}"
DETECTION = (
    "{failure_threshold: 3, success_threshold: 2, recovery_hold: 1s, stale_after: 2s,"
    " vantages: [v1, v2, v3]}"  # quorum: majority (of the three)
)


class Vantages:
    def __init__(self, f: Fleet) -> None:
        self.proxies = {
            (v, c): TcpProxy(free_port(), "127.0.0.1", app.port)
            for v in VANTAGES
            for c, app in f.apps.items()
        }

    def config_text(self, base: str, vantage: str, f: Fleet) -> str:
        text = base
        for cluster, app in f.apps.items():  # each vantage reaches each cluster through its own path
            text = text.replace(app.url, self.proxies[(vantage, cluster)].url)
        return text.replace("probing: {", f"probing: {{vantage: {vantage}, ")


@asynccontextmanager
async def setup(tmp_path: Path, nats: EmbeddedNats, haproxy_binary: str) -> AsyncIterator[dict[str, Any]]:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        vantages = Vantages(f)
        for proxy in vantages.proxies.values():
            await proxy.start()
        base = write_config(tmp_path, f, hook.url, nats_url=nats.url, probing=PROBING, detection=DETECTION)
        daemon = Daemon(load_config(base), run_probes=False)
        stop = asyncio.Event()
        bus = await Bus.connect(NatsConfig(url=nats.url), tmp_path, name="test-probers")
        events: list[dict[str, Any]] = []

        async def on_event(msg: Any) -> None:
            events.append(json.loads(msg.data))

        await bus.subscribe(subjects.EVENTS_ALL, on_event)
        tasks = [asyncio.create_task(daemon.run(stop))]
        configs = {}
        for v in VANTAGES:
            path = tmp_path / f"{v}.yaml"
            path.write_text(vantages.config_text(base.read_text(), v, f))
            configs[v] = path
        for v in ("v1", "v2"):  # in-process probers
            tasks.append(asyncio.create_task(Prober(load_config(configs[v]), bus.publish).run(stop)))
        prober = DaemonProcess(configs["v3"], tmp_path / "v3.log", name="v3", command=("probe",))
        await prober.start("--vantage", "v3")  # and a real stand-alone prober process
        try:
            await asyncio.wait_for(daemon.ready.wait(), 20)
            yield {"fleet": f, "vantages": vantages, "daemon": daemon, "events": events}
        finally:
            stop.set()
            assert await prober.stop(20) == 0
            await asyncio.gather(*tasks)
            await bus.close()
            for proxy in vantages.proxies.values():
                await proxy.stop()


async def all_healthy(daemon: Daemon) -> bool:
    assert daemon.detection is not None
    return set(daemon.detection.cluster_view().values()) == {"healthy"}


async def test_one_vantage_cut_off_from_a_cluster_does_not_fail_it(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with setup(tmp_path, nats_server, haproxy_binary) as env:
        daemon, f = env["daemon"], env["fleet"]
        await wait_for(lambda: all_healthy(daemon), 15, "all clusters healthy from three vantages")
        await env["vantages"].proxies[("v1", "us-east")].refuse()
        await asyncio.sleep(2.5)  # > 10 rounds: v1 alone sees us-east failing the whole time
        assert daemon.detection.cluster_view()["us-east"] == "degraded"
        assert await f.weights() == {"eu-west": 100, "us-east": 100, "ap-south": 100}
        assert "cluster.failed" not in [e["type"] for e in env["events"]]
        degraded = next(e for e in env["events"] if e["type"] == "cluster.degraded")
        assert set(degraded["evidence"]["failing"]) == {"v1"} and degraded["evidence"]["quorum"] == 2


async def test_two_vantages_cut_off_from_a_cluster_fail_it(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with setup(tmp_path, nats_server, haproxy_binary) as env:
        daemon, f = env["daemon"], env["fleet"]
        await wait_for(lambda: all_healthy(daemon), 15, "all clusters healthy from three vantages")
        await env["vantages"].proxies[("v1", "us-east")].refuse()
        await env["vantages"].proxies[("v3", "us-east")].blackhole()  # the subprocess prober times out

        async def drained() -> bool:
            return (await f.weights())["us-east"] == 0

        await wait_for(drained, 10, "us-east drained")
        failed = next(e for e in env["events"] if e["type"] == "cluster.failed")
        assert failed["cluster"] == "us-east" and set(failed["evidence"]["failing"]) == {"v1", "v3"}
        assert "timeout" in json.dumps(failed["evidence"]["failing"]["v3"])

        for v in ("v1", "v3"):
            await env["vantages"].proxies[(v, "us-east")].restore()

        async def restored() -> bool:
            return (await f.weights())["us-east"] == 100 and not daemon.runner.active

        await wait_for(restored, 30, "us-east restored")
