"""Threshold-crossing report -> weight set on a real HAProxy (DESIGN §10: p99 <= 50 ms).

The daemon runs in-process without probes against an embedded NATS and a real HAProxy. For each
iteration the benchmark publishes `failure_threshold` failing reports for one cluster; the clock starts
when the threshold-crossing report is published and stops when the drain step's `step.succeeded` run
event arrives (the step succeeds only after every HAProxy instance has been read back with weight 0).
Then passing reports bring the cluster back (recovery_hold 0) and the failback restores the weight.

    .venv/bin/python bench/haproxy_failover.py [--iterations 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.bus.embedded import free_port
from orchestrator.core import logs, subjects
from orchestrator.core.config import load_config
from orchestrator.core.models import HealthReport
from orchestrator.runtime.daemon import Daemon
from orchestrator.sandbox.app import AppServer
from orchestrator.sandbox.haproxy import HAProxyProcess

CLUSTERS = {"a": "srv-a", "b": "srv-b", "c": "srv-c"}
PLAYBOOKS = {
    "drain.yaml": """name: drain
on: {event: cluster.failed}
steps:
  - {id: drain, action: lb.drain, with: {balancer: lb, cluster: "{{ event.cluster }}"}}
""",
    "restore.yaml": """name: restore
on: {event: cluster.recovered}
steps:
  - {id: restore, action: lb.restore, with: {balancer: lb, cluster: "{{ event.cluster }}"}}
""",
}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(iterations: int) -> None:
    logs.configure("console", "error")
    work = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    apps = {c: AppServer(c, free_port()) for c in CLUSTERS}
    haproxy = HAProxyProcess(work / "haproxy", {s: ("127.0.0.1", apps[c].port) for c, s in CLUSTERS.items()})
    for app in apps.values():
        await app.start()
    await haproxy.start()
    (work / "playbooks").mkdir()
    for name, text in PLAYBOOKS.items():
        (work / "playbooks" / name).write_text(text)
    members = ", ".join(f"{c}: {s}" for c, s in CLUSTERS.items())
    config_lines = [
        f"state_dir: {work / 'state'}",
        f"api: {{listen: 127.0.0.1:{free_port()}}}",
        "detection: {failure_threshold: 3, success_threshold: 1, quorum: 1, recovery_hold: 0s, "
        "stale_after: 1h}",
        "clusters:",
        *[f"  - {{name: {c}, probes: [{{name: p, tcp: {{host: 127.0.0.1, port: 1}}}}]}}" for c in CLUSTERS],
        "load_balancers:",
        f"  - {{name: lb, driver: haproxy, haproxy: {{admin: ['{haproxy.admin_url}'], backend: web}}, "
        f"members: {{{members}}}}}",
        f"playbooks: {{paths: ['{work / 'playbooks'}']}}",
    ]
    (work / "failover.yaml").write_text("\n".join(config_lines) + "\n")
    daemon = Daemon(load_config(work / "failover.yaml"), run_probes=False)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    await asyncio.wait_for(daemon.ready.wait(), 30)
    assert daemon.bus is not None and daemon.runner is not None
    bus, runner = daemon.bus, daemon.runner
    seq = 0
    arrived: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    async def on_run(msg: Any) -> None:
        event = json.loads(msg.data)
        if event["type"] in ("step.succeeded", "step.failed", "blocked"):
            await arrived.put((f"{event['type']}:{event['step']}", time.perf_counter()))

    await bus.subscribe(subjects.RUNS_ALL, on_run)

    async def report(cluster: str, ok: bool) -> None:
        nonlocal seq
        seq += 1
        r = HealthReport(
            cluster=cluster,
            probe="p",
            vantage="bench",
            boot_id="b1",
            seq=seq,
            ok=ok,
            latency_ms=0.1,
            ts=datetime.now(UTC),
        )
        await bus.publish(subjects.health(cluster, "p"), r.to_json())

    async def expect(kind: str) -> float:
        while True:
            got, at = await asyncio.wait_for(arrived.get(), 10)
            if got == kind:
                return at
            if not got.startswith("step.succeeded"):
                raise RuntimeError(f"unexpected {got}")

    for c in CLUSTERS:
        await report(c, True)
    latencies: list[float] = []
    for i in range(iterations):
        cluster = list(CLUSTERS)[i % len(CLUSTERS)]
        for _ in range(2):
            await report(cluster, False)
        await bus.flush()
        start = time.perf_counter()
        await report(cluster, False)
        done = await expect("step.succeeded:drain")
        latencies.append((done - start) * 1000)
        await runner.wait_idle(10)
        await report(cluster, True)
        await expect("step.succeeded:restore")
        await runner.wait_idle(10)
    stop.set()
    await task
    await haproxy.stop()
    for app in apps.values():
        await app.stop()
    print(f"threshold-crossing report -> HAProxy weight 0 verified, {iterations} drains (ms):")
    print(
        f"  p50 {statistics.median(latencies):.2f}  p90 {percentile(latencies, 90):.2f}  "
        f"p99 {percentile(latencies, 99):.2f}  max {max(latencies):.2f}   (target p99 <= 50)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=50)
    asyncio.run(main(parser.parse_args().iterations))
