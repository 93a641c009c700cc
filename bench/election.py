"""What an election does with the run journal, with 10,000 finished runs in it. Prints figures; asserts
nothing.

A real nats-server. The journal is first written the way the previous version wrote it (bucket history 5,
no byte limit, records only), as a deployment that upgrades finds it: 10,000 finished runs and a handful
of unfinished ones, with records the size a run on a 1,000-cluster fleet has today (the plan embeds the
fleet, ~107 KB) and, in a second round, small ones. Measured:

- the old `unfinished()` (read every record), for comparison;
- `ensure_topology` bringing the bucket to history 1 and its byte limit, and the one-time migration;
- `unfinished()` in a fresh process (what `Runner.resume_unfinished()` reads at every election, goal
  under 1 s), `recent(50)` (one page of the API, the dashboard, `failover ctl runs`);
- a retention pass with the defaults (7 days, 5,000 runs): the first deletes 5,000 runs, the next finds
  nothing to do.

    .venv/bin/python bench/election.py [--runs 10000] [--unfinished 5] [--clusters 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nats.js import api

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core import subjects
from orchestrator.core.config_daemon import NatsConfig, RunsRetentionConfig
from orchestrator.playbooks.journal import UNFINISHED, BusJournal
from orchestrator.runtime.retention import RunRetention

REPEAT = 5


def rfc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def record(run_id: str, status: str, created: float, fleet: list[dict[str, Any]]) -> dict[str, Any]:
    """A record as the runner writes it for a `cluster.failed` run; `fleet` is the cluster view its plan
    embeds (empty for the small records)."""
    survivors = [c["name"] for c in fleet if c["state"] == "healthy"]
    return {
        "id": run_id,
        "playbook": "cluster-failover",
        "playbook_sha256": "5f1c" * 16,
        "event": {
            "v": 1,
            "id": f"ev-{run_id}",
            "type": "cluster.failed",
            "cluster": "cluster-0007",
            "from": "healthy",
            "to": "failed",
            "reason": "3 of 3 vantages see ingress failing",
            "ts": rfc(created),
        },
        "key": "cluster-0007",
        "status": status,
        "created_at": rfc(created),
        "force": False,
        "actor": None,
        "plan": {
            "steps": [
                {"id": "drain", "action": "lb.drain", "with": {"cluster": "cluster-0007"}},
                {"id": "absorb", "action": "k8s.scale", "for_each": survivors, "with": {"mode": "absorb"}},
                {"id": "page", "action": "notify", "with": {"notifier": "oncall", "severity": "critical"}},
            ],
            "on_failure": [],
            "clusters": fleet,
        },
        "steps": {
            "drain": {"status": "succeeded", "attempts": 1, "before": {"global": 100}},
            "absorb": {"status": "succeeded" if status not in UNFINISHED else "running", "attempts": 1},
        },
        **({} if status in UNFINISHED else {"finished_at": rfc(created + 30)}),
    }


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call()
    return time.perf_counter() - started, result


async def repeated(call: Callable[[], Awaitable[Any]]) -> str:
    times = [(await timed(call))[0] for _ in range(REPEAT)]
    return f"p50 {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms"


async def one_round(work: Path, label: str, runs: int, unfinished: int, fleet: list[dict[str, Any]]) -> None:
    nats = EmbeddedNats(work / label / "nats")
    await nats.start()
    bus = await Bus.connect(NatsConfig(url=nats.url), work / label, name="bench-election")
    try:
        # the previous version's bucket and records
        await bus.js.create_key_value(api.KeyValueConfig(bucket=subjects.KV_RUNS, history=5))
        kv = await bus.js.key_value(subjects.KV_RUNS)
        now = time.time()
        size = len(json.dumps(record("0" * 16, "succeeded", now, fleet), separators=(",", ":")))
        gate = asyncio.Semaphore(32)

        async def write(i: int, status: str, created: float) -> None:
            async with gate:
                await Bus.kv_cas(kv, f"run.{i:016x}", record(f"{i:016x}", status, created, fleet), None)

        spread = 3 * 86400 / runs  # runs over the last 3 days: retention deletes by count
        took, _ = await timed(
            lambda: asyncio.gather(
                *(write(i, "succeeded", now - 3 * 86400 + i * spread) for i in range(runs)),
                *(write(runs + i, "running", now - 60 + i) for i in range(unfinished)),
            )
        )
        info = await bus.js.stream_info(f"KV_{subjects.KV_RUNS}")
        print(f"\n{label}: {runs} finished + {unfinished} unfinished runs, records of {size / 1024:.1f} KB")
        print(
            f"  written the old way in {took:.1f} s; bucket holds {(info.state.bytes or 0) / 2**20:.0f} MiB"
        )

        async def old_unfinished() -> list[Any]:
            entries = await Bus.kv_entries(kv, "run.")
            return [r for r, _rev in entries.values() if r.get("status") in UNFINISHED]

        took, found = await timed(old_unfinished)
        print(
            f"  before: unfinished() reading every record        {took * 1000:9.1f} ms ({len(found)} found)"
        )

        took, _ = await timed(bus.ensure_topology)
        info = await bus.js.stream_info(f"KV_{subjects.KV_RUNS}")
        limit = "none (deferred: the bucket holds more)" if (info.config.max_bytes or -1) < 0 else "set"
        print(
            f"  ensure_topology (history {info.config.max_msgs_per_subject}, byte limit {limit})"
            f" {took * 1000:9.1f} ms"
        )
        took, found = await timed(BusJournal(bus).unfinished)
        print(
            f"  one-time migration (first unfinished())          {took * 1000:9.1f} ms ({len(found)} found)"
        )

        async def election() -> list[dict[str, Any]]:
            return await BusJournal(bus).unfinished()  # a new leader: nothing cached

        found = await election()
        assert len(found) == unfinished, len(found)
        print(f"  election: unfinished() in a fresh process        {await repeated(election)}")
        page = await repeated(lambda: BusJournal(bus).recent(50))
        print(f"  recent(50), one API page                         {page}")
        retention = RunRetention(BusJournal(bus), RunsRetentionConfig())
        took, first = await timed(retention.pass_once)
        print(
            f"  retention, first pass (deleted {first.deleted}, kept {first.kept})    {took * 1000:9.1f} ms"
        )
        print(f"  retention, next pass (nothing to delete)         {await repeated(retention.pass_once)}")
        print(f"  election after retention                         {await repeated(election)}")
        info = await bus.js.stream_info(f"KV_{subjects.KV_RUNS}")
        held = (info.state.bytes or 0) / 2**20
        print(f"  bucket after retention: {held:.0f} MiB, {info.state.messages} messages")
    finally:
        await bus.close()
        await nats.stop()


async def main(runs: int, unfinished: int, clusters: int) -> None:
    fleet = [
        {
            "name": f"cluster-{i:04d}",
            "state": "failed" if i == 7 else "healthy",
            "labels": {"region": f"eu-{i % 12:02d}", "tier": "gold" if i % 3 else "std"},
            "weight": 100,
        }
        for i in range(clusters)
    ]
    with tempfile.TemporaryDirectory(prefix="bench-election-") as tmp:
        await one_round(Path(tmp), f"{clusters}-cluster records", runs, unfinished, fleet)
        await one_round(Path(tmp), "small records", runs, unfinished, [])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--unfinished", type=int, default=5)
    parser.add_argument("--clusters", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.unfinished, args.clusters))
