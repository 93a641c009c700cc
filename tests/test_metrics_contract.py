"""What `/metrics` promises an SRE writing alerts and dashboards (issue 17):

- every balancer's current weight per cluster, kept up to date by each read and write of the actuator
  (`failover_balancer_weight`): before, a Grafana panel could not show where traffic goes;
- `failover_build_info{version,python}` (before: nothing said which build answers);
- each probe's last result per cluster, probe and vantage (`failover_probe_result`, with the time of the
  report in `failover_probe_last_report_timestamp_seconds`): before, only the decided state showed;
- no `_created` series (before: one per counter and histogram child, doubling the series count);
- `failover_detection_to_first_action_seconds` observes only runs a detected change started: before, a
  human's `failover ctl failover` (manual, forced) landed in the detection-latency histogram.

Real daemon, NATS and HAProxy for the live ones."""

from __future__ import annotations

import platform
import re
from functools import partial
from pathlib import Path

import aiohttp
from prometheus_client import generate_latest

from orchestrator import __version__
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core.metrics import Metrics
from tests.helpers import fleet, hook_receiver, wait_for, write_config
from tests.test_api import ADMIN, TOKENS
from tests.test_daemon import all_healthy, metrics_text, running


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in Prometheus text, or None when it is absent (labels in any order)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        head, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if head.split("{")[0] == name and found == labels:
            return float(value)
    return None


def test_no_created_series_and_a_build_info() -> None:
    metrics = Metrics()
    metrics.runs.labels(playbook="p", outcome="succeeded").inc()
    metrics.recovery.labels(stage="act").observe(0.5)
    text = generate_latest(metrics.registry).decode()
    assert "_created" not in text, [line for line in text.splitlines() if "_created" in line][:3]
    assert sample(text, "failover_build_info", version=__version__, python=platform.python_version()) == 1.0


async def test_weights_probe_results_and_detection_latency_of_automatic_runs_only(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, tokens=TOKENS)
        async with running(path) as daemon, aiohttp.ClientSession() as http:
            assert daemon.api is not None
            base = f"http://127.0.0.1:{daemon.api.port}"
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")

            async def value(name: str, **labels: str) -> float | None:
                return sample(await metrics_text(daemon), name, **labels)

            async def becomes(target: float, name: str, **labels: str) -> bool:
                return await value(name, **labels) == target

            for cluster in ("eu-west", "us-east", "ap-south"):
                probe = {"cluster": cluster, "probe": "ingress", "vantage": "test"}
                await wait_for(partial(becomes, 1.0, "failover_probe_result", **probe), 5, "probe result")
                assert (await value("failover_probe_last_report_timestamp_seconds", **probe) or 0) > 1e9
            # the reconciler and the API read the balancer: every cluster's weight is there
            async with http.get(f"{base}/api/v1/clusters", headers={"Authorization": f"Bearer {ADMIN}"}):
                pass
            for cluster in ("eu-west", "us-east", "ap-south"):
                assert await value("failover_balancer_weight", balancer="global", cluster=cluster) == 100.0

            # a human drains eu-west (forced: no approval): its first action is not detection latency
            async with http.post(
                f"{base}/api/v1/commands",
                json={"command": "failover", "args": {"cluster": "eu-west", "force": True}},
                headers={"Authorization": f"Bearer {ADMIN}"},
            ) as resp:
                assert resp.status == 200, await resp.text()
            await wait_for(
                lambda: becomes(0.0, "failover_balancer_weight", balancer="global", cluster="eu-west"),
                10,
                "eu-west's weight gauge at 0 after the manual drain",
            )
            assert await value("failover_detection_to_first_action_seconds_count") == 0.0

            # a detected failure: the probe result goes to 0, the drain is automatic and is observed
            await f.apps["us-east"].stop()
            failing = {"cluster": "us-east", "probe": "ingress", "vantage": "test"}
            await wait_for(lambda: becomes(0.0, "failover_probe_result", **failing), 5, "failing probe")
            await wait_for(
                lambda: becomes(0.0, "failover_balancer_weight", balancer="global", cluster="us-east"),
                10,
                "us-east's weight gauge at 0 after the automatic failover",
            )
            await wait_for(
                lambda: becomes(1.0, "failover_detection_to_first_action_seconds_count"),
                5,
                "the automatic run's first action observed",
            )
            assert await value("failover_balancer_weight", balancer="global", cluster="ap-south") == 100.0


async def test_a_failover_during_a_failover_drill_is_not_detection_latency(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    """`failover drill` announces itself with the `drill` command: the failover its fault causes is
    practice, and must not count in the detection-to-action histogram (before, only drills the daemon
    scheduled itself were left out)."""
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, tokens=TOKENS)
        async with running(path) as daemon, aiohttp.ClientSession() as http:
            assert daemon.api is not None and daemon.runner is not None
            base = f"http://127.0.0.1:{daemon.api.port}"
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")
            drill = {"phase": "started", "fault": "scale-to-zero", "cluster": "us-east"}
            async with http.post(
                f"{base}/api/v1/commands",
                json={"command": "drill", "args": drill},
                headers={"Authorization": f"Bearer {ADMIN}"},
            ) as resp:
                assert resp.status == 200, await resp.text()
            await f.apps["us-east"].stop()

            async def drained() -> bool:
                return (await f.weights())["us-east"] == 0 and not daemon.runner.active  # type: ignore[union-attr]

            await wait_for(drained, 10, "us-east drained by the drill's failover")
            assert (
                sample(await metrics_text(daemon), "failover_detection_to_first_action_seconds_count") == 0.0
            )


def test_first_action_latency_counts_detected_runs_only() -> None:
    metrics = Metrics()
    first = metrics.first_actions

    def count() -> float:
        return (
            sample(
                generate_latest(metrics.registry).decode(), "failover_detection_to_first_action_seconds_count"
            )
            or 0
        )

    runs = {
        "auto": {"event": "cluster.failed", "cluster": "b", "actor": None},
        "human": {"event": "manual", "cluster": "b", "actor": "otto"},
        "asked": {"event": "cluster.failed", "cluster": "b", "actor": "otto"},
    }
    for run_id, started in runs.items():
        first.run_event(run_id, "started", started)
        first.run_event(run_id, "step.succeeded", {"since_event_s": 0.4})
        first.run_event(run_id, "finished", {"status": "succeeded"})
    assert count() == 1.0 and first.automatic == {}, "only `auto`; finished runs are forgotten"

    first.drill("b", True)  # a drill's fault on b: its runs are practice
    first.run_event("drilled", "started", {"event": "cluster.failed", "cluster": "b", "actor": None})
    first.run_event("drilled", "step.succeeded", {"since_event_s": 0.4})
    first.drill("b", False)
    first.run_event("after", "started", {"event": "cluster.failed", "cluster": "b", "actor": None})
    first.run_event("after", "step.succeeded", {"since_event_s": 0.4})
    assert count() == 2.0
