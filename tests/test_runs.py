"""The playbook engine against real NATS (journal, commands) and a real HAProxy (through a proxy that
counts the commands it sees): scheduling, guards, preemption, approvals, resume, actions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.actuators.registry import build_balancer
from orchestrator.api.commands import Commands
from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.bus.state import StateStore
from orchestrator.core import subjects
from orchestrator.core.config import Config, load_config
from orchestrator.core.config_daemon import NatsConfig
from orchestrator.notifiers import build_notifier
from orchestrator.playbooks.actions import Services
from orchestrator.playbooks.approvals import ApprovalBook
from orchestrator.playbooks.journal import BusJournal
from orchestrator.playbooks.loader import load_playbooks
from orchestrator.playbooks.runner import Runner
from tests.helpers import AdminCounter, Fleet, HookReceiver, fleet, hook_receiver, wait_for, write_config

pytestmark = pytest.mark.timeout(60)

TOKENS = (
    "[{token: alice-token, role: operator, name: alice}, {token: bob-token, role: operator, name: bob}, "
    "{token: carol-token, role: viewer, name: carol}]"
)


@dataclass
class Engine:
    config: Config
    bus: Bus
    runner: Runner
    journal: BusJournal
    fleet: Fleet
    hook: HookReceiver
    counter: AdminCounter
    states: dict[str, str]
    store: StateStore
    services: Services
    commands: Commands
    events: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)

    async def event(self, kind: str, cluster: str) -> list[str]:
        return await self.runner.on_event({"type": kind, "cluster": cluster, "id": f"{kind}-{time.time()}"})

    async def record(self, run_id: str) -> dict[str, Any]:
        found = await self.journal.load(run_id)
        assert found is not None
        return found

    async def finished(self, run_id: str, timeout_s: float = 15) -> dict[str, Any]:
        async def done() -> bool:
            return any(e["run_id"] == run_id and e["type"] == "finished" for e in self.events)

        await wait_for(done, timeout_s, f"run {run_id} finished")
        return await self.record(run_id)

    def kinds(self, run_id: str) -> list[tuple[str, str | None]]:
        return [(e["type"], e.get("step")) for e in self.events if e["run_id"] == run_id]

    async def command(self, command: str, token: str | None = None, **args: Any) -> dict[str, Any]:
        reply = await self.bus.request(
            subjects.COMMANDS, json.dumps({"command": command, "args": args, "token": token}).encode()
        )
        result: dict[str, Any] = json.loads(reply)
        return result


@asynccontextmanager
async def engine(
    tmp_path: Path,
    nats: EmbeddedNats,
    haproxy_binary: str,
    playbooks: dict[str, str],
    tokens: str = "[]",
    nats_url: str | None = None,
) -> AsyncIterator[Engine]:
    """The engine over real NATS (at `nats_url` when given: a fault-injecting proxy in front of `nats`)."""
    url = nats_url or nats.url
    (tmp_path / "playbooks").mkdir()
    for name, text in playbooks.items():
        (tmp_path / "playbooks" / f"{name}.yaml").write_text(text)
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        counter = AdminCounter(int(f.haproxy.admin_url.rsplit(":", 1)[1]))
        await counter.start()
        config = load_config(
            write_config(
                tmp_path,
                f,
                hook.url,
                nats_url=url,
                playbooks=tmp_path / "playbooks",
                admin_url=counter.url,
                tokens=tokens,
            )
        )
        bus = await Bus.connect(NatsConfig(url=url), tmp_path, name="engine")
        await bus.ensure_topology()
        session = aiohttp.ClientSession()
        states = {c.name: "healthy" for c in config.clusters}
        store = StateStore(bus)
        balancers = {
            lb.name: BalancerActuator(
                build_balancer(lb), {c.name: c.weight for c in config.clusters}, lambda: states, store
            )
            for lb in config.load_balancers
        }
        approvals = ApprovalBook()
        services = Services(
            config,
            balancers,
            {n.name: build_notifier(n, session) for n in config.notifiers},
            lambda: states,
            http=session,
            publish=bus.publish,
            approvals=approvals,
        )
        journal = BusJournal(bus)

        def clusters() -> list[dict[str, Any]]:
            return [
                {"name": c.name, "state": states[c.name], "labels": dict(c.labels), "weight": c.weight}
                for c in config.clusters
            ]

        runner = Runner(services, journal, load_playbooks(config.playbook_paths(), config), clusters, store)

        async def resume(actor: str) -> None:
            return None

        commands = Commands(config, bus, runner, store, approvals, resume, lambda: {})
        await commands.serve_nats()
        e = Engine(config, bus, runner, journal, f, hook, counter, states, store, services, commands)

        async def on_run(msg: Any) -> None:
            e.events.append(json.loads(msg.data))

        async def on_audit(msg: Any) -> None:
            e.audit.append(json.loads(msg.data))

        await bus.subscribe(subjects.RUNS_ALL, on_run)
        await bus.subscribe(subjects.AUDIT, on_audit)
        try:
            yield e
        finally:
            await runner.stop(2)
            await session.close()
            await bus.close()
            await counter.stop()


DRAIN = """name: drain
on: {event: cluster.failed}
steps:
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
  - {id: hold, action: sleep, with: {duration: 300ms}}
