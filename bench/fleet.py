"""One daemon and a large fleet (issue 19). Prints figures; asserts nothing.

For each size (default 1,000 / 5,000 / 10,000 clusters) and mode (`healthy`; `partitioned`: vantage v3
is cut off and reports every cluster failing), a real `failover run --no-probes` daemon is fed by three
generator processes, one per vantage (v1..v3), each reporting every cluster once a second, spread over
the second as probers with jitter do. From second `--warmup` on, a victim cluster starts failing at
v1 and v2 every `1/--failure-rate` s (quorum 2 of 3, failure_threshold 3). The daemon's playbook drains
it from a real HAProxy (one server per cluster); a proxy in front of HAProxy's runtime API notes when
`set weight web/<cluster> 0` goes through. Printed per run:

- report -> weight 0: from the report that completed the quorum (the later of v1's and v2's third
  failing report, stamped by the generator as it sends it) to the weight-0 command reaching HAProxy;
- daemon CPU (% of one core, generators, nats-server and HAProxy excluded) and peak RSS;
- API p99: GET /api/v1/status every 100 ms during the run, while /metrics is scraped every 5 s;
- lease renewal delay p99: the gap between the leader's renewals in KV, minus `renew_interval`.

`--detect-only` loads no playbook: the detector's own share, report -> `cluster.failed`. The ingest ratio,
measured fairly, is `bench/detector.py`.

    .venv/bin/python bench/fleet.py [--sizes 1000,5000,10000] [--modes healthy,partitioned]
                                    [--seconds 40] [--repeat 1]
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
from pathlib import Path
from typing import Any

import aiohttp
import nats

from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.sandbox.haproxy import HAProxyProcess, find_haproxy

CLK_TCK = os.sysconf("SC_CLK_TCK")
RENEW_S = 1.0

GENERATOR = r"""
import asyncio, json, sys, time
from datetime import UTC, datetime
import nats

async def main(url, vantage, n, start, seconds, victims_path, cut_off):
    victims = json.load(open(victims_path))   # cluster -> second its failure starts
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    names = [f"c{i:05d}" for i in range(n)]
    seq, crossed = 0, {}
    fails = vantage in ("v1", "v2")
    slices = 20
    per = n // slices + 1
    while time.time() < start:
        await asyncio.sleep(0.01)
    for second in range(seconds):
        round_start = start + second
        ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        for k in range(slices):
            for name in names[k * per:(k + 1) * per]:
                seq += 1
                at = victims.get(name)
                bad = cut_off or (fails and at is not None and at <= second < at + 5)
                if bad and at is not None and second == at + 2 and not cut_off:
                    crossed[name] = time.time()      # the third failing report: the threshold
                body = (
                    f'{{"v":1,"cluster":"{name}","probe":"p","vantage":"{vantage}","boot_id":"b-{vantage}",'
                    f'"seq":{seq},"ok":{"false" if bad else "true"},"latency_ms":1.0,"detail":"",'
                    f'"ts":"{ts}"}}'
                )
                await nc.publish(f"failover.health.{vantage}.{name}.p", body.encode())
            await asyncio.sleep(max(0.0, round_start + (k + 1) / slices - time.time()))
    await nc.flush()
    await nc.close()
    print(json.dumps(crossed), flush=True)

a = sys.argv
asyncio.run(main(a[1], a[2], int(a[3]), float(a[4]), int(a[5]), a[6], a[7] == "1"))
"""

DAEMON = """
import sys
from orchestrator.cli.main import main  # 10,000 clusters are ~700 KiB of YAML, under MAX_CONFIG_BYTES
sys.argv[0] = "failover"
main()
"""

PLAYBOOK = """name: drain
on: {event: cluster.failed}
steps:
  - id: drain
    action: lb.drain
    with: {balancer: global, cluster: "{{ event.cluster }}"}
    timeout: 10s
"""


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


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


class AdminTap:
    """A proxy in front of HAProxy's runtime API noting when each `set weight <be>/<server> 0` passes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.zeroed: dict[str, float] = {}
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            for command in line.decode().split(";"):
                parts = command.split()
                if parts[:2] == ["set", "weight"] and parts[-1] == "0":
                    self.zeroed.setdefault(parts[2].split("/", 1)[1], time.time())
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            up_writer.write(line)
            await up_writer.drain()
            writer.write(await up_reader.read())
            await writer.drain()
            up_writer.close()
        except OSError:
            pass
        finally:
            writer.close()


