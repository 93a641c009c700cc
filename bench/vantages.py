"""Per-report CPU cost against the number of vantages (issue 12, finding 4). Prints figures; asserts nothing.

Each report goes through the detector service's handler exactly as a live message does (JSON parse,
subject check, admission, the detector's transition), on this thread, timed with the process CPU clock:
what one report costs the event loop. No NATS is involved, so the figure is the daemon's own cost.

- listed N: `detection.vantages` lists N vantages, all reporting 10 clusters. `healthy`: a round over a
  healthy fleet. `onset`: the two rounds in which every vantage starts seeing one cluster fail (each
  report evaluates that cluster over every vantage's track: O(N)). `failed`: later rounds, the cluster
  failed and every vantage past its threshold (nothing can change; no evaluation).
- unlisted N: three vantages listed; reports come from N invented names in turn (all dropped as
  `unknown_vantage`, remembered in the bounded table for /api/v1/status).

    .venv/bin/python bench/vantages.py [--sizes 1,100,1000] [--unlisted 1,100,4000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from typing import Any, cast

import structlog

from orchestrator.bus.client import Bus
from orchestrator.core import subjects
from orchestrator.core.metrics import Metrics
from orchestrator.detection.machine import ClusterState, DetectorState, ProbeSpec, Settings
from orchestrator.detection.service import DetectionService

CLUSTERS = [f"c{i}" for i in range(10)]


def service(listed: list[str]) -> DetectionService:
    state = DetectorState(
        Settings(
            failure_threshold=2,
            success_threshold=1,
            stale_after_s=3600,  # a round at 1,000+ vantages takes longer than the default 5 s
            max_failed_fraction=1.0,
            vantages=tuple(listed),
        ),
        {c: {"p": ProbeSpec()} for c in CLUSTERS},
    )
    for c in CLUSTERS:
        state.clusters[c] = ClusterState(c)

    async def on_event(_event: dict[str, Any]) -> None:
        return None

    # the handler never touches the bus: outputs are queued for the publisher task, not run here
    return DetectionService(state, cast(Bus, object()), Metrics(), on_event)


class Reports:
    def __init__(self) -> None:
        self.seq = 0

    def make(self, vantage: str, cluster: str, ok: bool) -> tuple[str, bytes]:
        self.seq += 1
        ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        body = (
            f'{{"v":1,"cluster":"{cluster}","probe":"p","vantage":"{vantage}","boot_id":"b",'
            f'"seq":{self.seq},"ok":{"true" if ok else "false"},"latency_ms":1.0,"detail":"",'
            f'"ts":"{ts}"}}'
        )
        return subjects.health(vantage, cluster, "p"), body.encode()


def cost_us(svc: DetectionService, messages: list[tuple[str, bytes]]) -> float:
    start = time.process_time()
    for subject, data in messages:
        svc._handle(subject, data)
    spent = time.process_time() - start
    while not svc._outputs.empty():  # what the publisher task would have taken
        svc._outputs.get_nowait()
        svc._outputs.task_done()
    return spent / len(messages) * 1e6


def listed(n: int, rounds: int) -> tuple[float, float, float]:
    vantages = [f"v{i}" for i in range(n)]
    svc = service(vantages)
    r = Reports()
    for _ in range(3):  # healthy everywhere, past the success threshold
        cost_us(svc, [r.make(v, c, True) for v in vantages for c in CLUSTERS])
    healthy = [cost_us(svc, [r.make(v, c, True) for v in vantages for c in CLUSTERS]) for _ in range(rounds)]
    onset = [cost_us(svc, [r.make(v, "c0", False) for v in vantages]) for _ in range(2)]
    assert svc.cluster_view()["c0"] == "failed", svc.cluster_view()
    failed = [cost_us(svc, [r.make(v, "c0", False) for v in vantages]) for _ in range(rounds)]
    return min(healthy), sum(onset) / len(onset), min(failed)


def unlisted(n: int, reports: int) -> float:
    svc = service(["v1", "v2", "v3"])
    r = Reports()
    names = [f"fake{i}" for i in range(n)]
    cost_us(svc, [r.make(names[i % n], "c0", False) for i in range(max(n, 2000))])  # the table is full
    return cost_us(svc, [r.make(names[i % n], "c0", False) for i in range(reports)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,100,1000")
    parser.add_argument("--unlisted", default="1,100,4000,100000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    asyncio.set_event_loop(asyncio.new_event_loop())  # the service's queue wants a loop to exist
    print("per-report CPU (µs, best of rounds)")
    print(f"{'listed vantages':>16} {'healthy':>10} {'onset':>10} {'failed':>10}")
    for n in (int(s) for s in args.sizes.split(",")):
        healthy, onset, failed = listed(n, args.rounds)
        print(f"{n:>16} {healthy:>10.1f} {onset:>10.1f} {failed:>10.1f}")
    print(f"{'unlisted names':>16} {'per report':>10}")
    for n in (int(s) for s in args.unlisted.split(",")):
        print(f"{n:>16} {unlisted(n, 20_000):>10.1f}")


if __name__ == "__main__":
    main()
