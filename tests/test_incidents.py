"""Incidents (DESIGN §13): one per cluster failure, its id the dedup key of every message, kept in KV,
resolved by the failback; against a real daemon, real NATS and a real HAProxy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.bus.state import StateStore
from orchestrator.core.config import Config
from orchestrator.notifiers import Notification
from orchestrator.playbooks.actions import REGISTRY, Services, StepContext
from orchestrator.playbooks.incidents import IncidentBook
from tests.fakes import MemoryNotifier
from tests.helpers import fleet, hook_receiver, wait_for, write_config
from tests.test_ctl import ctl
from tests.test_daemon import all_healthy, running

pytestmark = pytest.mark.timeout(120)

EXTERNAL = "https://failover.example.com"


def with_external_url(path: Path) -> Path:
    text = path.read_text().replace("api: {", f"api: {{external_url: '{EXTERNAL}', ", 1)
    path.write_text(text)
    return path


async def get_json(port: int, path: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_a_failure_and_its_failback_are_one_incident_that_survives_a_restart(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = with_external_url(write_config(tmp_path, f, hook.url, nats_url=nats_server.url))

        async def drained() -> bool:
            return (await f.weights())["us-east"] == 0

        # the failure opens inc-us-east-1; the daemon then stops (the incident is in KV, not in memory)
        async with running(path) as daemon:
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")
            await f.apps["us-east"].stop()
            await wait_for(drained, 10, "us-east drained")
            await wait_for(lambda: any(n.get("incident") for n in hook.received), 10, "the page")
            assert daemon.runner is not None
            await wait_for(lambda: not daemon.runner.active, 10, "the failover run finished")

        # another daemon (same NATS) sees the recovery: the failback resolves the same incident
        async with running(path) as daemon:
            assert daemon.api is not None and daemon.runner is not None
            runner = daemon.runner
            await f.apps["us-east"].start()

            async def resolved() -> bool:
                return any(n.get("resolve") for n in hook.received) and not runner.active

            await wait_for(resolved, 30, "the failback resolved the incident")
            pages = [n for n in hook.received if n.get("incident")]
            assert [(n["incident"], n["incident_state"], n["resolve"]) for n in pages] == [
                ("inc-us-east-1", "drained", False),
                ("inc-us-east-1", "resolved", True),
            ], pages
            assert {n["dedup_key"] for n in pages} == {"inc-us-east-1"}
            opened, closed = pages
            assert opened["links"] == {
                "run": f"{EXTERNAL}/runs/{opened['run_id']}",
                "incident": f"{EXTERNAL}/incidents/inc-us-east-1",
            }
            assert closed["links"]["incident"] == f"{EXTERNAL}/incidents/inc-us-east-1"

            view = await get_json(daemon.api.port, "/api/v1/incidents")
            (incident,) = view["incidents"]
            assert incident["id"] == "inc-us-east-1" and incident["state"] == "resolved"
            assert incident["cluster"] == "us-east" and incident["resolved_at"]
            assert incident["runs"] == [opened["run_id"], closed["run_id"]]
            assert incident["notifiers"] == ["oncall"]
            assert (await get_json(daemon.api.port, "/api/v1/incidents?open=true")) == {"incidents": []}

            api = f"http://127.0.0.1:{daemon.api.port}"
            r = await ctl(api, "incidents")
            assert r.code == 0, r.err
            row = next(line.split() for line in r.out.splitlines() if "inc-us-east-1" in line)
            assert row[:3] == ["inc-us-east-1", "us-east", "resolved"], r.out
            r = await ctl(api, "--json", "incidents")
            assert [i["id"] for i in json.loads(r.out)["incidents"]] == ["inc-us-east-1"]

            # a second failure of the same cluster is a new incident
            await f.apps["us-east"].stop()
            await wait_for(drained, 10, "us-east drained again")
            await wait_for(
                lambda: any(n.get("incident") == "inc-us-east-2" for n in hook.received), 10, "second page"
            )
            view = await get_json(daemon.api.port, "/api/v1/incidents?open=true")
            assert [(i["id"], i["state"]) for i in view["incidents"]] == [("inc-us-east-2", "drained")]
            async with aiohttp.ClientSession() as s, s.get(f"{api}/") as page:
                assert "inc-us-east-2" in await page.text()  # the dashboard shows open incidents


class ReceiptNotifier(MemoryNotifier):
    """Answers every message with a receipt (as Slack answers with a `ts`)."""

    async def send(self, note: Notification) -> dict[str, Any] | None:  # type: ignore[override]
        await super().send(note)
        return {"ts": f"m{len(self.sent)}"}


def config() -> Config:
    probe = [{"name": "ingress", "http": {"url": "http://127.0.0.1:9/healthz"}}]
    return Config.model_validate(
        {
            "api": {"listen": "127.0.0.1:0", "external_url": EXTERNAL},
            "clusters": [{"name": c, "probes": probe} for c in ("eu-west", "us-east", "ap-south")],
        }
    )


async def notify(
    services: Services, run_id: str, event: dict[str, Any], step: str = "page", **params: Any
) -> dict[str, Any]:
    action = REGISTRY["notify"]
    ctx = StepContext(services, run_id, "p", step, event)
    return await action.run(ctx, action.params.model_validate({"notifier": "oncall", **params}))


async def test_one_message_per_incident_state_and_a_storm_is_one_message(bus: Bus) -> None:
    book = IncidentBook(StateStore(bus))
    oncall = ReceiptNotifier("oncall")
    services = Services(config(), {}, {"oncall": oncall}, dict, incidents=book)
    failed = {"type": "cluster.failed", "cluster": "us-east"}

    first = await notify(services, "r1", failed, summary="us-east failed", state="drained")
    assert first["incident"] == "inc-us-east-1" and "skipped" not in first
    # the same state again (a catch-up run, a second step): nobody is told twice
    again = await notify(services, "r2", failed, summary="us-east failed still", state="drained")
    assert again["skipped"] == "oncall was already told incident inc-us-east-1 is drained"
    flapping = await notify(services, "r3", {"type": "cluster.degraded", "cluster": "us-east"}, summary="x")
    assert "skipped" in flapping and flapping["incident"] == "inc-us-east-1"
    # a new state is told, in the first message's thread
    failed_step = await notify(services, "r2", failed, step="on_failure-0", summary="scale failed")
    assert failed_step["incident_state"] == "step_failed"
    assert [(n.incident_state, n.thread) for n in oncall.sent] == [
        ("drained", None),
        ("step_failed", {"ts": "m1"}),
    ]

    # a storm: one grouped message naming the clusters' open incidents
    storm = {"type": "observer.suspect", "detail": {"clusters": ["us-east", "eu-west"]}}
    await notify(services, "r4", storm, summary="automation frozen")
    assert oncall.sent[-1].details == {"incidents": ["inc-us-east-1"]} and len(oncall.sent) == 3

    resolved = await notify(
        services, "r5", {"type": "cluster.recovered", "cluster": "us-east"}, summary="back", resolve=True
    )
    assert resolved["incident_state"] == "resolved" and oncall.sent[-1].resolve
    record = await book.get("inc-us-east-1")
    assert record is not None and record["receipts"] == {"oncall": {"ts": "m1"}}
    assert record["runs"] == ["r1", "r2", "r3", "r5"] and record["resolved_at"]
    assert await book.open_for("us-east") is None
    reopened = await notify(services, "r6", failed, summary="again", state="drained")
    assert reopened["incident"] == "inc-us-east-2"
    # a message about a cluster with no open incident carries none
    await notify(services, "r7", {"type": "cluster.degraded", "cluster": "eu-west"}, summary="slow")
    assert oncall.sent[-1].incident is None and oncall.sent[-1].dedup_key == "r7.page"


async def test_a_failback_of_a_cluster_with_no_incident_tells_nobody(bus: Bus) -> None:
    """A cluster that was only degraded recovers: its failback's `resolve: true` message has nothing
    to resolve, and on-call is not told "ap-south is back" about an outage nobody was paged for (found
    by `failover demo`)."""
    oncall = ReceiptNotifier("oncall")
    services = Services(config(), {}, {"oncall": oncall}, dict, incidents=IncidentBook(StateStore(bus)))
    back = {"type": "cluster.recovered", "cluster": "ap-south", "from": "degraded"}
    result = await notify(services, "r1", back, step="tell", summary="ap-south is back", resolve=True)
    assert result["skipped"] == "ap-south has no open incident: nothing to resolve"
    assert oncall.sent == []
    # the same message for a cluster whose incident is open resolves it, as before
    await notify(services, "r2", {"type": "cluster.failed", "cluster": "ap-south"}, summary="down")
    resolved = await notify(services, "r3", back, step="tell", summary="ap-south is back", resolve=True)
    assert resolved["incident_state"] == "resolved" and [n.resolve for n in oncall.sent] == [False, True]


async def test_a_bad_incident_record_is_quarantined(bus: Bus) -> None:
    await Bus.kv_put(bus.kv.state, "incident.inc-us-east-1", {"id": "inc-us-east-1", "state": "exploded"})
    await Bus.kv_put(bus.kv.state, "incident.open.us-east", {"n": "many"})
    book = IncidentBook(StateStore(bus))
    assert await book.get("inc-us-east-1") is None
    assert await book.open_for("us-east") is None
    record, opened = await book.open("us-east", "r1")
    assert opened and record["id"] == "inc-us-east-1" and record["state"] == "opened"
