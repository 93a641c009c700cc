"""The in-process prober's CPU at fleet size (issue 19). Prints figures; asserts nothing.

N clusters, one `http` probe each, at `probing.interval` 1 s, against a loopback HTTP server in its own
process (an aiohttp app answering 200), publishing every report to a real nats-server as the daemon's
prober does. The figure is this process's CPU (the prober and its NATS client; the target server and
nats-server excluded) over whole rounds, as % of one core and µs per probe.

    .venv/bin/python bench/prober.py [--clusters 1000] [--rounds 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core.config import load_config
from orchestrator.probes.prober import Prober

TARGET = """
import sys
from aiohttp import web
async def ok(_request):
    return web.Response(text="ok")
app = web.Application()
app.router.add_get("/healthz", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


async def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


async def run(clusters: int, rounds: int, nats_url: str, target_port: int, work: Path) -> tuple[float, int]:
    path = work / "failover.yaml"
    lines = ["probing: {interval: 1s}", "clusters:"] + [
        f"  - {{name: c{i:05d}, probes: [{{name: p, http: {{url: 'http://127.0.0.1:{target_port}/healthz'}}}}]}}"
        for i in range(clusters)
    ]
    path.write_text("\n".join(lines) + "\n")
    config = load_config(path)
    nc = await nats.connect(nats_url)
    failed = 0

    async def publish(subject: str, payload: bytes) -> None:
        nonlocal failed
        failed += b'"ok":false' in payload
        await nc.publish(subject, payload)

    prober = Prober(config, publish, vantage="bench")
    stop = asyncio.Event()
    task = asyncio.create_task(prober.run(stop))
    while prober.rounds < 2:  # warm up: connections, caches
        await asyncio.sleep(0.05)
    start_rounds, cpu0 = prober.rounds, time.process_time()
    while prober.rounds < start_rounds + rounds:
        await asyncio.sleep(0.05)
    cpu = time.process_time() - cpu0
    done = prober.rounds - start_rounds
    stop.set()
    await task
    await nc.close()
    return cpu / (done * clusters), failed


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-prober-"))
    server = EmbeddedNats(work / "nats")
    await server.start()
    port = free_port()
    target = subprocess.Popen([sys.executable, "-c", TARGET, str(port)])
    try:
        await wait_port(port)
        print(f"in-process prober: {args.clusters} clusters x 1 http probe at 1 Hz, {args.rounds} rounds, ")
        print(f"  {os.cpu_count()} CPUs, target server and nats-server in their own processes")
        for i in range(args.repeat):
            per_probe, failed = await run(args.clusters, args.rounds, server.url, port, work)
            print(
                f"  run {i + 1}: {1e6 * per_probe:.0f} µs CPU per probe = "
                f"{100 * per_probe * args.clusters:.1f}% of one core at 1 Hz  ({failed} failed probes)"
            )
    finally:
        target.terminate()
        target.wait(10)
        await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
