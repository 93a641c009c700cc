"""Detector benchmark (DESIGN §10; issue 3). Prints figures; asserts nothing.

1. The pure detector: reports/s through `transition()` (objects pre-built) and with JSON parsing.
2. Burst ingest, same run: a burst of health reports is published once; the daemon's detector pipeline
   (a separate `failover run --no-probes` process) and a raw nats-py subscriber process consume the same
   messages. Both rates, and their ratio (goal >= 0.5).
3. Steady load: 1,000 clusters x 3 vantages x 1 probe at 1 Hz (3,000 reports/s) for --seconds, while
   some clusters fail at two vantages (quorum 2 of 3). Latency from the threshold-crossing report to the
   published `cluster.failed` (p50/p99, goal p99 < 50 ms); the daemon's CPU (% of one core, nats-server
   excluded; goal < 30%) and RSS (goal < 150 MB).

    .venv/bin/python bench/detector.py [--clusters 1000] [--seconds 20] [--burst 150000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats

from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core.models import HealthReport
from orchestrator.detection.machine import ClusterState, DetectorState, ProbeSpec, Settings, transition

VANTAGES = ("v1", "v2", "v3")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def report_json(cluster: str, vantage: str, seq: int, ok: bool, sent: float | None = None) -> bytes:
    ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    detail = f"sent={sent!r}" if sent is not None else ""
    return (
        f'{{"v":1,"cluster":"{cluster}","probe":"p","vantage":"{vantage}","boot_id":"b-{vantage}",'
        f'"seq":{seq},"ok":{"true" if ok else "false"},"latency_ms":1.0,"detail":"{detail}","ts":"{ts}"}}'
    ).encode()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# 1. pure -------------------------------------------------------------------------------------------


def bench_pure(clusters: int, rounds: int = 20) -> None:
    names = [f"c{i:04d}" for i in range(clusters)]
    state = DetectorState(
        Settings(quorum="majority", stale_after_s=5, max_failed_fraction=0.5),
        {n: {"p": ProbeSpec("fail")} for n in names},
    )
    for n in names:
        state.clusters[n] = ClusterState(n)
    raw = [
        report_json(n, v, r * clusters + i, True)
        for r in range(rounds)
        for i, n in enumerate(names)
        for v in VANTAGES
    ]
    parsed = [HealthReport.model_validate_json(b) for b in raw]
    now = 1_700_000_000.0
    start = time.perf_counter()
    for i, rep in enumerate(parsed):
        transition(state, rep, now + i / (3 * clusters))
    pure = len(parsed) / (time.perf_counter() - start)
    state2 = DetectorState(state.settings, state.probes)
    for n in names:
        state2.clusters[n] = ClusterState(n)
    start = time.perf_counter()
    for i, b in enumerate(raw):
        transition(state2, HealthReport.model_validate_json(b), now + i / (3 * clusters))
    parsed_rate = len(raw) / (time.perf_counter() - start)
    print(
        f"pure detector: {pure:,.0f} reports/s (pre-parsed); {parsed_rate:,.0f} reports/s including JSON "
        f"parsing  [{clusters} clusters x 3 vantages]"
    )


# processes -------------------------------------------------------------------------------------------


def write_config(work: Path, nats_url: str, clusters: int, api_port: int) -> Path:
    lines = [
        f"nats: {{url: '{nats_url}'}}",
        f"state_dir: {work / 'state'}",
        f"api: {{listen: 127.0.0.1:{api_port}}}",
        "probing: {interval: 1s, timeout: 800ms}",
        "detection: {failure_threshold: 3, success_threshold: 3, quorum: majority, stale_after: 5s, "
        "recovery_hold: 5s}",
        f"playbooks: {{paths: ['{work / 'playbooks'}']}}",
        "clusters:",
    ]
    lines += [
        f"  - {{name: c{i:04d}, probes: [{{name: p, tcp: {{host: 127.0.0.1, port: 9}}}}]}}"
        for i in range(clusters)
    ]
    (work / "playbooks").mkdir(exist_ok=True)
    path = work / "failover.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MB) of a process from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss_kb = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return cpu, rss_kb / 1024


async def reports_ingested(api_port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", api_port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
    body = (await reader.read()).decode()
    writer.close()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("failover_probe_reports_total{")
    )


RAW_SUBSCRIBER = """
import asyncio, sys, time, nats
async def main(url, n):
    nc = await nats.connect(url)
    count = 0; first = None; done = asyncio.Event()
    async def cb(msg):
        nonlocal count, first
        if first is None: first = time.time()
        count += 1
        if count >= n: done.set()
    await nc.subscribe("failover.health.>", cb=cb, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await nc.flush(); print("ready", flush=True)
    await asyncio.wait_for(done.wait(), 300)
    print(f"{first} {time.time()}", flush=True)
    await nc.close()
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def main(args: argparse.Namespace) -> None:
    bench_pure(args.clusters)
    work = Path(tempfile.mkdtemp(prefix="bench-detector-"))
    server = EmbeddedNats(work / "nats")
    await server.start()
    api_port = free_port()
    config = write_config(work, server.url, args.clusters, api_port)
    profile = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") else []
    daemon = subprocess.Popen(
        [
            sys.executable,
            *profile,
            "-m",
            "orchestrator",
            "--log-format",
            "json",
            "--log-level",
            "warning",
            "run",
            "--no-probes",
            "--config",
            str(config),
        ],
        stderr=(work / "daemon.log").open("w"),
    )
    nc = await nats.connect(server.url, pending_size=256 * 1024 * 1024)
    try:
        for _ in range(200):
            try:
                await reports_ingested(api_port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        names = [f"c{i:04d}" for i in range(args.clusters)]
        seq = dict.fromkeys(VANTAGES, 0)

        def next_report(cluster: str, vantage: str, ok: bool, sent: float | None = None) -> bytes:
            seq[vantage] += 1
            return report_json(cluster, vantage, seq[vantage], ok, sent)

        # 2. burst ---------------------------------------------------------------------------------
        burst = [
            (f"failover.health.{n}.p", next_report(n, v, True))
            for _ in range(args.burst // (3 * len(names)))
            for n in names
            for v in VANTAGES
        ]
        raw = subprocess.Popen(
            [sys.executable, "-c", RAW_SUBSCRIBER, server.url, str(len(burst))],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert raw.stdout is not None
        assert raw.stdout.readline().strip() == "ready"
        before = await reports_ingested(api_port)
        start = time.time()
        for subject, data in burst:
            await nc.publish(subject, data)
        await nc.flush()
        published = time.time()
        # poll gently: rendering /metrics (5,000 series at 1,000 clusters) is work the daemon must do
        polled = 0
        while await reports_ingested(api_port) < before + len(burst):
            polled += 1
            if time.time() - start > 300:
                raise TimeoutError("the daemon did not ingest the burst")
            await asyncio.sleep(0.2)
        pipeline_done = time.time() - (0.1 if polled else 0)  # midpoint of the last poll interval
        _raw_first, raw_done = map(float, raw.stdout.readline().split())
        raw.wait(30)
        pipeline_rate = len(burst) / (pipeline_done - start)
        raw_rate = len(burst) / (raw_done - start)
        print(f"burst of {len(burst):,} reports (published in {published - start:.2f}s):")
        print(
            f"  raw nats-py subscriber: {raw_rate:,.0f} msgs/s;  detector pipeline: {pipeline_rate:,.0f} "
            f"reports/s;  ratio {pipeline_rate / raw_rate:.2f}  (goal >= 0.5)"
        )

        # 3. steady load with failures --------------------------------------------------------------
        events: list[tuple[float, dict[str, Any]]] = []

        async def on_event(msg: Any) -> None:
            events.append((time.time(), json.loads(msg.data)))

        await nc.subscribe("failover.events.cluster.>", cb=on_event)
        rate = 3 * len(names)
        failing: dict[str, int] = {}  # cluster -> rounds left failing at v1 and v2
        cpu0, _ = proc_stats(daemon.pid)
        t0 = time.perf_counter()
        rss_peak = 0.0
        victims = iter(names[:: max(1, len(names) // 50)])
        for second in range(args.seconds):
            round_start = time.perf_counter()
            if second % 2 == 1 and second < args.seconds - 5:
                victim = next(victims, None)
                if victim:
                    failing[victim] = 6
            # spread one round over the second, in 20 slices (like probers with jitter would)
            order = [(n, v) for n in names for v in VANTAGES]
            slice_len = len(order) // 20 + 1
            for k in range(20):
                for n, v in order[k * slice_len : (k + 1) * slice_len]:
                    bad = failing.get(n, 0) > 0 and v != "v3"
                    await nc.publish(
                        f"failover.health.{n}.p", next_report(n, v, not bad, time.time() if bad else None)
                    )
                target = round_start + (k + 1) / 20
                await asyncio.sleep(max(0.0, target - time.perf_counter()))
            for n in list(failing):
                failing[n] -= 1
                if failing[n] <= 0:
                    del failing[n]
            rss_peak = max(rss_peak, proc_stats(daemon.pid)[1])
        await nc.flush()
        await asyncio.sleep(1)
        cpu1, rss = proc_stats(daemon.pid)
        elapsed = time.perf_counter() - t0
        latencies = []
        for received, event in events:
            if event["type"] != "cluster.failed":
                continue
            sent = [
                float(track["detail"].removeprefix("sent="))
                for vantage in event["evidence"]["failing"].values()
                for track in vantage.values()
                if track["detail"].startswith("sent=")
            ]
            if sent:
                latencies.append((received - max(sent)) * 1000)
        print(
            f"steady load: {len(names)} clusters x 3 vantages x 1 Hz = {rate:,} reports/s for {args.seconds}s"
        )
        if latencies:
            print(
                f"  threshold-crossing report -> cluster.failed received: n={len(latencies)}  "
                f"p50 {statistics.median(latencies):.1f} ms  p99 {percentile(latencies, 99):.1f} ms  "
                f"max {max(latencies):.1f} ms  (goal p99 < 50 ms)"
            )
        print(
            f"  daemon CPU {100 * (cpu1 - cpu0) / elapsed:.1f}% of one core (goal < 30%);  RSS {rss:.0f} MB, "
            f"peak {rss_peak:.0f} MB (goal < 150 MB);  nats-server excluded"
        )
    finally:
        daemon.terminate()
        daemon.wait(30)
        await nc.close()
        await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--burst", type=int, default=150_000)
    asyncio.run(main(parser.parse_args()))
