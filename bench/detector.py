"""Detector benchmark (DESIGN §10; issues 3 and 19). Prints figures; asserts nothing.

1. The pure detector: reports/s through `transition()` (objects pre-built) and with JSON parsing, with
   every vantage agreeing and with one vantage cut off (it sees every cluster failing and is suspect);
   and the decode alone, side by side: the validated `HealthReport` decode against `json.loads`.
2. Ingest, measured fairly (issue 19): the daemon's detector pipeline (`failover run --no-probes`) and a
   raw nats-py subscriber that parses the same JSON, each alone (never sharing the CPU with the other),
   fed the same burst by a publisher in its own process, faster than either consumes. Each side's time
   runs from the publisher's first message to the side's own finish signal: the raw subscriber's last
   message; for the daemon, a final failing sequence on a sentinel cluster published after the burst,
   whose `cluster.failed` event marks that everything before it was applied. Nothing polls `/metrics`
   during the run (rendering it is work the daemon would be charged for). Goal: ratio >= 0.8.

Latency under steady load, with a balancer so it ends at weight 0, and at fleet sizes, is
`bench/fleet.py`.

    .venv/bin/python bench/detector.py [--clusters 1000] [--burst 150000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from orchestrator.detection.machine import ClusterState, DetectorState, ProbeSpec, Settings, Tick, transition

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
    names = [f"c{i:05d}" for i in range(clusters)]
    settings = Settings(quorum="majority", stale_after_s=5, max_failed_fraction=0.5, vantages=VANTAGES)

    def fresh() -> DetectorState:
        state = DetectorState(settings, {n: {"p": ProbeSpec("fail")} for n in names})
        for n in names:
            state.clusters[n] = ClusterState(n)
        return state

    for cut_off in (None, "v3"):
        raw = [
            report_json(n, v, r * clusters + i, v != cut_off or r < 3)
            for r in range(rounds)
            for i, n in enumerate(names)
            for v in VANTAGES
        ]
        parsed = [HealthReport.model_validate_json(b) for b in raw]
        now = 1_700_000_000.0
        per_tick = 3 * clusters // 4  # the service ticks 4 times a round (0.25 s)

        def feed(
            state: DetectorState,
            items: list[Any],
            first: int,
            decode: bool,
            now: float = now,
            per_tick: int = per_tick,
        ) -> None:
            for i, item in enumerate(items, start=first):
                at = now + i / (3 * clusters)
                transition(state, HealthReport.model_validate_json(item) if decode else item, at)
                if i % per_tick == 0:
                    transition(state, Tick(), at)

        state = fresh()
        half = len(parsed) // 2
        feed(state, parsed[:half], 0, False)  # warm: v3 is suspect from round 4 on
        start = time.perf_counter()
        feed(state, parsed[half:], half, False)
        pure = (len(parsed) - half) / (time.perf_counter() - start)
        state = fresh()
        start = time.perf_counter()
        feed(state, raw, 0, True)
        parsed_rate = len(raw) / (time.perf_counter() - start)
        label = f"vantage {cut_off} cut off (suspect: {sorted(state.suspects)})" if cut_off else "all agree"
        print(
            f"pure detector, {label}: {pure:,.0f} reports/s pre-parsed; {parsed_rate:,.0f} reports/s "
            f"including JSON  [{clusters} clusters x 3 vantages]"
        )
    sample = raw[: min(len(raw), 60_000)]
    start = time.perf_counter()
    for b in sample:
        HealthReport.model_validate_json(b)
    validated = len(sample) / (time.perf_counter() - start)
    start = time.perf_counter()
    for b in sample:
        json.loads(b)
    loads = len(sample) / (time.perf_counter() - start)
    print(
        f"decode alone: HealthReport.model_validate_json {validated:,.0f}/s (bounded fields, aware ts); "
        f"json.loads {loads:,.0f}/s (no validation)"
    )


# ingest, fairly ----------------------------------------------------------------------------------------


def write_config(work: Path, nats_url: str, clusters: int, api_port: int) -> Path:
    lines = [
        f"nats: {{url: '{nats_url}'}}",
        f"state_dir: {work / 'state'}",
        f"api: {{listen: 127.0.0.1:{api_port}}}",
        "probing: {interval: 1s, timeout: 800ms}",
        # stale_after far above the burst's length: a slow run must not drop the finish signal as stale
        "detection: {failure_threshold: 3, success_threshold: 3, quorum: majority, stale_after: 60s, "
        "recovery_hold: 5s, vantages: [v1, v2, v3]}",
        f"playbooks: {{paths: ['{work / 'playbooks'}']}}",
        "clusters:",
    ]
    lines += [
        f"  - {{name: c{i:05d}, probes: [{{name: p, tcp: {{host: 127.0.0.1, port: 9}}}}]}}"
        for i in range(clusters + 1)  # the last one is the sentinel
    ]
    (work / "playbooks").mkdir(parents=True, exist_ok=True)
    path = work / "failover.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


PUBLISHER = """
import asyncio, sys, time, uuid
from datetime import UTC, datetime
import nats
async def main(url, clusters, burst, fail):
    nc = await nats.connect(url, pending_size=512 * 1024 * 1024)
    ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    boot = uuid.uuid4().hex[:12]  # a publisher process is a prober boot: its seq starts again
    def body(c, v, seq, ok):
        return (f'{{"v":1,"cluster":"c{c:05d}","probe":"p","vantage":"{v}","boot_id":"{boot}",'
                f'"seq":{seq},"ok":{"true" if ok else "false"},"latency_ms":1.0,"detail":"",'
                f'"ts":"{ts}"}}').encode()
    msgs, seq = [], 0
    while len(msgs) < burst:
        for c in range(clusters + 1):  # the sentinel too: healthy before it fails
            for v in ("v1", "v2", "v3"):
                seq += 1
                msgs.append((f"failover.health.{v}.c{c:05d}.p", body(c, v, seq, True)))
    for _ in range(3 if fail else 0):  # the finish signal: the sentinel fails at v1 and v2
        for v in ("v1", "v2"):
            seq += 1
            msgs.append((f"failover.health.{v}.c{clusters:05d}.p", body(clusters, v, seq, False)))
    print(f"ready {len(msgs)}", flush=True)
    sys.stdin.readline()
    start = time.time()
    for subject, data in msgs:
        await nc.publish(subject, data)
    await nc.flush()
    print(f"{start} {time.time()} {len(msgs)}", flush=True)
    await nc.close()
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"))
"""

RAW_SUBSCRIBER = """
import asyncio, json, sys, time, nats
async def main(url, n):
    nc = await nats.connect(url)
    count = 0; done = asyncio.Event(); last = 0.0
    async def cb(msg):
        nonlocal count, last
        json.loads(msg.data)  # the same JSON the daemon parses (it also validates every field)
        count += 1
        if count >= n:
            last = time.time(); done.set()
    await nc.subscribe("failover.health.>", cb=cb, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await nc.flush(); print("ready", flush=True)
    await asyncio.wait_for(done.wait(), 300)
    print(f"{last}", flush=True)
    await nc.close()
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def publisher(url: str, clusters: int, burst: int, fail: bool = True) -> tuple[subprocess.Popen[str], int]:
    """A publisher process with its messages built, waiting for `go`; and how many it will send."""
    pub = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, url, str(clusters), str(burst), "1" if fail else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert pub.stdout is not None
    word, count = pub.stdout.readline().split()
    assert word == "ready"
    return pub, int(count)


def go(pub: subprocess.Popen[str]) -> tuple[float, int]:
    assert pub.stdin is not None and pub.stdout is not None
    pub.stdin.write("go\n")
    pub.stdin.flush()
    start, _published, count = pub.stdout.readline().split()
    pub.wait(60)
    return float(start), int(count)


async def raw_rate(url: str, clusters: int, burst: int) -> float:
    pub, expected = publisher(url, clusters, burst)
    raw = subprocess.Popen(
        [sys.executable, "-c", RAW_SUBSCRIBER, url, str(expected)], stdout=subprocess.PIPE, text=True
    )
    assert raw.stdout is not None
    assert raw.stdout.readline().strip() == "ready"
    start, count = await asyncio.to_thread(go, pub)
    last = float(await asyncio.to_thread(raw.stdout.readline))
    raw.wait(30)
    return count / (last - start)


async def daemon_rate(url: str, clusters: int, burst: int, work: Path) -> float:
    api_port = free_port()
    config = write_config(work, url, clusters, api_port)
    profile = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") else []
    daemon = subprocess.Popen(
        [sys.executable, *profile, "-m", "orchestrator", "--log-format", "json", "--log-level", "warning",
         "run", "--no-probes", "--config", str(config)],
        stderr=(work / "daemon.log").open("w"),
    )  # fmt: skip
    nc = await nats.connect(url)
    failed = asyncio.Event()
    failed_at = 0.0

    async def on_event(msg: Any) -> None:
        nonlocal failed_at
        if json.loads(msg.data).get("type") == "cluster.failed":
            failed_at = time.time()
            failed.set()

    try:
        for _ in range(300):  # started: the API answers ready (once; nothing polls during the run)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", api_port)
                writer.write(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
                head = await reader.read()
                writer.close()
                if b" 200 " in head.split(b"\r\n", 1)[0]:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.1)
        await nc.subscribe(f"failover.events.cluster.c{clusters:05d}", cb=on_event)
        # the sentinel must be healthy first, so that its failure is a transition
        warm, _count = publisher(url, clusters, 4 * 3 * (clusters + 1), fail=False)
        await asyncio.to_thread(go, warm)
        await asyncio.sleep(2)
        failed.clear()
        pub, _count = publisher(url, clusters, burst)
        start, count = await asyncio.to_thread(go, pub)
        await asyncio.wait_for(failed.wait(), 300)
        return count / (failed_at - start)
    finally:
        daemon.terminate()
        daemon.wait(30)
        await nc.close()


async def main(args: argparse.Namespace) -> None:
    bench_pure(args.clusters)
    print(f"ingest, each side alone: a burst of ~{args.burst:,} reports over {args.clusters} clusters")
    for i in range(args.repeat):
        # a nats-server per run: the detector state a previous run persisted must not carry over
        work = Path(tempfile.mkdtemp(prefix="bench-detector-"))
        server = EmbeddedNats(work / "nats")
        await server.start()
        try:
            raw = await raw_rate(server.url, args.clusters, args.burst)
            pipeline = await daemon_rate(server.url, args.clusters, args.burst, work / "daemon")
        finally:
            await server.stop()
        print(
            f"  run {i + 1}: raw nats-py + json.loads {raw:,.0f} msgs/s;  detector pipeline "
            f"{pipeline:,.0f} reports/s;  ratio {pipeline / raw:.2f}  (goal >= 0.8)",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=150_000)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
