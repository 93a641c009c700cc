"""Chaos: the infrastructure under the daemon fails (DESIGN §12 liveness and fencing, §15).

NATS restarted (a single server, and a node or the JetStream meta leader of a 3-node cluster), the
leader SIGKILLed or frozen past its lease in the middle of a run, and a rolling update of three replicas
while a cluster fails. Every daemon is a separate process; the balancer is a real HAProxy reached through
an `AdminCounter`, so each scenario can prove 0 false drains (sampled every 100 ms), 0 duplicate effects
(one `set weight ... 0` per drain) and that a real failure during the fault is still drained.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from chaos.conftest import Recorder
from chaos.infra_support import (
    FAST_FAILOVER,
    INTERVAL_S,
    LEASE_TTL_S,
    REFUSED_BUDGET_S,
    THRESHOLD,
    Stack,
    healthy_rounds,
    stack,
    watching,
)
from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core import subjects
from tests.daemons import DaemonProcess
from tests.helpers import wait_for
from tests.natscluster import NatsCluster, nats_cluster

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150)]

RECONNECT_S = 0.5
"""nats-py's reconnect wait as the bus configures it: the first retry after NATS is back."""
PRODUCTION_RENEW_S = 2.0
"""The default lease's renewal interval: a leader whose lease survived the outage resumes at it."""


# NATS restart (one nats-server) ------------------------------------------------------------------------


async def test_nats_restart(
    nats_binary: str, haproxy_binary: str, tmp_path: Path, recorder: Recorder
) -> None:
    """NATS restart: nats-server SIGKILLed for 4 s, with and without a failure meanwhile

    The daemon keeps the production lease (10 s TTL), so this also proves that it resumes on NATS' return
    instead of waiting for the TTL. Recovery: NATS back -> the cluster that died during the outage is
    drained on the real HAProxy.
    """
    budget = RECONNECT_S + PRODUCTION_RENEW_S + REFUSED_BUDGET_S
    recorder.budget(budget)
    nats = EmbeddedNats(tmp_path / "nats", free_port())
    await nats.start()
    try:
        async with stack(tmp_path, nats.url, haproxy_binary) as s:
            daemon = await s.add("a", s.config("a", extra=""))
            await daemon.wait_leads(30)
            await healthy_rounds()
            async with watching(s.fleet, [daemon]) as watch:
                await nats.kill()  # 1. all healthy: NATS away, then back; nothing may drain
                await asyncio.sleep(4)
                await nats.start()
                relead = await wait_for(daemon.leads, 20, "leading again after NATS came back", poll_s=0.05)
                await asyncio.sleep(THRESHOLD * INTERVAL_S + 1.5)
                watch.check()
                recorder.note(f"NATS back -> leading again {relead:.2f}s (lease TTL 10s)")

                for cluster in ("us-east", "ap-south", "us-east"):  # 2. a cluster dies during the outage
                    before = s.drains(cluster)
                    watch.may_drain.add(cluster)
                    await nats.kill()
                    await asyncio.sleep(1)
                    await s.fleet.apps[cluster].stop()
                    await asyncio.sleep(3)
                    await nats.start()
                    took = await s.wait_weight(cluster, 0, 20, f"{cluster} drained after NATS came back")
                    recorder.trial(took)
                    assert took <= budget, f"drained {took:.2f}s after NATS came back (budget {budget:.1f}s)"
                    assert s.drains(cluster) == before + 1, s.counter.commands
                    await s.fleet.apps[cluster].start()
                    await s.wait_weight(cluster, 100, 20, f"{cluster} restored")
                    watch.may_drain.discard(cluster)
            watch.check()
            assert daemon.running
            recorder.note(f"0 false drains in {watch.samples} samples; 1 drain per failure; no exit")
            assert await daemon.stop() == 0
    finally:
        await nats.stop()


# NATS cluster: a node, then the JetStream meta leader ----------------------------------------------------