def write_config(
    work: Path, nats_url: str, n: int, api_port: int, admin_url: str, drain: bool, ingest: str = "loop"
) -> Path:
    (work / "playbooks").mkdir(exist_ok=True)
    if drain:
        (work / "playbooks" / "drain.yaml").write_text(PLAYBOOK)
    names = [f"c{i:05d}" for i in range(n)]
    lines = [
        f"nats: {{url: '{nats_url}'}}",
        f"state_dir: {work / 'state'}",
        f"api: {{listen: 127.0.0.1:{api_port}}}",
        f"leadership: {{lease_ttl: 10s, renew_interval: {RENEW_S:g}s}}",
        "probing: {interval: 1s}",
        "detection: {failure_threshold: 3, success_threshold: 3, quorum: majority, stale_after: 5s, "
        f"recovery_hold: 30s, vantages: [v1, v2, v3], ingest: {ingest}}}",
        f"playbooks: {{paths: ['{work / 'playbooks'}']}}",
        "load_balancers:",
        f"  - name: global\n    driver: haproxy\n    haproxy: {{admin: ['{admin_url}'], backend: web}}",
        "    members: {" + ", ".join(f"{c}: {c}" for c in names) + "}",
        "clusters:",
    ]
    lines += [f"  - {{name: {c}, probes: [{{name: p, tcp: {{host: 127.0.0.1, port: 9}}}}]}}" for c in names]
    path = work / "failover.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def api_probe(base: str, stop: asyncio.Event, into: list[float], scrapes: list[float]) -> None:
    async with aiohttp.ClientSession() as session:
        last_scrape = 0.0
        while not stop.is_set():
            if time.monotonic() - last_scrape >= 5:
                last_scrape = time.monotonic()

                async def scrape() -> None:
                    t = time.perf_counter()
                    async with session.get(base + "/metrics") as resp:
                        await resp.read()
                    scrapes.append((time.perf_counter() - t) * 1000)

                asyncio.get_running_loop().create_task(scrape())
            t = time.perf_counter()
            async with session.get(base + "/api/v1/status") as resp:
                await resp.read()
            into.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.1)


async def watch_lease(nc: Any, stop: asyncio.Event, gaps: list[float]) -> None:
    js = nc.jetstream()
    for _ in range(100):
        try:
            kv = await js.key_value("failover-leader")
            break
        except Exception:
            await asyncio.sleep(0.1)
    else:
        return
    watcher = await kv.watch("leader")
    last = None
    while not stop.is_set():
        try:
            entry = await watcher.updates(timeout=1)
        except Exception:
            continue
        if entry is None or entry.value is None:
            continue
        now = time.monotonic()
        if last is not None:
            gaps.append(max(0.0, (now - last - RENEW_S) * 1000))
        last = now
    await watcher.stop()


