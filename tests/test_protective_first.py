"""Protective actions never wait (issue 11, DESIGN §12): `cluster.failed` preempts any run for its cluster
that is not itself protective (a notification delayed by its cooldown, a manual drain waiting for an
approval) and cancels queued ones (a failback queued behind the failover), against real NATS and HAProxy.
Round 1: the drain waited up to the cooldown (10 min) or until someone answered the approval, and a
queued failback set 25 % on a cluster that had failed again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.bus.embedded import EmbeddedNats
from tests.helpers import wait_for
from tests.test_runs import DRAIN, Engine, engine, restore

pytestmark = pytest.mark.timeout(60)

NOTIFY = """name: degraded-notify
on: {event: cluster.degraded}
guards: {cooldown: 10m}
steps:
  - {id: tell, action: notify, with: {notifier: oncall, summary: "{{ event.cluster }} degraded"}}
"""
MANUAL = """name: manual-drain
on: {event: manual}
steps:
  - {id: ask, action: approval, with: {timeout: 10m}}
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
"""


async def drained_within(e: Engine, cluster: str, started: float) -> float:
    async def drained() -> bool:
        return (await e.fleet.weights())[cluster] == 0

    await wait_for(drained, 10, f"{cluster} drained", poll_s=0.01)
    return time.monotonic() - started


async def test_a_drain_does_not_wait_behind_a_delayed_notification(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with engine(tmp_path, nats_server, haproxy_binary, {"drain": DRAIN, "notify": NOTIFY}) as e:
        e.states["us-east"] = "degraded"
        await e.finished((await e.event("cluster.degraded", "us-east"))[0])
        e.states["us-east"] = "healthy"  # degraded -> recovered -> degraded within the cooldown
        e.states["us-east"] = "degraded"
        [delayed] = await e.event("cluster.degraded", "us-east")
        await wait_for(lambda: any(ev["type"] == "blocked" for ev in e.events), 5, "the delayed notify")
        e.states["us-east"] = "failed"
        started = time.monotonic()
        [drain] = await e.event("cluster.failed", "us-east")
        took = await drained_within(e, "us-east", started)
        assert took < 1.5, f"the drain waited {took:.1f}s behind the delayed notification"
        assert (await e.finished(delayed))["status"] == "preempted"
        assert (await e.finished(drain))["status"] == "succeeded"


async def test_a_drain_does_not_wait_for_a_manual_drains_approval(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with engine(tmp_path, nats_server, haproxy_binary, {"drain": DRAIN, "manual": MANUAL}) as e:
        asking = await e.runner.submit(
            e.runner.playbooks["manual-drain"], {"type": "manual", "cluster": "us-east"}
        )
        await wait_for(lambda: asking in e.services.approvals.pending(), 5, "waiting for approval")
        e.states["us-east"] = "failed"
        started = time.monotonic()
        [drain] = await e.event("cluster.failed", "us-east")
        took = await drained_within(e, "us-east", started)
        assert took < 1.5, f"the drain waited {took:.1f}s for a human"
        assert (await e.finished(str(asking)))["status"] == "preempted"
        assert (await e.finished(drain))["status"] == "succeeded"


async def test_a_queued_failback_is_cancelled_when_the_cluster_fails_again(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    slow_drain = DRAIN.replace("duration: 300ms", "duration: 2s")  # the failover is still running
    books = {"drain": slow_drain, "restore": restore("[25, 50, 100]", "200ms")}
    async with engine(tmp_path, nats_server, haproxy_binary, books) as e:
        e.states["us-east"] = "failed"
        [failover] = await e.event("cluster.failed", "us-east")
        await wait_for(lambda: ("step.started", "hold") in e.kinds(failover), 5, "the failover holding")
        e.states["us-east"] = "healthy"
        [failback] = await e.event("cluster.recovered", "us-east")  # queued behind the failover
        e.states["us-east"] = "failed"
        assert await e.event("cluster.failed", "us-east") == []  # deduplicated: the failover is active
        assert (await e.finished(failover))["status"] == "succeeded"
        await wait_for(lambda: ("deduplicated", None) in e.kinds(failback), 5, "the failback cancelled")
        cancelled = [ev for ev in e.events if ev["run_id"] == failback and ev["type"] == "deduplicated"]
        assert cancelled[0]["detail"]["rule"] == "protective_first"
        time_after = time.monotonic() + 1.0
        while time.monotonic() < time_after:  # nothing raises the weight of the failed cluster
            assert (await e.fleet.weights())["us-east"] == 0
        assert not [c for c in e.counter.sets("us1") if not c.endswith(" 0")]
