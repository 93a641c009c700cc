"""Readiness in a running daemon (DESIGN §17): the leader checks every `readiness.interval`; the gauge
`failover_readiness{playbook,cluster}`, the `readiness.failed` / `readiness.recovered` system events (one
per change, not per pass) and `GET /api/v1/readiness` say the same as `failover check`; only the leader
checks, and a new leader checks at once without repeating what the last one said."""

from __future__ import annotations

import asyncio
import re
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core import subjects
from orchestrator.core.config_daemon import NatsConfig
from orchestrator.runtime.daemon import Daemon
from tests.helpers import collect, wait_for
from tests.test_daemon import metrics_text, running
from tests.test_readiness import CLUSTERS, world

pytestmark = pytest.mark.timeout(120)
LEASE = "leadership: {lease_ttl: 2s, renew_interval: 400ms, margin: 600ms}"


def gauges(text: str) -> dict[str, float]:
    """cluster -> failover_readiness of playbook cluster-failover, from the Prometheus text."""
    out = {}
    for line in text.splitlines():
        found = re.match(r'failover_readiness\{cluster="([^"]+)",playbook="cluster-failover"\} (\S+)$', line)
        if found:
            out[found.group(1)] = float(found.group(2))
    return out


async def api_readiness(daemon: Daemon) -> dict[str, Any]:
    assert daemon.api is not None
    url = f"http://127.0.0.1:{daemon.api.port}/api/v1/readiness"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == kind]


async def test_gauge_events_and_api_say_what_check_says(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with world(tmp_path, haproxy_binary) as w:
        w.kube["ap-south"].access.deny("update", "deployments", group="apps", subresource="scale")
        watcher = await Bus.connect(NatsConfig(url=nats_server.url), tmp_path, name="watcher")
        try:
            events = await collect(watcher, subjects.SYSTEM_EVENTS)
            async with running(w.config(nats_url=nats_server.url)) as daemon:

                async def gauge_set() -> bool:
                    return len(gauges(await metrics_text(daemon))) == len(CLUSTERS)

                await wait_for(gauge_set, 20, "the readiness gauge")
                # ap-south's failover needs no scaling on ap-south: only eu-west and us-east fail
                assert gauges(await metrics_text(daemon)) == {"eu-west": 0, "us-east": 0, "ap-south": 1}
                await wait_for(lambda: of(events, "readiness.failed"), 10, "readiness.failed")
                [failed] = of(events, "readiness.failed")
                assert "ap-south may not update deployments/scale.apps web in shop" in failed["reason"]
                assert {r["cluster"] for r in failed["detail"]["results"]} == {"eu-west", "us-east"}
                report = await api_readiness(daemon)
                assert report["enabled"] is True and report["ready"] is False and report["not_ready"] == 2
                assert report["by"] == holder(daemon)
                [eu] = [r for r in report["results"] if r["cluster"] == "eu-west"]
                assert [p["kind"] for p in eu["problems"]] == ["permission"]
                first = report["checked_at"]
                # passes go on (interval 1s) and say nothing new
                await wait_for(lambda: _later(daemon, first), 10, "a later pass")
                await asyncio.sleep(1.5)
                assert len(of(events, "readiness.failed")) == 1, of(events, "readiness.failed")
                # fixed: recovered once, gauge 1
                w.kube["ap-south"].access.allow_all()
                await wait_for(lambda: of(events, "readiness.recovered"), 10, "readiness.recovered")

                async def all_ready() -> bool:
                    return set(gauges(await metrics_text(daemon)).values()) == {1.0}

                await wait_for(all_ready, 10, "every gauge at 1")
                [recovered] = of(events, "readiness.recovered")
                assert {r["cluster"] for r in recovered["detail"]["recovered"]} == {"eu-west", "us-east"}
                assert recovered["detail"]["not_ready"] == 0
                assert (await api_readiness(daemon))["ready"] is True
                await asyncio.sleep(1.5)
                assert len(of(events, "readiness.recovered")) == 1
                assert len(of(events, "readiness.failed")) == 1
            # the daemon's checks wrote nothing (it had no reason to act: every cluster healthy)
            assert not [c for c in w.counter.commands if c.startswith("set ")], w.counter.commands
            for server in w.kube.values():
                assert not [r for r in server.request_log if r.method in ("PUT", "PATCH", "DELETE")]
        finally:
            await watcher.close()


async def _later(daemon: Daemon, first: str) -> bool:
    return bool((await api_readiness(daemon))["checked_at"] != first)


async def test_only_the_leader_checks_and_a_new_leader_checks_at_once(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with world(tmp_path, haproxy_binary) as w:
        w.kube["ap-south"].access.deny("update", "deployments", group="apps", subresource="scale")
        watcher = await Bus.connect(NatsConfig(url=nats_server.url), tmp_path, name="watcher")
        try:
            events = await collect(watcher, subjects.SYSTEM_EVENTS)
            slow = "{interval: 1h, timeout: 2s}"  # only the pass on taking over can happen
            one = w.config(nats_url=nats_server.url, name="one", extra=LEASE, readiness=slow)
            two = w.config(nats_url=nats_server.url, name="two", extra=LEASE, readiness=slow)
            async with AsyncExitStack() as stack:
                first = await stack.enter_async_context(running(one))
                await wait_for(lambda: leads(first), 10, "one leads")
                await wait_for(lambda: of(events, "readiness.failed"), 20, "the leader's readiness.failed")
                async with running(two) as second:
                    await asyncio.sleep(1.0)
                    assert not leads(second)
                    assert gauges(await metrics_text(second)) == {}  # a follower does not check
                    assert len(gauges(await metrics_text(first))) == len(CLUSTERS)
                    report = await api_readiness(second)  # every replica serves the leader's report
                    assert report["by"] == holder(first) and report["not_ready"] == 2
                    reads = len(w.counter.commands)
                    await stack.aclose()  # `one` stops and hands the lease over
                    await wait_for(lambda: leads(second), 15, "two leads")

                    async def checked_by_two() -> bool:
                        return bool((await api_readiness(second))["by"] == holder(second))

                    await wait_for(checked_by_two, 15, "two's first pass")  # at once: the interval is 1h
                    assert gauges(await metrics_text(second)) == {"eu-west": 0, "us-east": 0, "ap-south": 1}
                    assert len(w.counter.commands) > reads
                    # the same problems: the new leader does not say them again
                    assert len(of(events, "readiness.failed")) == 1, [e["reason"] for e in events]
        finally:
            await watcher.close()


def leads(daemon: Daemon) -> bool:
    return bool(daemon.leadership and daemon.leadership.is_leader)


def holder(daemon: Daemon) -> str:
    assert daemon.leadership is not None
    return daemon.leadership.holder