async def one_run(
    n: int, mode: str, seconds: int, warmup: int, rate: float, drain: bool, ingest: str = "loop"
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-fleet-{n}-"))
    server = EmbeddedNats(work / "nats")
    await server.start()
    haproxy = HAProxyProcess(work / "haproxy", {f"c{i:05d}": ("127.0.0.1", 9) for i in range(n)})
    await haproxy.start(timeout_s=60)
    tap = AdminTap(haproxy.admin_port)
    await tap.start()
    api_port = free_port()
    config = write_config(work, server.url, n, api_port, f"tcp://127.0.0.1:{tap.port}", drain, ingest)
    profile = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") else []
    (work / "daemon.py").write_text(DAEMON)
    daemon = subprocess.Popen(
        [sys.executable, *profile, str(work / "daemon.py"), "--log-format", "json", "--log-level", "warning",
         "run", "--no-probes", "--config", str(config)],
        stderr=(work / "daemon.log").open("w"),
    )  # fmt: skip
    base = f"http://127.0.0.1:{api_port}"
    nc = await nats.connect(server.url)
    failed_at: dict[str, float] = {}

    async def on_event(msg: Any) -> None:
        event = json.loads(msg.data)
        if event.get("type") == "cluster.failed":
            failed_at.setdefault(event["cluster"], time.time())

    await nc.subscribe("failover.events.cluster.>", cb=on_event)
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(1200):
                try:
                    async with session.get(base + "/readyz") as resp:
                        if resp.status == 200 and (await resp.json())["checks"].get("leader"):
                            break
                except (aiohttp.ClientError, KeyError):
                    pass
                if daemon.poll() is not None:
                    tail = (work / "daemon.log").read_text(errors="replace")[-600:]
                    raise RuntimeError(f"the daemon exited with {daemon.returncode}: {tail}")
                await asyncio.sleep(0.1)
        victims_at: dict[str, int] = {}
        count = int((seconds - warmup - 6) * rate)
        stride = max(1, n // max(1, count))
        for k in range(count):
            victims_at[f"c{(k * stride) % n:05d}"] = warmup + int(k / rate)
        victims_path = work / "victims.json"
        victims_path.write_text(json.dumps(victims_at))
        start = time.time() + 2
        generators = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    GENERATOR,
                    server.url,
                    v,
                    str(n),
                    repr(start),
                    str(seconds),
                    str(victims_path),
                    "1" if mode == "partitioned" and v == "v3" else "0",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for v in ("v1", "v2", "v3")
        ]
        api_ms: list[float] = []
        scrape_ms: list[float] = []
        gaps: list[float] = []
        tasks = [
            asyncio.create_task(api_probe(base, stop, api_ms, scrape_ms)),
            asyncio.create_task(watch_lease(nc, stop, gaps)),
        ]
        await asyncio.sleep(max(0.0, start + warmup - time.time()))
        api_ms.clear()
        gaps.clear()
        children = [
            int(p) for p in Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split()
        ]
        cpu0, _ = proc_stats(daemon.pid)
        child0 = sum(proc_stats(c)[0] for c in children)
        t0 = time.monotonic()
        rss_peak = 0.0
        while any(g.poll() is None for g in generators):
            rss_peak = max(rss_peak, proc_stats(daemon.pid)[1])
            await asyncio.sleep(0.5)
        cpu1, _ = proc_stats(daemon.pid)
        child1 = sum(proc_stats(c)[0] for c in children)
        elapsed = time.monotonic() - t0
        await asyncio.sleep(2)  # the last drains
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        crossed: list[dict[str, float]] = [json.loads(g.communicate()[0] or "{}") for g in generators[:2]]
        latencies = [
            (tap.zeroed[c] - max(crossed[0][c], crossed[1][c])) * 1000
            for c in victims_at
            if c in tap.zeroed and c in crossed[0] and c in crossed[1]
        ]
        detected = [
            (failed_at[c] - max(crossed[0][c], crossed[1][c])) * 1000
            for c in victims_at
            if c in failed_at and c in crossed[0] and c in crossed[1]
        ]
        return {
            "detect_p50": statistics.median(detected) if detected else float("nan"),
            "detect_p99": percentile(detected, 99),
            "victims": len(victims_at),
            "drained": len(latencies),
            "p50": statistics.median(latencies) if latencies else float("nan"),
            "p99": percentile(latencies, 99),
            "cpu": 100 * (cpu1 - cpu0) / elapsed,
            "child_cpu": 100 * (child1 - child0) / elapsed,
            "rss": rss_peak,
            "api_p99": percentile(api_ms, 99),
            "api_n": len(api_ms),
            "scrape": statistics.median(scrape_ms) if scrape_ms else float("nan"),
            "lease_p99": percentile(gaps, 99),
        }
    finally:
        stop.set()
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        await nc.close()
        await tap.stop()
        await haproxy.stop()
        await server.stop()


async def main(args: argparse.Namespace) -> None:
    if find_haproxy() is None:
        print("haproxy is not installed (make packages): the fleet benchmark drains a real HAProxy")
        return
    print(
        f"fleet: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; 3 vantages x 1 Hz from 3 generator "
        f"processes; {args.failure_rate:g} failures/s from second {args.warmup}, over {args.seconds}s"
    )
    for n in [int(x) for x in args.sizes.split(",")]:
        for mode in args.modes.split(","):
            for i in range(args.repeat):
                r = await one_run(
                    n, mode, args.seconds, args.warmup, args.failure_rate, not args.detect_only, args.ingest
                )
                print(
                    f"  {n:>6,} {mode:<11} run {i + 1}: report->weight 0 p50 {r['p50']:.1f} / "
                    f"p99 {r['p99']:.1f} ms ({r['drained']}/{r['victims']} drained; "
                    f"-> cluster.failed p50 {r['detect_p50']:.1f} / "
                    f"p99 {r['detect_p99']:.1f} ms);  daemon CPU {r['cpu']:.0f}% (+ ingest process "
                    f"{r['child_cpu']:.0f}%)  RSS {r['rss']:.0f} MB;"
                    f"  API p99 {r['api_p99']:.1f} ms (n={r['api_n']}, /metrics {r['scrape']:.0f} ms);  "
                    f"lease renewal delay p99 {r['lease_p99']:.0f} ms",
                    flush=True,
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--modes", default="healthy,partitioned")
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--failure-rate", type=float, default=4.0, help="victims starting per second")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--ingest", choices=("loop", "process"), default="loop", help="detection.ingest of the daemon"
    )
    parser.add_argument(
        "--detect-only",
        action="store_true",
        help="no playbook: the detector's share alone (-> cluster.failed)",
    )
    asyncio.run(main(parser.parse_args()))