"""
RESTORE = """name: restore
on: {event: cluster.recovered}
steps:
  - {id: restore, action: lb.restore, with: {balancer: global, cluster: "{{ event.cluster }}", ramp: RAMP,
     interval: INTERVAL}}
"""


def restore(ramp: str = "[100]", interval: str = "0s", extra: str = "") -> str:
    return RESTORE.replace("RAMP", ramp).replace("INTERVAL", interval) + extra


async def test_same_type_is_deduplicated_and_the_queue_keeps_the_latest(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with engine(tmp_path, nats_server, haproxy_binary, {"drain": DRAIN, "restore": restore()}) as e:
        e.states["us-east"] = "failed"
        [first] = await e.event("cluster.failed", "us-east")
        assert await e.event("cluster.failed", "us-east") == []  # deduplicated while active
        e.states["us-east"] = "healthy"
        [queued] = await e.event("cluster.recovered", "us-east")
        [latest] = await e.event("cluster.recovered", "us-east")  # replaces the queued one
        assert (await e.finished(first))["status"] == "succeeded"
        assert (await e.finished(latest))["status"] == "succeeded"
        dedupes = [ev for ev in e.events if ev["type"] == "deduplicated"]
        assert {d["detail"]["rule"] for d in dedupes} == {"concurrency", "latest_wins"}
        assert next(d for d in dedupes if d["detail"]["rule"] == "latest_wins")["run_id"] == queued
        assert not any(ev["run_id"] == queued and ev["type"] == "started" for ev in e.events)
        assert await e.fleet.weights() == {"eu-west": 100, "us-east": 100, "ap-south": 100}
        assert len(e.counter.sets("us1")) == 2  # one drain, one restore: nothing twice


async def test_a_cluster_that_fails_again_during_its_ramped_failback_is_drained_at_once(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    books = {"drain": DRAIN, "restore": restore("[25, 50, 100]", "3s")}
    async with engine(tmp_path, nats_server, haproxy_binary, books) as e:
        e.states["us-east"] = "failed"
        await e.finished((await e.event("cluster.failed", "us-east"))[0])
        e.states["us-east"] = "healthy"
        [failback] = await e.event("cluster.recovered", "us-east")

        async def ramping() -> bool:
            return (await e.fleet.weights())["us-east"] == 25

        await wait_for(ramping, 10, "the first ramp step")
        e.states["us-east"] = "failed"
        failed_at = time.monotonic()
        [drain] = await e.event("cluster.failed", "us-east")

        async def drained() -> bool:
            return (await e.fleet.weights())["us-east"] == 0

        await wait_for(drained, 5, "drained again", poll_s=0.01)
        took = time.monotonic() - failed_at
        assert took < 1.5, f"drained {took:.2f}s after the new failure: it waited for the ramp interval"
        record = await e.finished(failback)
        assert record["status"] == "preempted"
        assert ("preempted", None) in e.kinds(failback)
        assert (await e.finished(drain))["status"] == "succeeded"
        # the original weight was kept: a later restore puts back 100, not 25
        assert await e.store.original_lb("global", "us-east") == 100


async def test_a_ramped_failback_never_lowers_a_weight_it_did_not_take(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    """A cluster that was only degraded (below quorum) recovers without having been drained: its
    failback's ramp must not take it from 100 down to 25 and back up (found by `failover demo`)."""
    books = {"restore": restore("[25, 50, 100]", "200ms")}
    async with engine(tmp_path, nats_server, haproxy_binary, books) as e:
        [failback] = await e.event("cluster.recovered", "ap-south")
        record = await e.finished(failback)
        assert record["status"] == "succeeded"
        assert await e.fleet.weights() == {"eu-west": 100, "us-east": 100, "ap-south": 100}
        assert e.counter.sets("ap1") == []  # not one write: every ramp step is at or under 100
        # a cluster drained to 0 still ramps through every step
        await e.services.balancers["global"].set_weight("us-east", 0)
        [ramped] = await e.event("cluster.recovered", "us-east")
        assert (await e.finished(ramped))["status"] == "succeeded"
        assert [c.split()[-1] for c in e.counter.sets("us1")][-3:] == ["25", "50", "100"]


