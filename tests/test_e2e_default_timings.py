"""End to end at the default timings (interval 1s, failure_threshold 3, timeout 800ms, recovery_hold 30s):
three clusters behind one real HAProxy backend, the daemon as a separate process with an embedded NATS.

Prints the measured failure-to-weight-0 time; speed goals are checked by bench/, not asserted here
beyond a generous bound that only catches a broken pipeline.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from orchestrator.bus.embedded import free_port
from tests.daemons import DaemonProcess
from tests.helpers import HOOK_SECRET, fleet, hook_receiver, wait_for, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


async def test_stopping_a_cluster_drains_it_and_starting_it_restores_it(
    haproxy_binary: str, nats_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        api_port = free_port()
        # production timings: no probing/detection sections; the secret comes from the environment
        config = write_config(
            tmp_path, f, hook.url, probing=None, detection=None, secret="${HOOK_SECRET}", api_port=api_port
        )
        daemon = DaemonProcess(config, tmp_path / "daemon.log", api_port, env={"HOOK_SECRET": HOOK_SECRET})
        await daemon.start()
        try:
            await daemon.wait_ready()
            await asyncio.sleep(4)  # success_threshold rounds at 1 s: every cluster healthy

            stopped_at = time.monotonic()
            await f.apps["us-east"].stop()

            async def drained() -> bool:
                return (await f.weights())["us-east"] == 0

            await wait_for(drained, 15, "us-east weight 0", poll_s=0.01)
            took = time.monotonic() - stopped_at
            print(f"\nfailure -> HAProxy weight 0: {took:.2f}s (interval 1s, failure_threshold 3)")
            assert took < 10, "the pipeline is broken, not merely slow"
            traffic = await f.traffic(60)
            assert set(traffic) == {"eu-west", "ap-south"}, traffic

            restarted_at = time.monotonic()
            await f.apps["us-east"].start()

            async def restored() -> bool:
                return (await f.weights())["us-east"] == 100

            await wait_for(restored, 60, "us-east weight restored")
            back = time.monotonic() - restarted_at
            print(f"recovery -> weight restored: {back:.1f}s (recovery_hold 30s + ramp 25/50/100 every 3s)")
            assert back >= 30, "restored before recovery_hold"
            assert set(await f.traffic(60)) == {"eu-west", "us-east", "ap-south"}
        finally:
            code = await daemon.stop()
        assert code == 0, daemon.log_text()[-3000:]
