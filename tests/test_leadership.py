"""Two daemons on one NATS: exactly one acts. The leader dies (SIGKILL) or freezes (SIGSTOP) in the middle
of a run with a slow step; the follower takes over within the lease and completes the run, every step
once, one HAProxy change per step. A deposed leader that wakes up acts on nothing."""

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

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.bus.leadership import StateDirLock
from orchestrator.core import subjects
from orchestrator.core.config_daemon import NatsConfig
from orchestrator.core.errors import PermanentError
from tests.daemons import DaemonProcess, stop_all
from tests.helpers import AdminCounter, HookReceiver, fleet, hook_receiver, wait_for, write_config

pytestmark = pytest.mark.timeout(120)

LEASE = "leadership: {lease_ttl: 2s, renew_interval: 400ms, margin: 600ms}"
SLOW = """name: slow-failover
on: {event: cluster.failed}
steps:
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
  - {id: hold, action: sleep, with: {duration: 3s}}
  - {id: shift, action: lb.set_weights, with: {balancer: global, weights: {eu-west: 150}}}
  - {id: page, action: notify, with: {notifier: oncall, summary: "{{ event.cluster }} handled"}}
"""


@dataclass
class Pair:
    a: DaemonProcess
    b: DaemonProcess
    counter: AdminCounter
    hook: HookReceiver
    fleet: Any
    bus: Bus
    runs: list[dict[str, Any]] = field(default_factory=list)
    system: list[dict[str, Any]] = field(default_factory=list)


@asynccontextmanager
async def pair(tmp_path: Path, nats: EmbeddedNats, haproxy_binary: str) -> AsyncIterator[Pair]:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "slow.yaml").write_text(SLOW)
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        counter = AdminCounter(int(f.haproxy.admin_url.rsplit(":", 1)[1]))
        await counter.start()
        replicas = []
        for name in ("a", "b"):
            work = tmp_path / name
            work.mkdir()
            api = free_port()
            config = write_config(
                work,
                f,
                hook.url,
                nats_url=nats.url,
                playbooks=tmp_path / "playbooks",
                admin_url=counter.url,
                api_port=api,
                extra=LEASE,
            )
            config.write_text(config.read_text().replace("vantage: test", f"vantage: {name}"))
            replicas.append(DaemonProcess(config, tmp_path / f"{name}.log", api, name))
        bus = await Bus.connect(NatsConfig(url=nats.url), tmp_path, name="observer")
        await bus.ensure_topology()
        p = Pair(replicas[0], replicas[1], counter, hook, f, bus)

        async def on_run(msg: Any) -> None:
            p.runs.append(json.loads(msg.data))

        async def on_system(msg: Any) -> None:
            p.system.append(json.loads(msg.data))

        await bus.subscribe(subjects.RUNS_ALL, on_run)
        await bus.subscribe(subjects.SYSTEM_EVENTS, on_system)
        try:
            await p.a.start()
            await p.a.wait_leads()
            await p.b.start()
            await p.b.wait_ready()
            assert not await p.b.leads()
            yield p
        finally:
            await stop_all((p.a, p.b))
            await bus.close()
            await counter.stop()


async def fail_and_wait_for_the_slow_step(p: Pair) -> str:
    await asyncio.sleep(1.0)  # healthy rounds
    await p.fleet.apps["us-east"].stop()

    async def sleeping() -> bool:
        return any(r["type"] == "step.started" and r["step"] == "hold" for r in p.runs)

    await wait_for(sleeping, 15, "the slow step running on the leader")
    return str(next(r["run_id"] for r in p.runs if r["step"] == "hold"))


def assert_once(p: Pair, run_id: str) -> None:
    succeeded = [r["step"] for r in p.runs if r["run_id"] == run_id and r["type"] == "step.succeeded"]
    assert succeeded == ["drain", "hold", "shift", "page"], succeeded
    assert [c.split()[-1] for c in p.counter.sets("us1")] == ["0"]
    assert [c.split()[-1] for c in p.counter.sets("eu1")] == ["150"]
    assert [n["summary"] for n in p.hook.received] == ["us-east handled"]


async def test_the_follower_takes_over_a_killed_leaders_run(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with pair(tmp_path, nats_server, haproxy_binary) as p:
        # a command sent to the follower's API is executed (and audited) by the leader
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{p.b.api}/api/v1/commands",
                json={"command": "pause", "args": {"cluster": "ap-south"}},
            ) as r,
        ):
            assert r.status == 200, await r.text()
        assert await Bus.kv_get(p.bus.kv.state, "pause.cluster.ap-south") is not None
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{p.b.api}/api/v1/commands",
                json={"command": "resume", "args": {"cluster": "ap-south"}},
            ) as r,
        ):
            assert r.status == 200
        run_id = await fail_and_wait_for_the_slow_step(p)
        await p.a.kill()
        killed = time.monotonic()
        took = await wait_for(p.b.leads, 10, "b leads")
        print(f"\nleader SIGKILLed -> follower leads after {took:.2f}s (lease 2s, renew 400ms)")
        assert took < 2 + 0.4 + 1.0  # within the lease TTL plus one renew interval (plus polling slack)

        async def finished() -> bool:
            return any(r["run_id"] == run_id and r["type"] == "finished" for r in p.runs)

        await wait_for(finished, 15, "the run finished on b")
        assert time.monotonic() - killed < 10
        assert_once(p, run_id)
        changed = [e for e in p.system if e["type"] == "leader.changed"]
        assert len({e["detail"]["holder"] for e in changed}) == 2  # a led, then b
        assert changed[-1]["detail"]["term"] > changed[0]["detail"]["term"]


async def test_a_deposed_leader_that_wakes_up_acts_on_nothing(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with pair(tmp_path, nats_server, haproxy_binary) as p:
        run_id = await fail_and_wait_for_the_slow_step(p)
        p.a.freeze()  # frozen mid-run: a GC pause, a stuck VM, a partition
        await wait_for(p.b.leads, 10, "b leads")

        async def finished() -> bool:
            return any(r["run_id"] == run_id and r["type"] == "finished" for r in p.runs)

        await wait_for(finished, 15, "the run finished on b")
        seen = len(p.counter.commands)
        found = await Bus.kv_get(p.bus.kv.runs, f"run.{run_id}")
        assert found is not None
        p.a.thaw()  # it wakes up believing it was in the middle of a sleep
        await asyncio.sleep(3.0)
        assert await p.b.leads() and not await p.a.leads()
        assert [c for c in p.counter.commands[seen:] if c.startswith("set weight")] == []
        after = await Bus.kv_get(p.bus.kv.runs, f"run.{run_id}")
        assert after is not None and after[1] == found[1]  # the journal was not written again
        assert_once(p, run_id)
        log = (tmp_path / "a.log").read_text()
        assert "leader.deposed" in log


def test_an_embedded_nats_refuses_a_second_replica(tmp_path: Path) -> None:
    first = StateDirLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(PermanentError, match="one replica only"):
            StateDirLock(tmp_path).acquire()
    finally:
        first.release()
    StateDirLock(tmp_path).acquire()  # free again once released