async def test_two_runs_racing_never_drain_the_last_healthy_cluster(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    now = """name: drain-now
on: {event: manual}
steps:
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
"""
    async with engine(tmp_path, nats_server, haproxy_binary, {"drain-now": now}) as e:
        await e.services.balancers["global"].set_weight("ap-south", 0)
        loaded = e.runner.playbooks["drain-now"]
        ids = await asyncio.gather(
            *(e.runner.submit(loaded, {"type": "manual", "cluster": c}) for c in ("eu-west", "us-east"))
        )
        records = [await e.finished(i) for i in ids if i]
        assert sorted(r["status"] for r in records) == ["failed", "succeeded"]
        weights = await e.fleet.weights()
        assert sorted([weights["eu-west"], weights["us-east"]]) == [0, 100]
        blocked = [ev for ev in e.events if ev["type"] == "blocked"]
        assert len(blocked) == 1 and blocked[0]["detail"]["rule"] == "min_healthy_clusters"


async def test_approval_records_who_decided_and_checks_who_may(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    book = """name: careful
on: {event: manual}
steps:
  - {id: ask, action: approval, with: {approvers: [alice], timeout: 20s}}
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
on_failure:
  steps:
    - {action: notify, with: {notifier: oncall, summary: "not drained: {{ error }}"}}
"""
    async with engine(tmp_path, nats_server, haproxy_binary, {"careful": book}, tokens=TOKENS) as e:
        loaded = e.runner.playbooks["careful"]
        run_id = await e.runner.submit(loaded, {"type": "manual", "cluster": "us-east"})
        assert run_id

        async def waiting() -> bool:
            return run_id in e.services.approvals.pending()

        await wait_for(waiting, 5, "waiting for approval")
        assert (await e.command("approve", None, run=run_id))["status"] == 401
        assert (await e.command("approve", "carol-token", run=run_id))["status"] == 403
        answer = await e.command("approve", "bob-token", run=run_id)
        assert answer["status"] == 409 and "not among the approvers" in answer["error"]
        assert (await e.command("approve", "alice-token", run=run_id))["ok"]
        record = await e.finished(run_id)
        assert record["status"] == "succeeded"
        assert record["steps"]["ask"]["result"]["by"] == "alice"
        assert (await e.fleet.weights())["us-east"] == 0
        await wait_for(lambda: len(e.audit) >= 4, 5, "audit records")
        assert [(a["actor"], a["command"], a["result"][:5]) for a in e.audit] == [
            ("unauthenticated", "approve", "error"),
            ("carol", "approve", "error"),
            ("bob", "approve", "error"),
            ("alice", "approve", "ok"),
        ]
        assert not any(t in json.dumps(e.audit) for t in ("alice-token", "bob-token", "carol-token"))

        second = await e.runner.submit(loaded, {"type": "manual", "cluster": "eu-west"})
        await wait_for(lambda: second in e.services.approvals.pending(), 5, "second approval")
        assert (await e.command("deny", "alice-token", run=second))["ok"]
        record = await e.finished(second)
        assert record["status"] == "failed" and "denied by alice" in record["error"]
        assert (await e.fleet.weights())["eu-west"] == 100
        await wait_for(lambda: any("denied by alice" in n["summary"] for n in e.hook.received), 5, "page")


async def test_approval_timeout_proceeds_or_aborts(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    book = """name: timed-NAME
on: {event: manual}
concurrency: "NAME"
steps:
  - {id: ask, action: approval, with: {timeout: 300ms, on_timeout: NAME}}
  - {id: tell, action: notify, with: {notifier: oncall, summary: "NAME went ahead"}}
"""
    books = {n: book.replace("NAME", n) for n in ("proceed", "abort")}
    async with engine(tmp_path, nats_server, haproxy_binary, books) as e:
        ids = {
            n: await e.runner.submit(
                e.runner.playbooks[f"timed-{n}"], {"type": "manual", "cluster": "eu-west"}
            )
            for n in books
        }
        assert (await e.finished(str(ids["proceed"])))["status"] == "succeeded"
        record = await e.finished(str(ids["abort"]))
        assert record["status"] == "failed" and "no approval within" in record["error"]
        assert [n["summary"] for n in e.hook.received] == ["proceed went ahead"]


async def test_cooldown_delays_a_failback_but_never_a_drain(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    guarded = "guards: {cooldown: 1500ms}\n"
    books = {
        "drain": DRAIN.replace("steps:", guarded + "steps:"),
        "restore": restore(extra="").replace("steps:", guarded + "steps:"),
    }
    async with engine(tmp_path, nats_server, haproxy_binary, books) as e:
        for _ in range(2):  # fail, recover, fail, recover: drains never wait, the second failback does
            e.states["us-east"] = "failed"
            t0 = time.monotonic()
            [drain] = await e.event("cluster.failed", "us-east")
            assert (await e.finished(drain))["status"] == "succeeded"
            assert time.monotonic() - t0 < 1.2
            e.states["us-east"] = "healthy"
            [back] = await e.event("cluster.recovered", "us-east")
            assert (await e.finished(back))["status"] == "succeeded"
        delayed = [ev for ev in e.events if ev["type"] == "blocked"]
        assert [d["detail"]["rule"] for d in delayed] == ["cooldown"]
        assert any(
            ev["detail"].get("guard_bypassed") == "cooldown" for ev in e.events if ev["type"] == "started"
        )


async def test_pause_blocks_runs_and_a_blocked_drain_pages(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    book = (
        DRAIN
        + """on_failure:
  steps:
    - action: notify
      with: {notifier: oncall, severity: critical, summary: "{{ event.cluster }} NOT drained: {{ error }}"}
"""
    )
    async with engine(tmp_path, nats_server, haproxy_binary, {"drain": book}, tokens=TOKENS) as e:
        assert (await e.command("pause", "alice-token", cluster="us-east", **{"for": "1h"}))["ok"]
        e.states["us-east"] = "failed"
        [run_id] = await e.event("cluster.failed", "us-east")
        record = await e.finished(run_id)
        assert record["status"] == "blocked" and "paused by alice" in record["error"]
        assert (await e.fleet.weights())["us-east"] == 100
        await wait_for(lambda: any("NOT drained" in n["summary"] for n in e.hook.received), 5, "page")
        assert (await e.command("resume", "alice-token", cluster="us-east"))["ok"]
        [again] = await e.event("cluster.failed", "us-east")
        assert (await e.finished(again))["status"] == "succeeded"


async def test_an_interrupted_notification_is_not_sent_twice(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    book = """name: tell
on: {event: cluster.failed}
steps:
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
  - {id: page, action: notify, with: {notifier: oncall, summary: "{{ event.cluster }} failed"}}
on_failure:
  steps:
    - {action: notify, with: {notifier: oncall, summary: "check {{ failed_step }}: {{ error }}"}}
"""
    async with engine(tmp_path, nats_server, haproxy_binary, {"tell": book}) as e:
        e.hook.delay_s = 30  # the page hangs...
        e.states["us-east"] = "failed"
        [run_id] = await e.event("cluster.failed", "us-east")

        async def in_flight() -> bool:
            record = await e.journal.load(run_id)
            return bool(record and record["steps"].get("page", {}).get("status") == "running")

        await wait_for(in_flight, 5, "the page in flight")
        await e.runner.stop(0)  # ...and the process dies with it in flight
        e.hook.delay_s = 0
        fresh = Runner(e.services, BusJournal(e.bus), e.runner.playbooks, e.runner.clusters, e.store)
        assert await fresh.resume_unfinished() == [run_id]
        await fresh.wait_idle(10)
        record = await e.record(run_id)
        assert record["status"] == "needs_attention" and record["failed_step"] == "page"
        assert record["steps"]["drain"]["status"] == "succeeded"
        assert len(e.counter.sets("us1")) == 1  # the finished drain was not repeated
        assert [n["summary"] for n in e.hook.received] == [
            "check page: notify was in flight when the daemon stopped; it is not idempotent, so it was not "
            "repeated: check whether it happened"
        ]


async def test_compensation_is_opt_in_and_never_undoes_a_drain_while_failed(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    book = """name: shift
on: {event: manual}
steps:
  - id: drain
    action: lb.drain
    with: {balancer: global, cluster: "{{ event.cluster }}"}
    compensate: {action: lb.restore, with: {balancer: global, cluster: "{{ event.cluster }}"}}
  - {id: boom, action: http, with: {url: "http://127.0.0.1:9/nothing-listens", timeout: 1s}}
"""
    async with engine(tmp_path, nats_server, haproxy_binary, {"shift": book}) as e:
        loaded = e.runner.playbooks["shift"]
        record = await e.finished(
            str(await e.runner.submit(loaded, {"type": "manual", "cluster": "eu-west"}))
        )
        assert record["status"] == "failed" and record["failed_step"] == "boom"
        assert (await e.fleet.weights())["eu-west"] == 100  # compensated: restored
        e.states["us-east"] = "failed"
        record = await e.finished(
            str(await e.runner.submit(loaded, {"type": "manual", "cluster": "us-east"}))
        )
        assert (await e.fleet.weights())["us-east"] == 0  # not undone: us-east is still failed
        blocked = [ev for ev in e.events if ev["run_id"] == record["id"] and ev["type"] == "blocked"]
        assert blocked[0]["detail"]["rule"] == "no_undo_while_failed"


async def test_wait_for_http_and_nats_publish(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    book = """name: chain
on: {event: manual}
steps:
  - id: ready
    action: wait_for
    with: {expression: "clusters | selectattr('state', 'eq', 'healthy') | list | length == 3", poll: 100ms,
           timeout: 5s}
  - id: call
    action: http
    with: {url: "HOOK", method: POST, body: {cluster: "{{ event.cluster }}"}, expect_status: [401]}
  - id: say
    action: nats.publish
    with:
      subject: ops.failover.done
      payload: {cluster: "{{ event.cluster }}", status: "{{ steps.call.status }}"}
"""
    async with engine(tmp_path, nats_server, haproxy_binary, {}) as e:
        (tmp_path / "playbooks" / "chain.yaml").write_text(book.replace("HOOK", e.hook.url))
        e.runner.set_playbooks(load_playbooks(e.config.playbook_paths(), e.config))
        got: list[bytes] = []

        async def on(msg: Any) -> None:
            got.append(msg.data)

        await e.bus.subscribe("ops.failover.done", on)
        e.states["ap-south"] = "degraded"
        run_id = str(
            await e.runner.submit(e.runner.playbooks["chain"], {"type": "manual", "cluster": "ap-south"})
        )
        await asyncio.sleep(0.5)
        assert (await e.record(run_id))["steps"]["ready"]["status"] == "running"  # still waiting
        e.states["ap-south"] = "healthy"
        record = await e.finished(run_id)
        assert record["status"] == "succeeded", record
        assert record["steps"]["ready"]["result"]["polls"] >= 3
        assert e.hook.rejected == 1  # the http action sends no signature: the receiver refused it (401)
        await wait_for(lambda: bool(got), 5, "the NATS message")
        assert json.loads(got[0]) == {
            "cluster": "ap-south",
            "status": 401,
        }  # a single expression keeps its type


def test_nats_publish_refuses_our_own_subjects(tmp_path: Path) -> None:
    from orchestrator.core.errors import ValidationFailed

    (tmp_path / "p.yaml").write_text("""name: spoof
on: {event: manual}
steps:
  - {action: nats.publish, with: {subject: failover.health.eu.x, payload: {}}}
""")
    with pytest.raises(ValidationFailed, match="outside failover"):
        load_playbooks([tmp_path], None)
