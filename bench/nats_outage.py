"""NATS outage -> leading again -> drain (DESIGN §12, liveness). Prints figures; asserts nothing.

A daemon process with the production lease (TTL 10 s, renewals and margin 2 s) leads against a
nats-server, three sandbox clusters behind a real HAProxy. Each round SIGKILLs nats-server, keeps it
down for `--down` seconds and starts it again on the same port and store. Two kinds of rounds:

- quiet: all clusters healthy; measures NATS back -> the daemon leads again (round 1 waited its own
  lease's TTL, about 12 s);
- failure: one cluster's app is stopped 1 s into the outage; measures NATS back -> HAProxy weight 0
  (the acceptance bound is failure_threshold x interval + 2 s).

    .venv/bin/python bench/nats_outage.py [--rounds 3] [--down 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ helpers: fleet, DaemonProcess

from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.sandbox.haproxy import find_haproxy
from tests.daemons import DaemonProcess
from tests.helpers import Fleet, fleet, hook_receiver, wait_for, write_config

INTERVAL_S = 0.5
THRESHOLD = 3


async def restore_cluster(f: Fleet, cluster: str) -> None:
    await f.apps[cluster].start()

    async def back() -> bool:
        return (await f.weights())[cluster] == 100

    await wait_for(back, 60, f"{cluster} restored", poll_s=0.1)


async def main(rounds: int, down_s: float) -> None:
    binary = find_haproxy()
    if binary is None:
        raise SystemExit("haproxy is not installed (Debian package haproxy)")
    work = Path(tempfile.mkdtemp(prefix="bench-nats-outage-"))
    nats = EmbeddedNats(work / "nats", free_port())
    await nats.start()
    leading: list[float] = []
    draining: list[float] = []
    async with hook_receiver() as hook, fleet(work, binary) as f:
        api = free_port()
        config = write_config(
            work,
            f,
            hook.url,
            nats_url=nats.url,
            api_port=api,
            probing=f"{{interval: {int(INTERVAL_S * 1000)}ms, jitter: 0s, vantage: mgmt}}",
            detection=f"{{failure_threshold: {THRESHOLD}, success_threshold: 2, recovery_hold: 1s}}",
        )
        daemon = DaemonProcess(config, work / "daemon.log", api, env={"PYTHONPATH": os.getcwd()})
        await daemon.start()
        try:
            await daemon.wait_leads(30)
            await asyncio.sleep(THRESHOLD * INTERVAL_S + 1)
            for i in range(rounds):
                await nats.kill()
                await asyncio.sleep(down_s)
                await nats.start()
                leading.append(await wait_for(daemon.leads, 30, "leading again", poll_s=0.02))
                await asyncio.sleep(THRESHOLD * INTERVAL_S + 1)
                print(f"quiet round {i + 1}: NATS back -> leading again {leading[-1]:.2f}s")
            for i in range(rounds):
                cluster = ("us-east", "eu-west", "ap-south")[i % 3]
                await nats.kill()
                await asyncio.sleep(1)
                await f.apps[cluster].stop()
                await asyncio.sleep(down_s - 1)
                await nats.start()

                async def drained(c: str = cluster) -> bool:
                    return (await f.weights())[c] == 0

                draining.append(await wait_for(drained, 30, f"{cluster} drained", poll_s=0.02))
                print(f"failure round {i + 1}: NATS back -> {cluster} drained {draining[-1]:.2f}s")
                await restore_cluster(f, cluster)
        finally:
            await daemon.stop()
            await nats.stop()
    bound = THRESHOLD * INTERVAL_S + 2
    print(f"\nNATS down {down_s:.0f}s, lease TTL 10s, interval {INTERVAL_S}s, failure_threshold {THRESHOLD}")
    print(
        f"NATS back -> leading again:  median {statistics.median(leading):.2f}s, max {max(leading):.2f}s "
        f"({rounds} rounds)"
    )
    print(
        f"NATS back -> drained:        median {statistics.median(draining):.2f}s, max {max(draining):.2f}s "
        f"(bound {bound:.1f}s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--down", type=float, default=8.0)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.down))