CLUSTER_NATS = "replicas: 3, max_bytes: {events: 64MiB, runs: 32MiB}"
CLUSTER_LEASE = "leadership: {lease_ttl: 3s, renew_interval: 500ms, margin: 1s}\nreconcile: {interval: 1s}"
ELECTION_BUDGET_S = 25.0
"""A failure at the moment JetStream elects stream leaders waits for them: measured up to ~14 s in
tests/test_jetstream_faults.py (streams re-elect in 4-9 s, a KV read meanwhile times out after nats-py's
5 s, then the drain watchdog's next pass drains), so the budget is that with margin."""


async def _kill_a_nats_node(
    cluster: NatsCluster, s: Stack, recorder: Recorder, victim_of: str, failing: str
) -> None:
    """Start a daemon on the R3 cluster, SIGKILL the node `victim_of` picks, fail `failing` right away,
    and measure kill -> drained; then restart the node. Asserts no false drain, no exit, one drain."""
    recorder.budget(ELECTION_BUDGET_S)
    daemon = await s.add("a", s.config("a", extra=CLUSTER_LEASE))
    await daemon.wait_leads(30)
    await healthy_rounds()
    assert await cluster.stream_replicas(f"KV_{subjects.KV_LEADER}") == 3
    meta = await cluster.meta_leader()
    assert meta is not None
    victim = meta if victim_of == "meta" else next(n for n in cluster.nodes if n != meta)
    async with watching(s.fleet, [daemon]) as watch:
        watch.may_drain.add(failing)
        await cluster.kill(victim)
        killed = time.monotonic()
        await s.fleet.apps[failing].stop()
        took = await s.wait_weight(failing, 0, ELECTION_BUDGET_S + 10, f"{failing} drained, {victim} down")
        recorder.trial(took)
        relead = await wait_for(daemon.leads, 20, "the daemon leads", poll_s=0.1)
        if (left := 4.0 - (time.monotonic() - killed)) > 0:
            await asyncio.sleep(left)  # down longer than the lease can go unrenewed
        back = await cluster.restart(victim)
        await asyncio.sleep(1.0)
    watch.check()
    assert took <= ELECTION_BUDGET_S, f"drained {took:.2f}s after the kill"
    assert daemon.running and s.drains(failing) == 1, s.counter.commands
    died = [ln for ln in daemon.log_text().splitlines() if '"task.died"' in ln or '"task.gave_up"' in ln]
    assert not died, died
    recorder.note(
        f"killed {victim}{' (meta leader)' if victim == meta else ''}; leads {relead:.2f}s after the drain; "
        f"node healthy {back:.2f}s after restart; 0 false drains in {watch.samples} samples"
    )
    assert await daemon.stop() == 0


async def test_nats_cluster_node_kill(
    nats_binary: str, haproxy_binary: str, tmp_path: Path, recorder: Recorder
) -> None:
    """NATS cluster node kill (3 nodes, R3): a failure meanwhile is drained

    Recovery: node SIGKILLed and a cluster's app stopped at once -> drained on HAProxy.
    """
    async with (
        nats_cluster(nats_binary, tmp_path / "nats") as cluster,
        stack(tmp_path, cluster.url, haproxy_binary, (FAST_FAILOVER,)) as s,
    ):
        s.nats_extra = CLUSTER_NATS
        await _kill_a_nats_node(cluster, s, recorder, "follower", "us-east")


async def test_jetstream_leader_kill(
    nats_binary: str, haproxy_binary: str, tmp_path: Path, recorder: Recorder
) -> None:
    """JetStream meta leader kill (3 nodes, R3): a failure meanwhile is drained

    Recovery: the JetStream meta leader SIGKILLed and a cluster's app stopped at once -> drained.
    """
    async with (
        nats_cluster(nats_binary, tmp_path / "nats") as cluster,
        stack(tmp_path, cluster.url, haproxy_binary, (FAST_FAILOVER,)) as s,
    ):
        s.nats_extra = CLUSTER_NATS
        await _kill_a_nats_node(cluster, s, recorder, "meta", "ap-south")


