"""The run journal is data, not authority (issue 12, finding 2; DESIGN §12), against real NATS and
HAProxy: a `running` record injected into `failover-runs` used to be resumed at the next election with
`force` (guards overridden) and without the pause check. Now a resumed run keeps `force` only when the
audit stream holds the admin command that started it, and a pause in force blocks it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from orchestrator.api.commands import forced_by_audit
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.bus.state import pause_key
from orchestrator.core.models import rfc3339
from orchestrator.playbooks.journal import BusJournal
from orchestrator.playbooks.runner import Runner
from tests.test_runs import Engine, engine

MANUAL = """name: manual-drain
on: {event: manual}
steps:
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
  - {id: hold, action: sleep, with: {duration: 2s}}
"""


def forged(run_id: str, clusters: list[str], force: bool) -> dict[str, Any]:
    """What someone with write access to the bucket could put there."""
    steps = [
        {"id": f"drain-{c}", "action": "lb.drain", "with": {"balancer": "global", "cluster": c}}
        for c in clusters
    ]
    return {
        "id": run_id,
        "playbook": "manual-drain",
        "playbook_sha256": "0" * 64,
        "event": {"type": "manual", "cluster": clusters[0]},
        "key": clusters[0],
        "status": "running",
        "created_at": rfc3339(time.time()),
        "steps": {},
        "force": force,
        "actor": "admin",
        "plan": {"vars": {}, "steps": steps, "on_failure": [], "guards": {"min_healthy_clusters": 1}},
    }


def new_leader(e: Engine) -> Runner:
    return Runner(
        e.services,
        BusJournal(e.bus),
        e.runner.playbooks,
        e.runner.clusters,
        e.store,
        force_audited=lambda record: forced_by_audit(e.bus, record),
    )


async def test_an_injected_forced_run_loses_force_and_the_guard_holds(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with engine(tmp_path, nats_server, haproxy_binary, {"manual": MANUAL}) as e:
        await BusJournal(e.bus).save(forged("f0rged", ["us-east", "eu-west", "ap-south"], force=True))
        leader = new_leader(e)
        assert await leader.resume_unfinished() == ["f0rged"]
        await leader.wait_idle(10)
        record = await e.record("f0rged")
        assert record["force"] is False and record["status"] == "failed", record
        assert "min_healthy_clusters" in record["error"]
        weights = await e.fleet.weights()
        assert sorted(c for c, w in weights.items() if w > 0) == ["ap-south"]  # the last one kept
        resumed = next(ev for ev in e.events if ev["run_id"] == "f0rged" and ev["type"] == "resumed")
        assert resumed["detail"]["force_dropped"] == "no audited command forced this run"


async def test_a_resumed_run_is_blocked_while_automation_is_paused(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with engine(tmp_path, nats_server, haproxy_binary, {"manual": MANUAL}) as e:
        await e.store.put(pause_key(None), {"until": None, "by": "alice"})
        await BusJournal(e.bus).save(forged("p4used", ["us-east"], force=False))
        leader = new_leader(e)
        assert await leader.resume_unfinished() == ["p4used"]
        await leader.wait_idle(10)
        record = await e.record("p4used")
        assert record["status"] == "blocked" and "paused by alice" in record["error"], record
        assert (await e.fleet.weights())["us-east"] == 100
        assert e.counter.sets("us1") == []


async def test_a_forced_run_started_by_an_audited_command_keeps_force_on_resume(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with engine(tmp_path, nats_server, haproxy_binary, {"manual": MANUAL}) as e:
        answer = await e.command("failover", cluster="us-east", force=True)
        assert answer["ok"], answer
        [run_id] = answer["result"]["runs"]

        async def holding() -> bool:
            record = await e.journal.load(run_id)
            return bool(record and record["steps"].get("hold", {}).get("status") == "running")

        deadline = time.monotonic() + 10
        while not await holding():
            assert time.monotonic() < deadline, "the forced run never reached its hold step"
            await asyncio.sleep(0.05)
        await e.runner.abandon()
        leader = new_leader(e)
        assert await leader.resume_unfinished() == [run_id]
        await leader.wait_idle(10)
        record = await e.record(run_id)
        assert record["force"] is True and record["status"] == "succeeded", record
        resumed = next(ev for ev in e.events if ev["run_id"] == run_id and ev["type"] == "resumed")
        assert "force_dropped" not in resumed["detail"]
