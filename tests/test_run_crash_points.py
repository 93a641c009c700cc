"""Runs that stay right when something else breaks (issue 11, findings 2, 3, 5 and 6), against real NATS
and a real HAProxy: a failback never raises the weight of a cluster that is not healthy, a resumed
failback of a failed cluster is preempted, handing an event to a run survives a JetStream hiccup, a run
whose journal write failed mid-run is adopted, a crash between a ramp's set and its journal entry
resumes the ramp, and `for_each` items and compensations are journalled `running` before their effect.
Each of these failed on the code before the fix."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.playbooks.journal import BusJournal
from orchestrator.playbooks.runner import Runner
from tests.natscluster import JetStreamBlocker
from tests.test_runs import DRAIN, Engine, engine, restore

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parent.parent


async def weight(e: Engine, cluster: str) -> int:
    return (await e.fleet.weights())[cluster]


async def drained(e: Engine, cluster: str) -> None:
    e.states[cluster] = "failed"
    [run_id] = await e.event("cluster.failed", cluster)
    assert (await e.finished(run_id))["status"] == "succeeded"
    assert await weight(e, cluster) == 0


def fresh_runner(e: Engine) -> Runner:
    """What a new leader (or a restarted process) builds over the same journal and state."""
    return Runner(e.services, BusJournal(e.bus), e.runner.playbooks, e.runner.clusters, e.store)


async def settle(runner: Runner, e: Engine, run_id: str, timeout_s: float = 15) -> dict[str, object]:
    await runner.wait_idle(timeout_s)
    return await e.record(run_id)


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """An HTTP endpoint that accepts and never answers: an effect that stays in flight."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hang"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def wait_record(e: Engine, run_id: str, check: object, what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = await e.journal.load(run_id)
        if record is not None and check(record):  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {await e.journal.load(run_id)}")


# finding 2: a failback on a cluster that is not healthy --------------------------------------------


async def test_the_shipped_failback_never_raises_a_failed_clusters_weight_and_pages(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    shipped = (REPO / "playbooks" / "cluster-failback.yaml").read_text()
    async with engine(tmp_path, nats_server, haproxy_binary, {"drain": DRAIN, "failback": shipped}) as e:
        await drained(e, "us-east")
        # a cluster.recovered that is acted on after the cluster failed again (queued, late, resumed)
        run_id = await e.runner.submit(
            e.runner.playbooks["cluster-failback"], {"type": "cluster.recovered", "cluster": "us-east"}
        )
        record = await e.finished(str(run_id))
        assert record["status"] == "failed" and record["failed_step"] == "restore"
        assert "health gate: us-east is failed before the first ramp step" in record["error"]
        assert await weight(e, "us-east") == 0
        assert [c for c in e.counter.sets("us1") if not c.endswith(" 0")] == []  # never raised
        pages = [n for n in e.hook.received if n["severity"] == "critical"]
        assert [p["summary"] for p in pages] == [
            "failback of us-east stopped at restore: health gate: us-east is failed before the first "
            "ramp step; the ramp stops here"
        ]


async def test_a_resumed_failback_of_a_failed_cluster_is_preempted_and_the_drain_is_not_blocked(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    books = {"drain": DRAIN, "restore": restore("[25, 50, 100]", "3s")}
    async with engine(tmp_path, nats_server, haproxy_binary, books) as e:
        await drained(e, "us-east")
        e.states["us-east"] = "healthy"
        [failback] = await e.event("cluster.recovered", "us-east")
        await wait_record(
            e, failback, lambda r: r["steps"].get("restore", {}).get("ramp_done") == 1, "the first ramp step"
        )
        await e.runner.abandon()  # the leader changes mid-ramp...
        e.states["us-east"] = "failed"  # ...and the cluster fails again meanwhile
        new_leader = fresh_runner(e)
        started = time.monotonic()
        assert await new_leader.resume_unfinished() == [failback]
        assert not new_leader.protecting("us-east")  # the drain watchdog does not wait for the failback
        record = await settle(new_leader, e, failback)
        assert record["status"] == "preempted", record
        assert time.monotonic() - started < 2.5, "the preempted failback waited for its ramp interval"
        assert [c.split()[-1] for c in e.counter.sets("us1")] == ["0", "25"]  # nothing raised after
        preempted = [ev for ev in e.events if ev["run_id"] == failback and ev["type"] == "preempted"]
        assert preempted[0]["detail"]["rule"] == "protective_first"
        [catch_up] = await new_leader.on_event({"type": "cluster.failed", "cluster": "us-east", "id": "c"})
        await new_leader.wait_idle(10)
        assert (await e.record(catch_up))["status"] == "succeeded"
        assert await weight(e, "us-east") == 0


# finding 3: handing an event to a run is durable ---------------------------------------------------


def runs_bucket(subject: str, reply: str | None) -> bool:
    return subject.startswith("$KV.failover-runs.")


async def test_the_first_journal_write_of_a_run_survives_a_jetstream_hiccup(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    blocker = JetStreamBlocker(nats_server.port, drop=runs_bucket)
    await blocker.start()
    try:
        async with engine(tmp_path, nats_server, haproxy_binary, {"drain": DRAIN}, nats_url=blocker.url) as e:
            blocker.blocking = True  # the run's first write gets no answer (a JetStream election)
            e.states["us-east"] = "failed"
            [run_id] = await e.event("cluster.failed", "us-east")
            await asyncio.sleep(1.5)
            assert blocker.dropped, "the first write was not attempted"
            blocker.blocking = False
            record = await e.finished(run_id, timeout_s=30)
            assert record["status"] == "succeeded"
            assert await weight(e, "us-east") == 0
    finally:
        await blocker.stop()


SLOW_PAGE = """name: slow
on: {event: cluster.failed}
steps:
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
  - {id: hold, action: sleep, with: {duration: 1s}}
  - {id: page, action: notify, with: {notifier: oncall, summary: "{{ event.cluster }} drained"}}
"""


async def test_a_run_whose_journal_write_failed_mid_run_is_adopted_by_its_leader(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    blocker = JetStreamBlocker(nats_server.port, drop=runs_bucket)
    await blocker.start()
    stop = asyncio.Event()
    try:
        async with engine(
            tmp_path, nats_server, haproxy_binary, {"slow": SLOW_PAGE}, nats_url=blocker.url
        ) as e:
            adopter = asyncio.create_task(e.runner.adopt_orphans(stop, 0.3, lambda: True))
            e.states["us-east"] = "failed"
            [run_id] = await e.event("cluster.failed", "us-east")
            await wait_record(
                e, run_id, lambda r: r["steps"].get("hold", {}).get("status") == "running", "hold"
            )
            blocker.blocking = True  # the write after the sleep times out: the run's task ends
            await asyncio.sleep(2.0)
            blocker.blocking = False
            record = await e.finished(run_id, timeout_s=30)
            stop.set()
            await adopter
            assert record["status"] == "succeeded", record
            assert [k for k, _ in e.kinds(run_id) if k == "resumed"] == ["resumed"]
            assert [c.split()[-1] for c in e.counter.sets("us1")] == ["0"]  # the drain was not repeated
            assert [n["summary"] for n in e.hook.received] == ["us-east drained"]  # paged once
    finally:
        stop.set()
        await blocker.stop()


# finding 5: a crash inside a ramped restore ---------------------------------------------------------


async def test_a_crash_between_a_ramp_set_and_its_journal_entry_resumes_the_ramp(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    books = {"drain": DRAIN, "restore": restore("[25, 100]", "1s")}
    async with engine(tmp_path, nats_server, haproxy_binary, books) as e:
        await drained(e, "us-east")
        e.states["us-east"] = "healthy"
        [failback] = await e.event("cluster.recovered", "us-east")
        await wait_record(
            e, failback, lambda r: r["steps"].get("restore", {}).get("ramp_done") == 1, "the first ramp step"
        )
        await e.runner.abandon()
        # what a crash right after `set weight 25`, before the progress was journalled, leaves behind
        journal = BusJournal(e.bus)
        record = await journal.load(failback)
        assert record is not None
        entry = record["steps"]["restore"]
        assert entry.get("pending") is None and entry["last_set"] == 25
        for key in ("ramp_done", "last_set", "changes", "next_at"):
            entry.pop(key, None)
        entry["pending"] = 25
        await journal.save(record)
        assert await weight(e, "us-east") == 25

        new_leader = fresh_runner(e)
        assert await new_leader.resume_unfinished() == [failback]
        record = await settle(new_leader, e, failback)
        assert record["status"] == "succeeded", record
        result = record["steps"]["restore"]["result"]
        assert result["restored"] is True and result["after"] == 100, result
        assert await weight(e, "us-east") == 100
        assert await e.store.get("desired.lb.global.us-east") is None  # nothing held at 25 any more


# finding 6: in-flight effects of for_each items and compensations --------------------------------


async def test_for_each_items_are_journalled_before_their_effect_and_have_their_own_dedup_keys(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    book = """name: tell-all
on: {event: manual}
steps:
  - id: tell
    action: notify
    for_each: [a, b]
    with: {notifier: oncall, summary: "about {{ item }}"}
"""
    async with engine(tmp_path, nats_server, haproxy_binary, {"tell": book}) as e:
        loaded = e.runner.playbooks["tell-all"]
        first = await e.finished(str(await e.runner.submit(loaded, {"type": "manual", "cluster": "eu-west"})))
        assert first["status"] == "succeeded"
        keys = [n["dedup_key"] for n in e.hook.received]
        assert sorted(keys) == [f"{first['id']}.tell[0]", f"{first['id']}.tell[1]"]  # one per item

        e.hook.delay_s = 30  # the next notifications hang in flight...
        run_id = str(await e.runner.submit(loaded, {"type": "manual", "cluster": "eu-west"}))
        await wait_record(
            e,
            run_id,
            lambda r: (
                [i["status"] for i in r["steps"].get("tell", {}).get("items", {}).values()]
                == ["running", "running"]
            ),
            "both items journalled running",
        )
        await e.runner.stop(0)  # ...and the process dies with them in flight
        e.hook.delay_s = 0
        new_leader = fresh_runner(e)
        assert await new_leader.resume_unfinished() == [run_id]
        record = await settle(new_leader, e, run_id)
        assert record["status"] == "needs_attention", record
        assert "(item 0) was in flight" in record["error"]
        assert len(e.hook.received) == 2  # nothing was sent again


async def test_a_compensation_in_flight_at_a_crash_is_not_repeated(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    book = """name: shift
on: {event: manual}
steps:
  - id: drain
    action: lb.drain
    with: {balancer: global, cluster: "{{ event.cluster }}"}
    compensate: {action: http, with: {url: "HANG", timeout: 30s}}
  - {id: boom, action: http, with: {url: "http://127.0.0.1:9/nothing-listens", timeout: 1s}}
"""
    async with silent_server() as hang:
        books = {"shift": book.replace("HANG", hang)}
        async with engine(tmp_path, nats_server, haproxy_binary, books) as e:
            loaded = e.runner.playbooks["shift"]
            run_id = str(await e.runner.submit(loaded, {"type": "manual", "cluster": "eu-west"}))
            await wait_record(
                e,
                run_id,
                lambda r: r["steps"].get("drain-compensate", {}).get("status") == "running",
                "the compensation journalled running",
            )
            await e.runner.stop(0)
            new_leader = fresh_runner(e)
            assert await new_leader.resume_unfinished() == [run_id]
            record = await settle(new_leader, e, run_id)
            assert record["status"] == "needs_attention", record
            attention = [ev for ev in e.events if ev["run_id"] == run_id and ev["type"] == "needs_attention"]
            assert attention and attention[-1]["step"] == "drain-compensate"


async def test_finished_runs_do_not_stay_in_memory(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with engine(tmp_path, nats_server, haproxy_binary, {"drain": DRAIN}) as e:
        e.states["us-east"] = "failed"
        [run_id] = await e.event("cluster.failed", "us-east")
        await e.finished(run_id)
        await e.runner.wait_idle(5)
        assert run_id not in e.runner.runs and not e.runner.active
        assert (await e.record(run_id))["status"] == "succeeded"  # the journal keeps it


async def test_a_run_record_keeps_the_fleet_states_it_saw_not_the_whole_fleet(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    book = """name: page
on: {event: cluster.failed}
steps:
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
  - id: tell
    action: notify
    with:
      notifier: oncall
      summary: "{{ steps.drain.change }}; serving: {{ clusters | selectattr('state', 'ne', 'failed')
        | map(attribute='name') | join(',') }}"
"""
    async with engine(tmp_path, nats_server, haproxy_binary, {"page": book}) as e:
        e.states["us-east"] = "failed"
        [run_id] = await e.event("cluster.failed", "us-east")
        await wait_record(e, run_id, lambda r: r["steps"].get("drain"), "the run started")
        e.states["eu-west"] = "failed"  # later changes do not leak into the run's templates
        record = await e.finished(run_id)
        assert "clusters" not in record["plan"]
        assert record["plan"]["fleet_states"] == {"us-east": "failed"}
        assert [n["summary"] for n in e.hook.received] == [
            "global/us-east weight 100 -> 0; serving: eu-west,ap-south"
        ]