# the leader SIGKILLed or frozen in the middle of a run --------------------------------------------------

DRAIN_HOLD_PAGE = """name: slow-failover
on: {event: cluster.failed}
steps:
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
  - {id: hold, action: sleep, with: {duration: 3s}}
  - {id: page, action: notify, with: {notifier: oncall, summary: "{{ event.cluster }} drained"}}
"""
HOLD_DRAIN_PAGE = """name: held-failover
on: {event: cluster.failed}
steps:
  - {id: hold, action: sleep, with: {duration: 2s}}
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
  - {id: page, action: notify, with: {notifier: oncall, summary: "{{ event.cluster }} drained"}}
"""
TAKEOVER_BUDGET_S = LEASE_TTL_S + 0.4 + 1.0
"""Another replica leads at most one lease TTL after the leader stopped renewing, plus its next try (the
renewal interval, 400 ms) and 1 s for the poll and a loaded machine."""


async def _two_replicas_in_a_run(s: Stack, cluster: str) -> tuple[str, DaemonProcess]:
    """Replicas a (leading) and b; `cluster` fails; returns once a run's `hold` step started."""
    a = await s.add("a")
    await a.wait_leads(20)
    await s.add("b")
    await healthy_rounds()
    await s.fleet.apps[cluster].stop()

    async def holding() -> bool:
        return any(r.get("type") == "step.started" and r.get("step") == "hold" for r in s.runs)

    await wait_for(holding, 15, "the run's slow step started")
    run_id = next(r["run_id"] for r in s.runs if r.get("step") == "hold")
    return run_id, a


def _assert_once(s: Stack, run_id: str, cluster: str) -> None:
    finished = s.finished(run_id)
    assert len(finished) == 1 and finished[0]["detail"].get("status") == "succeeded", finished
    succeeded = [r["step"] for r in s.runs if r.get("run_id") == run_id and r.get("type") == "step.succeeded"]
    assert sorted(succeeded) == ["drain", "hold", "page"], succeeded
    assert s.drains(cluster) == 1, s.counter.commands
    assert [n["summary"] for n in s.hook.received] == [f"{cluster} drained"], s.hook.received


async def test_leader_sigkill_mid_run(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path, recorder: Recorder
) -> None:
    """Leader SIGKILL mid-run: the other replica takes over and finishes the run once

    Recovery: SIGKILL of the leader during the run's 3 s step -> the other replica leads.
    """
    recorder.budget(TAKEOVER_BUDGET_S)
    async with stack(tmp_path, nats_server.url, haproxy_binary, (DRAIN_HOLD_PAGE,)) as s:
        run_id, leader = await _two_replicas_in_a_run(s, "us-east")
        assert s.drains("us-east") == 1  # drained before the kill: the resumed run must not drain again
        async with watching(s.fleet) as watch:
            watch.may_drain.add("us-east")
            killed = time.monotonic()
            assert await leader.kill() == -signal.SIGKILL
            await s.leader(TAKEOVER_BUDGET_S + 10)
            took = time.monotonic() - killed
            recorder.trial(took)
            await wait_for(lambda: bool(s.finished(run_id)), 20, "the resumed run finished")
            done = time.monotonic() - killed
            await asyncio.sleep(1.0)  # anything duplicated would show now
        watch.check()
        assert took <= TAKEOVER_BUDGET_S, f"took over {took:.2f}s after the kill"
        _assert_once(s, run_id, "us-east")
        resumed = [r for r in s.runs if r.get("run_id") == run_id and r.get("type") == "resumed"]
        assert len(resumed) == 1 and resumed[0]["detail"]["done"] == ["drain"], resumed
        recorder.note(f"run finished {done:.2f}s after the kill; 0 duplicate effects (1 drain, 1 page)")


