"""A daemon killed with SIGKILL in the middle of a slow step, then started again, finishes the run: every
step appears once in the journal, HAProxy saw one change per step, nothing was paged twice."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core import subjects
from orchestrator.core.config_daemon import NatsConfig
from tests.daemons import DaemonProcess, stop_all
from tests.helpers import AdminCounter, fleet, hook_receiver, wait_for, write_config

pytestmark = pytest.mark.timeout(90)

SLOW = """name: slow-failover
on: {event: cluster.failed}
steps:
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"}}
  - {id: hold, action: sleep, with: {duration: 3s}}
  - {id: shift, action: lb.set_weights, with: {balancer: global, weights: {eu-west: 150}}}
  - id: page
    action: notify
    with: {notifier: oncall, summary: "{{ event.cluster }}: {{ steps.drain.change }}"}
"""


async def test_sigkill_during_a_slow_step_then_restart_finishes_the_run_once(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "slow.yaml").write_text(SLOW)
    log = tmp_path / "daemon.log"
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        counter = AdminCounter(int(f.haproxy.admin_url.rsplit(":", 1)[1]))
        await counter.start()
        config = write_config(
            tmp_path,
            f,
            hook.url,
            nats_url=nats_server.url,
            playbooks=tmp_path / "playbooks",
            admin_url=counter.url,
        )
        bus = await Bus.connect(NatsConfig(url=nats_server.url), tmp_path, name="observer")
        await bus.ensure_topology()
        runs: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []

        async def on_run(msg: Any) -> None:
            runs.append(json.loads(msg.data))

        async def on_event(msg: Any) -> None:
            events.append(json.loads(msg.data))

        await bus.subscribe(subjects.RUNS_ALL, on_run)
        await bus.subscribe("failover.events.cluster.>", on_event)
        first = await DaemonProcess(config, log, name="first").start()
        second = DaemonProcess(config, log, name="second")
        try:
            await asyncio.sleep(2)  # healthy rounds
            await f.apps["us-east"].stop()

            async def sleeping() -> bool:
                return any(r["type"] == "step.started" and r["step"] == "hold" for r in runs)

            await wait_for(sleeping, 15, "the slow step running")
            run_id = next(r["run_id"] for r in runs if r["step"] == "hold")

            async def journalled() -> bool:  # step.started is published before the step saves it
                record = await Bus.kv_get(bus.kv.runs, f"run.{run_id}")
                return record is not None and "until" in record[0]["steps"]["hold"]

            await wait_for(journalled, 5, "the slow step's deadline journalled")
            found = await Bus.kv_get(bus.kv.runs, f"run.{run_id}")
            assert found is not None
            until = found[0]["steps"]["hold"]["until"]  # the absolute deadline is in the journal
            assert await first.kill() == -signal.SIGKILL
            killed_at = time.time()

            await second.start()

            async def finished() -> bool:
                return any(r["run_id"] == run_id and r["type"] == "finished" for r in runs)

            await wait_for(finished, 20, "the resumed run finished")
            record = (await Bus.kv_get(bus.kv.runs, f"run.{run_id}"))[0]  # type: ignore[index]
        finally:
            await stop_all((first, second))
            await bus.close()
            await counter.stop()

        assert record["status"] == "succeeded", record
        assert [s for s in record["steps"] if record["steps"][s]["status"] == "succeeded"] == [
            "drain",
            "hold",
            "shift",
            "page",
        ]
        succeeded = [r["step"] for r in runs if r["run_id"] == run_id and r["type"] == "step.succeeded"]
        assert succeeded == ["drain", "hold", "shift", "page"]  # each exactly once, across both processes
        resumed = next(r for r in runs if r["run_id"] == run_id and r["type"] == "resumed")
        assert resumed["detail"]["done"] == ["drain"] and resumed["detail"]["in_flight"] == ["hold"]
        assert record["steps"]["hold"]["result"]["slept_until"] == until  # the same deadline, not 3 s more
        assert until - killed_at < 3
        # HAProxy saw one change per step: one drain of us1, one set of eu1
        assert [c.split()[-1] for c in counter.sets("us1")] == ["0"]
        assert [c.split()[-1] for c in counter.sets("eu1")] == ["150"]
        assert [n["summary"] for n in hook.received] == ["us-east: global/us-east weight 100 -> 0"]
        assert [e["type"] for e in events if e["cluster"] == "us-east"] == ["cluster.failed"]
