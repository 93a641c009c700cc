"""Application faults against the daemon as a separate process: crash, black hole, slow, frozen, flapping,
and the default-timings figure with three vantages. Recovery: fault injected -> the real HAProxy holds
the cluster at weight 0 (read back from HAProxy, not from the daemon)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from chaos.conftest import Recorder
from chaos.support import (
    BLACKHOLE_BUDGET_S,
    DETECTION,
    REFUSED_BUDGET_S,
    AppProcess,
    Stack,
    settle,
    stack,
)
from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core.config_clusters import DetectionConfig, ProbingConfig
from tests.daemons import DaemonProcess, stop_all
from tests.helpers import MEMBERS, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]
CLUSTERS = tuple(MEMBERS)


async def restored(s: Stack, cluster: str, timeout_s: float = 15) -> None:
    """Until `cluster` is back at full weight and the daemon has it healthy again."""

    async def full() -> bool:
        return await s.weight(cluster) == 100

    await wait_for(full, timeout_s, f"{cluster} restored", poll_s=0.05)
    s.watch.healthy = set(CLUSTERS)
    await settle(s)


async def test_app_crash(
    nats_server: EmbeddedNats, bus: Bus, haproxy_binary: str, tmp_path: Path, recorder: Recorder
) -> None:
    """App crash (connection refused), one cluster per trial"""
    recorder.budget(REFUSED_BUDGET_S)
    async with stack(tmp_path, nats_server, bus, haproxy_binary) as s:
        await settle(s)
        for cluster in CLUSTERS:  # one failure per cluster: no cluster flaps
            s.watch.healthy = set(CLUSTERS) - {cluster}
            started = time.monotonic()
            await s.fleet.apps[cluster].stop()
            recorder.trial(await s.drained(cluster, started, REFUSED_BUDGET_S))
            assert set(await s.fleet.traffic(20)) == set(CLUSTERS) - {cluster}
            await s.fleet.apps[cluster].start()
            await restored(s, cluster)
            assert len(s.drains(cluster)) == 1, s.counter.commands
        s.watch.check()
        s.alive()
    recorder.note("0 false drains, 1 `set weight 0` per drain")


async def test_app_black_holed(
    nats_server: EmbeddedNats, bus: Bus, haproxy_binary: str, tmp_path: Path, recorder: Recorder
) -> None:
    """App black-holed (accepts, never answers): the probe timeout adds to the budget"""
    recorder.budget(BLACKHOLE_BUDGET_S)
    async with stack(tmp_path, nats_server, bus, haproxy_binary) as s:
        await settle(s)
        for cluster in CLUSTERS:
            s.watch.healthy = set(CLUSTERS) - {cluster}
            started = time.monotonic()
            s.fleet.apps[cluster].slow(5)  # accepted; no answer within any probe timeout
            recorder.trial(await s.drained(cluster, started, BLACKHOLE_BUDGET_S))
            s.fleet.apps[cluster].heal()
            await restored(s, cluster)
            assert len(s.drains(cluster)) == 1, s.counter.commands
        failed = [e for e in s.events if e["type"] == "cluster.failed"]
        assert all("timeout" in str(e.get("evidence", "")).lower() for e in failed), failed
        s.watch.check()
        s.alive()
    recorder.note("0 false drains, 1 `set weight 0` per drain")


async def test_app_slow(
    nats_server: EmbeddedNats, bus: Bus, haproxy_binary: str, tmp_path: Path, recorder: Recorder
) -> None:
    """App slow (over latency_limit, under the probe timeout): degraded and paged, never drained"""
    async with stack(tmp_path, nats_server, bus, haproxy_binary, probe_extra=", latency_limit: 50ms") as s:
        await settle(s)
        started = time.monotonic()
        s.fleet.apps["us-east"].slow(0.1)  # latency_limit 50 ms < 100 ms < timeout 150 ms

        def degraded() -> bool:
            return "cluster.degraded" in s.event_types("us-east")

        await wait_for(degraded, 10, "us-east degraded")
        recorder.trial(time.monotonic() - started)
        await asyncio.sleep(2)  # > 10 rounds over the limit: a slow cluster still serves
        assert "cluster.failed" not in s.event_types("us-east")
        assert s.drains("us-east") == [] and await s.weight("us-east") == 100
        s.fleet.apps["us-east"].heal()
        await settle(s)
        s.watch.check()
        s.alive()
    recorder.note("seconds to cluster.degraded; DESIGN §6: a latency limit degrades, 0 drains")


async def test_app_frozen_for_one_second(
    nats_server: EmbeddedNats, bus: Bus, haproxy_binary: str, tmp_path: Path, recorder: Recorder
) -> None:
    """App frozen for 1 s (SIGSTOP/SIGCONT of its process) at default timings: a blip that drains nothing"""
    # default probing and detection: 1 s rounds, 800 ms timeout, 3 failed rounds to fail
    async with stack(tmp_path, nats_server, bus, haproxy_binary, probing=None, detection=None) as s:
        app = s.fleet.apps["us-east"]
        await app.stop()  # the same port, now served by a process of its own
        process = AppProcess("us-east", app.port)
        try:
            await process.start()
            await settle(s, 30)
            for _ in range(3):
                started = time.monotonic()
                process.signal(signal.SIGSTOP)
                await asyncio.sleep(1.0)
                process.signal(signal.SIGCONT)

                async def serves() -> bool:
                    return "us-east" in await s.fleet.traffic(6)

                await wait_for(serves, 10, "us-east serving again", poll_s=0.05)
                recorder.trial(time.monotonic() - started)
                await asyncio.sleep(3.5)  # past failure_threshold rounds after the thaw
            assert "cluster.failed" not in s.event_types(), s.events
            assert s.drains("us-east") == []
            s.watch.check()
            s.alive()
        finally:
            await process.stop()
    recorder.note("3 freezes; recovery = SIGSTOP -> served again; 0 drains, 0 cluster.failed")


FLAP_DOWN_S, FLAP_PERIOD_S, FLAP_CYCLES = 0.4, 0.8, 10


async def test_app_flapping(
    nats_server: EmbeddedNats, bus: Bus, haproxy_binary: str, tmp_path: Path, recorder: Recorder
) -> None:
    """App flapping (down 0.4 s of every 0.8 s for 8 s: the issue's 2 s of 4 s, scaled): one drain"""
    # 2 failed rounds then 2 good ones: never failure_threshold (3) in a row, half of the rounds failed;
    # the ratio's window scaled like the period (20 s at 1 s rounds -> 4 s at 200 ms)
    detection = DETECTION.replace("}", ", failure_ratio: {threshold: 0.5, window: 4s, min_rounds: 10}}")
    async with stack(tmp_path, nats_server, bus, haproxy_binary, detection=detection) as s:
        await settle(s)
        app = s.fleet.apps["us-east"]
        s.watch.healthy = set(CLUSTERS) - {"us-east"}
        started = time.monotonic()
        drained_after: float | None = None
        for _ in range(FLAP_CYCLES):
            await app.stop()
            await asyncio.sleep(FLAP_DOWN_S)
            await app.start()
            await asyncio.sleep(FLAP_PERIOD_S - FLAP_DOWN_S)
            if drained_after is None and await s.weight("us-east") == 0:
                drained_after = time.monotonic() - started
        stable_from = time.monotonic()
        assert drained_after is not None, "a cluster failing half its rounds was never drained"
        recorder.trial(drained_after)
        assert s.watch.returns("us-east") == [], "traffic went back while the app was flapping"

        async def back() -> bool:
            return await s.weight("us-east") == 100

        await wait_for(back, 20, "us-east back once stable")
        assert len(s.drains("us-east")) == 1, s.counter.commands
        assert len(s.watch.returns("us-east")) == 1
        assert s.watch.returns("us-east")[0] > stable_from
        s.watch.check()
        s.alive()
    recorder.note("1 drain while flapping, 0 returns while flapping, 1 once stable")


async def test_three_vantages_quorum_two_default_timings(
    nats_server: EmbeddedNats, bus: Bus, haproxy_binary: str, tmp_path: Path, recorder: Recorder
) -> None:
    """Three vantages with quorum 2 at default timings (probers as separate processes)"""
    probing, detection = ProbingConfig(), DetectionConfig()
    budget = detection.failure_threshold * probing.interval_s + 1.0
    recorder.budget(budget)
    async with stack(
        tmp_path,
        nats_server,
        bus,
        haproxy_binary,
        probing=None,
        detection="{vantages: [v1, v2, v3], quorum: 2}",
        run_args=("--no-probes",),
    ) as s:
        probers = [
            DaemonProcess(s.daemon.config, tmp_path / f"{v}.log", name=v, command=("probe",))
            for v in ("v1", "v2", "v3")
        ]
        try:
            for p in probers:
                await p.start("--vantage", p.name)
            await settle(s, 40)
            s.watch.healthy = {"eu-west", "ap-south"}
            started = time.monotonic()
            await s.fleet.apps["us-east"].stop()
            recorder.trial(await s.drained("us-east", started, budget))
            assert len(s.drains("us-east")) == 1
            failed = next(e for e in s.events if e["type"] == "cluster.failed")
            assert len(failed["evidence"]["failing"]) >= 2, failed
            s.watch.check()
            s.alive()
            assert all(p.running for p in probers)
        finally:
            await stop_all(probers)
    recorder.note(
        f"interval {probing.interval_s:g}s, timeout {probing.timeout_s:g}s, "
        f"failure_threshold {detection.failure_threshold}, quorum 2 of 3 prober processes"
    )
