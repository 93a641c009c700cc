"""The run journal stays bounded and cheap to read (issue 11, finding 9), against a real nats-server:
`unfinished()` reads only the unfinished runs, `recent()` one page, retention deletes finished runs by
age and by count (never an unfinished one) without leaving delete markers, records written by older
versions are found after the upgrade, and `ensure_topology` brings an old bucket and stream to their
new limits in place. The HTTP API and `failover ctl runs` page with a `before` cursor."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.js import api

from orchestrator.api.context import ApiContext
from orchestrator.api.server import ApiServer, build_app
from orchestrator.bus.client import EVENTS_MAX_AGE_S, Bus
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core import subjects
from orchestrator.core.config import load_config
from orchestrator.core.config_daemon import NatsConfig, RunsRetentionConfig, StreamLimits
from orchestrator.core.errors import PermanentError, ValidationFailed
from orchestrator.core.metrics import Metrics
from orchestrator.playbooks.journal import BusJournal
from orchestrator.runtime.retention import RunRetention
from tests.helpers import fleet, hook_receiver, wait_for, write_config
from tests.test_ctl import ctl
from tests.test_daemon import running

pytestmark = pytest.mark.timeout(60)

DAY = 86400.0
SOLO = "clusters:\n  - {name: solo, probes: [{name: ingress, tcp: {host: 127.0.0.1, port: 1}}]}\n"


def rfc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def record(run_id: str, status: str, created: float) -> dict[str, Any]:
    """A journal record shaped like the runner's (`Runner._begin`), with a finished run's extra fields."""
    out: dict[str, Any] = {
        "id": run_id,
        "playbook": "cluster-failover",
        "playbook_sha256": "0" * 64,
        "event": {"type": "cluster.failed", "cluster": "us-east", "id": f"ev-{run_id}"},
        "key": "us-east",
        "status": status,
        "created_at": rfc(created),
        "steps": {"drain": {"status": "succeeded" if status == "succeeded" else "running", "attempts": 1}},
        "force": False,
        "actor": None,
        "plan": {"steps": [{"id": "drain", "action": "lb.drain", "with": {"cluster": "us-east"}}]},
    }
    if status not in ("running", "delayed"):
        out["finished_at"] = rfc(created + 5)
    return out


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [str(r["id"]) for r in records]


async def fresh_bus(nats: EmbeddedNats, tmp_path: Path) -> Bus:
    bus = await Bus.connect(NatsConfig(url=nats.url), tmp_path, name="retention-test")
    await bus.ensure_topology()
    return bus


async def test_unfinished_and_recent_never_read_the_finished_records_they_do_not_return(bus: Bus) -> None:
    journal = BusJournal(bus)
    now = time.time()
    for i in range(6):
        await journal.save(record(f"fin{i}", "succeeded", now - 100 + i))
    ended = record("done0", "running", now - 60)
    await journal.save(ended)
    ended.update(status="failed", finished_at=rfc(now))
    await journal.save(ended)  # it was unfinished, then finished
    await journal.save(record("live0", "running", now - 50))
    await journal.save(record("wait0", "delayed", now - 40))
    assert ids(await journal.unfinished()) == ["live0", "wait0"]

    # every finished record becomes unreadable: not JSON, or JSON that is not a record
    for i in range(6):
        await bus.kv.runs.put(f"run.fin{i}", b"\x00 not json")
    await bus.kv.runs.put("run.done0", b"[1, 2]")
    fresh = BusJournal(bus)  # another process: nothing cached
    assert ids(await fresh.unfinished()) == ["live0", "wait0"]
    # one page of the newest: the unreadable ones are further down and never read
    assert ids(await fresh.recent(2)) == ["wait0", "live0"]
    # the adopted revision still fences: a write based on it goes through, a stale one does not
    live = (await fresh.unfinished())[0]
    live["status"] = "succeeded"
    await fresh.save(live)
    assert ids(await BusJournal(bus).unfinished()) == ["wait0"]


async def test_retention_deletes_by_age_and_by_count_and_never_an_unfinished_run(bus: Bus) -> None:
    journal = BusJournal(bus)
    now = time.time()
    aged = [
        record(f"aged{i}", status, now - 10 * DAY - i)
        for i, status in enumerate(("succeeded", "failed", "blocked"))
    ]
    stuck = [record("stuck0", "running", now - 30 * DAY), record("stuck1", "delayed", now - 9 * DAY)]
    fresh = [record(f"new{i}", "succeeded", now - 3600 * (i + 1)) for i in range(6)]  # new0 is the newest
    for r in [*aged, *stuck, *fresh]:
        await journal.save(r)
    await journal.save(record("stuck2", "running", now - 20 * DAY))
    await bus.kv.runs.put("run.stuck2", b"\x00 not json")  # unreadable: quarantined when read, not lost
    await bus.kv.runs.put("run.orphan", b"{}")
    await bus.kv.runs.delete("run.orphan")  # a delete marker left by someone: swept too

    retention = RunRetention(journal, RunsRetentionConfig(max_age="7d", max_runs=4))
    result = await retention.pass_once()

    kept = ["new0", "new1", "new2", "new3"]  # the newest 4 runs, by count
    gone = ["new4", "new5", "aged0", "aged1", "aged2"]  # beyond the newest 4; older than 7 days
    assert result.deleted == len(gone), result
    for run_id in gone:
        assert await journal.load(run_id) is None, run_id
    for run_id in [*kept, "stuck0", "stuck1"]:
        assert await journal.load(run_id) is not None, run_id
    assert ids(await BusJournal(bus).unfinished()) == ["stuck0", "stuck1"]
    assert ids(await BusJournal(bus).recent(50)) == [*kept, "stuck1", "stuck0"]

    # deleted for good: no delete markers, and each kept key holds exactly one message (history 1)
    info = await bus.js.stream_info(f"KV_{subjects.KV_RUNS}", subjects_filter=f"$KV.{subjects.KV_RUNS}.run.>")
    assert sorted(s.rsplit(".", 1)[1] for s in info.state.subjects or {}) == sorted(
        [*kept, "stuck0", "stuck1"]
    )
    [aside] = (await Bus.kv_items(bus.kv.state, "quarantine.failover-runs.run.stuck2.")).values()
    assert aside["raw"] == "\x00 not json"
    assert set((info.state.subjects or {}).values()) == {1}

    # a second pass finds nothing more to do
    assert (await retention.pass_once()).deleted == 0


async def test_pagination_walks_every_run_newest_first_through_the_api_and_ctl(
    bus: Bus, tmp_path: Path
) -> None:
    journal = BusJournal(bus)
    now = time.time()
    runs = [record(f"{i:016x}", "succeeded" if i % 4 else "running", now - 1000 + i) for i in range(23)]
    for r in runs:
        await journal.save(r)
    newest_first = [str(r["id"]) for r in reversed(runs)]
    config_path = tmp_path / "failover.yaml"
    config_path.write_text(SOLO)
    ctx = ApiContext(
        load_config(config_path),
        Metrics(),
        readiness=lambda: {"nats": True, "detector": True},
        status=lambda: {"ready": True, "clusters": {"solo": "healthy"}, "frozen": False},
        journal=journal,
        bus=bus,
    )
    server = ApiServer(build_app(ctx), "127.0.0.1", 0)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def get(query: str) -> tuple[int, Any]:
                async with session.get(f"{base}/api/v1/runs{query}") as resp:
                    return resp.status, await resp.json()

            status, body = await get("")
            assert status == 200 and ids(body["runs"]) == newest_first and body["next"] is None  # default 50
            seen: list[str] = []
            cursor: str | None = None
            for _ in range(10):
                status, body = await get(f"?limit=5{f'&before={cursor}' if cursor else ''}")
                assert status == 200 and len(body["runs"]) <= 5
                seen += ids(body["runs"])
                cursor = body["next"]
                if cursor is None:
                    break
            assert seen == newest_first  # every run once, newest first: no duplicate, no gap
            status, body = await get(f"?limit=500&before={newest_first[9]}")
            assert status == 200 and ids(body["runs"]) == newest_first[10:] and body["next"] is None

            for bad in ("0", "-1", "abc", "501", "1.5"):
                status, body = await get(f"?limit={bad}")
                assert status == 400 and body == {
                    "ok": False,
                    "error": "limit must be an integer from 1 to 500",
                }
            status, body = await get("?before=a.b*")
            assert status == 400 and "before" in body["error"]
            status, body = await get("?before=ffffffffffffffff")
            assert (status, body["error"]) == (400, "before: no run ffffffffffffffff")

            r = await ctl(base, "runs", "--json", "--limit", "3", "--before", newest_first[2])
            assert r.code == 0, r.err
            answer = json.loads(r.out)
            assert ids(answer["runs"]) == newest_first[3:6] and answer["next"] == newest_first[5]
            r = await ctl(base, "runs", "--limit", "2")
            assert r.code == 0 and f"--before {newest_first[1]}" in r.out, r.out
            r = await ctl(base, "runs", "--limit", "501")
            assert r.code == 2
    finally:
        await server.stop()


async def test_records_written_by_an_older_version_are_found_after_the_upgrade(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    bus = await fresh_bus(nats_server, tmp_path)
    try:
        now = time.time()
        legacy = [record(f"old{i}", "succeeded", now - 500 + i) for i in range(5)]
        legacy += [record("oldrun", "running", now - 400), record("olddelay", "delayed", now - 300)]
        for r in legacy:  # what the previous `BusJournal.save` wrote: the record, nothing else
            await Bus.kv_cas(bus.kv.runs, f"run.{r['id']}", r, None)

        journal = BusJournal(bus)
        assert ids(await journal.unfinished()) == ["oldrun", "olddelay"]  # the one-time migration
        assert ids(await journal.recent(50)) == [
            str(r["id"]) for r in sorted(legacy, key=lambda r: r["created_at"], reverse=True)
        ]
        adopted = (await journal.unfinished())[0]
        adopted["status"] = "succeeded"
        await journal.save(adopted)  # compare-and-set on the adopted revision

        # migrated once: a later process reads no finished record, even a legacy one
        await bus.kv.runs.put("run.old0", b"\x00 not json")
        assert ids(await BusJournal(bus).unfinished()) == ["olddelay"]

        # an older replica still writing the old way during a rolling upgrade: indexed by retention
        late = record("latecomer", "running", now - 10)
        await Bus.kv_cas(bus.kv.runs, "run.latecomer", late, None)
        await RunRetention(journal, RunsRetentionConfig()).pass_once()
        assert ids(await BusJournal(bus).unfinished()) == ["olddelay", "latecomer"]
    finally:
        await bus.close()


async def test_ensure_topology_brings_an_old_bucket_and_stream_to_the_new_limits(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    bus = await Bus.connect(NatsConfig(url=nats_server.url), tmp_path, name="old-version")
    try:
        # what an older version created: history 5, no byte limits
        await bus.js.create_key_value(api.KeyValueConfig(bucket=subjects.KV_RUNS, history=5))
        await bus.js.add_stream(
            api.StreamConfig(
                name=subjects.STREAM_EVENTS,
                subjects=[subjects.EVENTS_ALL, subjects.RUNS_ALL, subjects.AUDIT],
                max_age=EVENTS_MAX_AGE_S,
                storage=api.StorageType.FILE,
                discard=api.DiscardPolicy.OLD,
            )
        )
        kv = await bus.js.key_value(subjects.KV_RUNS)
        for status in ("running", "running", "succeeded"):
            await kv.put("run.abc", json.dumps(record("abc", status, time.time())).encode())
        await bus.js.publish(subjects.AUDIT, b'{"v": 1}')

        await bus.ensure_topology()

        runs = await bus.js.stream_info(f"KV_{subjects.KV_RUNS}")
        assert (runs.config.max_msgs_per_subject, runs.config.max_bytes) == (1, StreamLimits().runs)
        events = await bus.js.stream_info(subjects.STREAM_EVENTS)
        assert events.config.max_bytes == StreamLimits().events and events.state.messages == 1
        found = await Bus.kv_get(bus.kv.runs, "run.abc")
        assert found is not None and found[0]["status"] == "succeeded"  # the latest revision is kept
        await bus.ensure_topology()  # idempotent
    finally:
        await bus.close()


def test_retention_config_defaults_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "failover.yaml"
    path.write_text(SOLO)
    retention = load_config(path).runs.retention
    assert (retention.max_age_s, retention.max_runs) == (7 * DAY, 5000)
    path.write_text(SOLO + "runs: {retention: {max_age: 30d, max_runs: 200, interval: 1m}}\n")
    retention = load_config(path).runs.retention
    assert (retention.max_age_s, retention.max_runs, retention.interval_s) == (30 * DAY, 200, 60.0)
    path.write_text(SOLO + "runs:\n  retention:\n    max_age: soon\n    max_runs: 0\n")
    with pytest.raises(ValidationFailed) as info:
        load_config(path)
    found = [str(p) for p in info.value.problems]
    assert len(found) == 2
    assert found[0].startswith(f"{path}:5: runs.retention.max_age: ")
    assert found[1].startswith(f"{path}:6: runs.retention.max_runs: ")


async def test_the_leader_prunes_the_journal_periodically(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    bus = await fresh_bus(nats_server, tmp_path)
    try:
        journal = BusJournal(bus)
        now = time.time()
        for i in range(5):
            await journal.save(record(f"past{i}", "failed", now - 100 + i))
        async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
            extra = "runs: {retention: {max_runs: 2, interval: 100ms}}"
            path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, extra=extra)
            async with running(path):

                async def pruned() -> bool:
                    return ids(await BusJournal(bus).recent(50)) == ["past4", "past3"]

                await wait_for(pruned, 10, "the journal pruned to the newest 2 runs")
                await asyncio.sleep(0)
    finally:
        await bus.close()


async def test_too_little_jetstream_storage_is_a_clear_error_and_smaller_limits_fit(
    tmp_path: Path, nats_binary: str
) -> None:
    """NATS reserves a stream's max_bytes up front: a server with less storage refused to create the
    events stream, and the daemon retried 'no suitable peers' forever instead of saying why."""
    server = EmbeddedNats(tmp_path / "nats", config="jetstream { max_file_store: 128MB }\n")
    await server.start()
    try:
        bus = await Bus.connect(NatsConfig(url=server.url), tmp_path, name="t")
        try:
            with pytest.raises(PermanentError, match=r"lower nats.max_bytes"):
                await bus.ensure_topology()
        finally:
            await bus.close()
        small = NatsConfig.model_validate(
            {"url": server.url, "max_bytes": {"events": "64MiB", "runs": "16MiB"}}
        )
        bus = await Bus.connect(small, tmp_path, name="t")
        try:
            await bus.ensure_topology()
            info = await bus.js.stream_info("FAILOVER_EVENTS")
            assert info.config.max_bytes == 64 * 1024**2
        finally:
            await bus.close()
    finally:
        await server.stop()
