"""The daemon in-process against real NATS and a real HAProxy, at short timings."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core import subjects
from orchestrator.core.config import load_config
from orchestrator.core.config_daemon import NatsConfig
from orchestrator.playbooks.actions import REGISTRY
from orchestrator.runtime.daemon import Daemon
from tests.daemons import DaemonProcess
from tests.helpers import SHORT_DETECTION, collect, fleet, hook_receiver, wait_for, write_config

pytestmark = pytest.mark.timeout(90)


@asynccontextmanager
async def running(config_path: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(load_config(config_path))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait([task, ready], timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if not daemon.ready.is_set():
        ready.cancel()
        stop.set()
        await task  # raises the start-up error
        raise AssertionError("daemon did not become ready")
    try:
        yield daemon
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def metrics_text(daemon: Daemon) -> str:
    assert daemon.api is not None
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{daemon.api.port}/metrics") as r:
        return await r.text()


async def all_healthy(daemon: Daemon) -> bool:
    assert daemon.detection is not None
    return set(daemon.detection.cluster_view().values()) == {"healthy"}


async def test_failover_and_failback_through_real_haproxy(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url)
        async with running(path) as daemon:
            assert daemon.bus is not None
            events = await collect(daemon.bus, subjects.EVENTS_ALL)
            runs = await collect(daemon.bus, subjects.RUNS_ALL)
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")

            await f.apps["us-east"].stop()

            async def drained() -> bool:
                return (await f.weights())["us-east"] == 0

            await wait_for(drained, 10, "us-east drained")
            assert await f.weights() == {"eu-west": 100, "us-east": 0, "ap-south": 100}
            traffic = await f.traffic(40)
            assert set(traffic) == {"eu-west", "ap-south"}, traffic

            await f.apps["us-east"].start()

            async def restored() -> bool:
                assert daemon.runner is not None
                return (await f.weights())["us-east"] == 100 and not daemon.runner.active

            await wait_for(restored, 30, "us-east restored")
            assert set(await f.traffic(30)) == {"eu-west", "us-east", "ap-south"}

        kinds = [(e["type"], e.get("cluster")) for e in events]
        assert ("cluster.failed", "us-east") in kinds and ("cluster.recovered", "us-east") in kinds
        failed = next(e for e in events if e["type"] == "cluster.failed")
        assert failed["v"] == 1 and failed["from"] == "healthy" and failed["evidence"]["failing"]
        steps = [(r["playbook"], r["type"], r["step"]) for r in runs]
        assert ("cluster-failover", "step.succeeded", "drain") in steps
        assert ("cluster-failback", "step.succeeded", "restore") in steps
        summaries = [n["summary"] for n in hook.received]
        assert any("us-east failed" in s for s in summaries) and any("recovered" in s for s in summaries)
        assert hook.rejected == 0

        # the journal in KV has the whole run, and the original weight record is gone after the restore
        bus = await Bus.connect(NatsConfig(url=nats_server.url), tmp_path, name="check")
        try:
            await bus.ensure_topology()
            run_id = next(r["run_id"] for r in runs if r["playbook"] == "cluster-failover")
            found = await Bus.kv_get(bus.kv.runs, f"run.{run_id}")
            assert found is not None
            record = found[0]
            assert record["status"] == "succeeded" and record["steps"]["drain"]["result"]["before"] == 100
            assert await Bus.kv_get(bus.kv.state, "orig.lb.global.us-east") is None
        finally:
            await bus.close()


async def test_malformed_reports_are_counted_and_dropped(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url)
        async with running(path) as daemon:
            assert daemon.bus is not None
            await daemon.bus.publish("failover.health.x.y", b"this is not json")
            await daemon.bus.publish("failover.health.x.y", b'{"v": 1, "cluster": "x"}')
            await daemon.bus.publish("failover.health.x.y", b"\xff\xfe" * 1000)
            good_but_wrong_subject = {
                "v": 1,
                "cluster": "eu-west",
                "probe": "ingress",
                "vantage": "evil",
                "boot_id": "b",
                "seq": 1,
                "ok": False,
                "latency_ms": 1,
                "ts": "2026-01-01T00:00:00Z",
            }
            await daemon.bus.publish(
                "failover.health.us-east.ingress", json.dumps(good_but_wrong_subject).encode()
            )
            await daemon.bus.flush()

            async def counted() -> bool:
                return 'failover_malformed_messages_total{subject_kind="health"} 4.0' in await metrics_text(
                    daemon
                )

            await wait_for(counted, 5, "4 malformed messages counted")
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")

            # valid reports that do not count: a vantage not in detection.vantages, and old news (made
            # longer than stale_after ago, as a publisher that buffered through a NATS outage sends)
            def failing(vantage: str, ts: str, seq: int) -> bytes:
                body = {**good_but_wrong_subject, "vantage": vantage, "cluster": "us-east", "ts": ts}
                return json.dumps(body | {"seq": seq}).encode()

            now = datetime.now(UTC).isoformat()
            for seq in range(1, 6):
                await daemon.bus.publish(
                    "failover.health.stranger.us-east.ingress", failing("stranger", now, seq)
                )
                await daemon.bus.publish(
                    "failover.health.test.us-east.ingress", failing("test", "2026-01-01T00:00:00Z", seq)
                )
            await daemon.bus.flush()

            async def dropped() -> bool:
                text = await metrics_text(daemon)
                return (
                    'failover_reports_dropped_total{reason="unknown_vantage"} 5.0' in text
                    and 'failover_reports_dropped_total{reason="stale"} 5.0' in text
                )

            await wait_for(dropped, 5, "5 unlisted and 5 stale reports counted and dropped")
            assert daemon.status()["unlisted_vantages"] == ["stranger"]
            assert await all_healthy(daemon)  # five failing reports each, and nothing changed
            assert daemon.readiness() == {
                "nats": True,
                "detector": True,
                "leader": True,
                "balancers_readable": True,
                "failed_clusters_drained": True,
            }
            assert await f.weights() == {"eu-west": 100, "us-east": 100, "ap-south": 100}


async def test_the_last_healthy_cluster_is_never_drained(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        # the observer guard would freeze on two of three failing together; here we test the balancer guard
        detection = SHORT_DETECTION.replace("}", ", max_failed_fraction: 1.0}")
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, detection=detection)
        async with running(path) as daemon:
            assert daemon.bus is not None
            runs = await collect(daemon.bus, subjects.RUNS_ALL)
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")
            for name in ("eu-west", "us-east"):
                await f.apps[name].stop()

            async def two_drained() -> bool:
                return list((await f.weights()).values()).count(0) == 2

            await wait_for(two_drained, 10, "two clusters drained")
            await f.apps["ap-south"].stop()  # the last one fails too: it must keep its weight

            async def refused() -> bool:
                return any(r["type"] == "blocked" for r in runs)

            await wait_for(refused, 10, "a blocked run event")
            await asyncio.sleep(0.5)
            assert await f.weights() == {"eu-west": 0, "us-east": 0, "ap-south": 100}
            blocked = next(r for r in runs if r["type"] == "blocked")
            assert blocked["detail"]["rule"] == "min_healthy_clusters"
            assert "ap-south" in blocked["detail"]["reason"]
            assert 'failover_guard_refusals_total{rule="min_healthy_clusters"} 1.0' in await metrics_text(
                daemon
            )

            async def paged() -> bool:
                return any("failover of ap-south failed" in n["summary"] for n in hook.received)

            await wait_for(paged, 5, "the on_failure page")


async def test_everything_failing_at_once_freezes_and_pages_instead_of_draining(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url)
        async with running(path) as daemon:
            assert daemon.bus is not None
            events = await collect(daemon.bus, subjects.EVENTS_ALL)
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")
            for app in f.apps.values():
                app.fail(503)  # every cluster at once: more likely our side than theirs

            async def paged() -> bool:
                return any("automation frozen" in n["summary"] for n in hook.received)

            await wait_for(paged, 10, "the observer-suspect page")
            await asyncio.sleep(1.0)  # ~5 more rounds: still nothing drained
            assert await f.weights() == {"eu-west": 100, "us-east": 100, "ap-south": 100}
            kinds = [e["type"] for e in events]
            assert kinds.count("observer.suspect") == 1 and "cluster.failed" not in kinds
            assert "failover_observer_frozen 1.0" in await metrics_text(daemon)

            for app in f.apps.values():
                app.heal()

            async def cleared() -> bool:
                return any(e["type"] == "observer.clear" for e in events)

            await wait_for(cleared, 10, "observer.clear")
            assert "cluster.failed" not in [e["type"] for e in events]


async def test_restart_does_not_emit_a_failure_twice(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url)
        watcher = await Bus.connect(NatsConfig(url=nats_server.url), tmp_path, name="watcher")
        try:
            events = await collect(watcher, "failover.events.cluster.>")
            async with running(path) as daemon:
                await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")
                await f.apps["us-east"].stop()

                async def failed() -> bool:
                    return any(e["type"] == "cluster.failed" for e in events)

                await wait_for(failed, 10, "cluster.failed")
            # the daemon is down for a moment while us-east stays down; then it starts again
            async with running(path) as daemon:
                assert daemon.detection is not None
                assert daemon.detection.cluster_view()["us-east"] == "failed"  # from KV, before any report
                await asyncio.sleep(1.5)  # several rounds of us-east still failing
                assert daemon.detection.cluster_view()["us-east"] == "failed"
            await watcher.flush()
            assert [e["type"] for e in events if e["cluster"] == "us-east"] == ["cluster.failed"]
            assert (await f.weights())["us-east"] == 0
        finally:
            await watcher.close()


def test_run_subprocess_stops_cleanly_on_sigterm(
    haproxy_binary: str, nats_binary: str, tmp_path: Path
) -> None:
    async def scenario() -> int:
        async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
            path = write_config(tmp_path, f, hook.url)  # no nats.url: embedded nats-server
            daemon = DaemonProcess(path, tmp_path / "daemon.log", load_config(path).api.port)
            await daemon.start()
            try:
                await daemon.wait_ready()
            finally:
                code = await daemon.stop()  # SIGTERM
            logs = daemon.log_text()
            lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
            assert any(line["event"] == "daemon.stopped" for line in lines), logs[-2000:]
            assert HOOK_SECRET_NOT_IN(logs)
            return code

    assert asyncio.run(scenario()) == 0


def HOOK_SECRET_NOT_IN(text: str) -> bool:
    from tests.helpers import HOOK_SECRET

    return HOOK_SECRET not in text


async def test_playbooks_hot_reload_and_an_invalid_set_is_refused_whole(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    import shutil

    books = tmp_path / "books"
    shutil.copytree(Path(__file__).resolve().parents[1] / "playbooks", books)
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, playbooks=books)
        async with running(path) as daemon:
            assert daemon.bus is not None and daemon.runner is not None
            events = await collect(daemon.bus, subjects.SYSTEM_EVENTS)
            before = daemon.runner.playbooks["cluster-failback"].sha256
            failback = books / "cluster-failback.yaml"
            failback.write_text(failback.read_text().replace("ramp: [25, 50, 100]", "ramp: [50, 100]"))

            async def reloaded() -> bool:
                return any(e["type"] == "playbooks.reloaded" for e in events)

            await wait_for(reloaded, 10, "playbooks.reloaded")
            good = daemon.runner.playbooks["cluster-failback"].sha256
            assert good != before

            (books / "broken.yaml").write_text(
                "name: broken\non: {event: cluster.failed}\nsteps:\n  - {action: lb.dran, with: {}}\n"
            )

            async def rejected() -> bool:
                return any(e["type"] == "playbooks.rejected" for e in events)

            await wait_for(rejected, 10, "playbooks.rejected")
            problems = next(e for e in events if e["type"] == "playbooks.rejected")["detail"]["problems"]
            known = ", ".join(sorted(REGISTRY))
            assert problems == [
                f"{books}/broken.yaml:4: steps[0].action: unknown action 'lb.dran' (known: {known})"
            ]
            assert daemon.runner.playbooks["cluster-failback"].sha256 == good  # the last good set stays
            assert "broken" not in daemon.runner.playbooks

            (books / "broken.yaml").unlink()
            count = len([e for e in events if e["type"] == "playbooks.reloaded"])
            daemon.request_reload()  # what SIGHUP does

            async def reloaded_again() -> bool:
                return len([e for e in events if e["type"] == "playbooks.reloaded"]) > count

            await wait_for(reloaded_again, 10, "reload on request")


async def test_a_drain_reverted_by_an_haproxy_reload_is_reasserted(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(
            tmp_path, f, hook.url, nats_url=nats_server.url, extra="reconcile: {interval: 300ms}"
        )
        async with running(path) as daemon:
            assert daemon.bus is not None
            events = await collect(daemon.bus, subjects.SYSTEM_EVENTS)
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")
            await f.apps["us-east"].stop()

            async def drained() -> bool:
                return (await f.weights())["us-east"] == 0

            await wait_for(drained, 10, "us-east drained")
            await f.haproxy.reload()  # no saved state: the reload puts every server back to weight 100
            assert (await f.weights())["us-east"] == 100
            await wait_for(drained, 5, "the drain re-asserted")

            async def reported() -> bool:
                return any(e["type"] == "drift.detected" for e in events)

            await wait_for(reported, 5, "drift.detected")
            drift = next(e for e in events if e["type"] == "drift.detected")["detail"]
            assert drift == {
                "kind": "lb",
                "balancer": "global",
                "cluster": "us-east",
                "expected": 0,
                "found": 100,
                "instances": {f.haproxy.admin_url: 100},
                "reasserted": True,
            }


async def test_a_new_leader_drains_a_failed_cluster_nobody_drained(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    """The previous leader decided `failed` (persisted) and died before any run started."""
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        await f.apps["us-east"].stop()
        bus = await Bus.connect(NatsConfig(url=nats_server.url), tmp_path, name="previous-leader")
        try:
            await bus.ensure_topology()
            await Bus.kv_put(
                bus.kv.state,
                "cluster.us-east",
                {"status": "failed", "since": 1.0, "last_known": "failed", "history": [1.0]},
            )
        finally:
            await bus.close()
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url)
        async with running(path):

            async def drained() -> bool:
                return (await f.weights())["us-east"] == 0

            await wait_for(drained, 10, "us-east drained on taking over")
            assert (await f.weights())["eu-west"] == 100


async def test_spoofed_events_on_the_bus_start_nothing_and_metrics_show_real_ones(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url)
        async with running(path) as daemon:
            assert daemon.bus is not None
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")
            fake = {
                "v": 1,
                "id": "x",
                "type": "cluster.failed",
                "cluster": "us-east",
                "from": "healthy",
                "to": "failed",
                "reason": "trust me",
                "evidence": {},
                "ts": "2026-01-01T00:00:00Z",
            }
            await daemon.bus.publish_durable("failover.events.cluster.us-east", json.dumps(fake).encode())
            await asyncio.sleep(1.0)
            assert await f.weights() == {"eu-west": 100, "us-east": 100, "ap-south": 100}
            assert daemon.runner is not None and not daemon.runner.runs

            await f.apps["us-east"].stop()  # a real failure: our own detector decides

            async def drained() -> bool:
                return (await f.weights())["us-east"] == 0

            await wait_for(drained, 10, "us-east drained")
            await asyncio.sleep(0.3)
            text = await metrics_text(daemon)
            assert "failover_detection_to_first_action_seconds_count 1.0" in text
            assert 'failover_step_duration_seconds_count{action="lb.drain",outcome="succeeded",' in text
            assert "failover_leader 1.0" in text


async def test_nats_token_auth_from_the_config(nats_binary: str, tmp_path: Path) -> None:

    from orchestrator.bus.embedded import free_port
    from orchestrator.core.errors import TemporaryError

    port = free_port()
    proc = subprocess.Popen(
        [
            nats_binary,
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-sd",
            str(tmp_path),
            "--auth",
            "s3cret-nats-token",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"nats://127.0.0.1:{port}"
        for _ in range(100):
            try:
                bus = await Bus.connect(
                    NatsConfig.model_validate({"url": url, "token": "s3cret-nats-token"}),
                    tmp_path,
                    name="authed",
                )
                break
            except TemporaryError:
                await asyncio.sleep(0.05)
        await bus.ensure_topology()
        await bus.close()
        with pytest.raises(TemporaryError) as info:
            await Bus.connect(
                NatsConfig.model_validate({"url": url, "token": "wrong", "connect_timeout": "1s"}),
                tmp_path,
                name="refused",
            )
        assert "s3cret" not in str(info.value) and "wrong" not in str(info.value)
    finally:
        proc.terminate()
        proc.wait(10)