async def test_leader_sigstop_past_its_lease(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path, recorder: Recorder
) -> None:
    """Leader SIGSTOP past its lease, then SIGCONT: the other leads and acts, the frozen one is fenced

    The leader is frozen in a run's 2 s sleep, before the drain; the other replica takes over and drains,
    then the frozen one is continued with the drain still ahead of it in its memory. Recovery: SIGSTOP ->
    the cluster drained by the other replica.
    """
    budget = TAKEOVER_BUDGET_S + 2.0 + 1.0  # takeover, the rest of the journalled sleep, the drain
    recorder.budget(budget)
    async with stack(tmp_path, nats_server.url, haproxy_binary, (HOLD_DRAIN_PAGE,)) as s:
        run_id, frozen = await _two_replicas_in_a_run(s, "us-east")
        other = next(r for r in s.replicas if r is not frozen)
        async with watching(s.fleet) as watch:
            watch.may_drain.add("us-east")
            frozen.freeze()
            stopped = time.monotonic()
            try:
                await other.wait_leads(TAKEOVER_BUDGET_S + 10)
                takeover = time.monotonic() - stopped
                took = await s.wait_weight("us-east", 0, budget + 10, "us-east drained by the other")
                took += takeover
                recorder.trial(took)
                await wait_for(lambda: bool(s.finished(run_id)), 20, "the run finished on the other")
                await asyncio.sleep(LEASE_TTL_S)  # frozen well past its lease
            finally:
                frozen.thaw()
            await asyncio.sleep(3.0)  # its sleep is over in its memory: the drain and page come next
            assert frozen.running, "the continued replica exited"
            assert not await frozen.leads() and await other.leads()
        watch.check()
        assert took <= budget, f"drained {took:.2f}s after SIGSTOP"
        _assert_once(s, run_id, "us-east")
        log = frozen.log_text()  # fenced by its own clock, not saved by a drain that found weight 0
        assert '"leader.deposed"' in log and '"run.step.succeeded"' not in log, log[-3000:]
        recorder.note(f"takeover {takeover:.2f}s; continued replica fenced: 1 drain, 1 page in all")


# rolling update ----------------------------------------------------------------------------------------


async def test_rolling_update_of_three_replicas(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path, recorder: Recorder
) -> None:
    """Rolling update of three replicas: a cluster failing as the leader is replaced is drained once

    Replicas r1 (leader), r2, r3 with per-pod vantage names are replaced one by one (SIGTERM, then a new
    pod); us-east fails the moment the leader's pod is stopped. Recovery: app stopped -> drained.
    """
    budget = REFUSED_BUDGET_S + LEASE_TTL_S  # a lease that was not released costs one TTL more
    recorder.budget(budget)
    async with stack(tmp_path, nats_server.url, haproxy_binary) as s:
        first = await s.add("r1", s.config("r1", vantage="pod-r1"))
        await first.wait_leads(20)
        for name in ("r2", "r3"):
            await s.add(name, s.config(name, vantage=f"pod-{name}"))
        await healthy_rounds()
        async with watching(s.fleet) as watch:
            drained: asyncio.Task[float] | None = None
            for old, new in (("r3", "r3b"), ("r2", "r2b"), ("r1", "r1b")):
                replica = next(r for r in s.replicas if r.name == old)
                was_leader = await replica.leads()
                assert await replica.stop() == 0
                if was_leader:
                    watch.may_drain.add("us-east")
                    await s.fleet.apps["us-east"].stop()
                    drained = asyncio.create_task(s.wait_weight("us-east", 0, budget + 10, "us-east drained"))
                await s.add(new, s.config(new, vantage=f"pod-{new}"))
            assert drained is not None, "the leader was never replaced"
            took = await drained
            recorder.trial(took)
            await s.leader()
            await asyncio.sleep(1.0)
        watch.check()
        assert took <= budget, f"drained {took:.2f}s after the failure (budget {budget:.1f}s)"
        assert s.drains("us-east") == 1, s.counter.commands
        assert len(s.failed_events("us-east")) == 1, s.events
        recorder.note(f"0 false drains in {watch.samples} samples; 1 drain; {len(s.replicas)} pods in all")
