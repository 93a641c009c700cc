"""Chaos: an observer, not a cluster, fails (DESIGN §6 quorum, staleness and the observer guard; §12).

1. One vantage of three cut off: its prober is a real `failover probe` process in a network namespace of
   its own, reaching NATS and the apps over a veth pair; the link goes down. Quorum 2 of the two others
   still holds: nothing is drained for the silence, the vantage goes stale, and a real failure meanwhile
   is drained by the two vantages left. Needs root (a failure under CI=true, a skip locally).
2. The management vantage cut off from every cluster: the daemon's own in-process prober reaches the
   apps through proxies that all refuse at once. The observer guard freezes automation and pages; nothing
   is drained; when the paths come back, it clears.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from chaos.conftest import Recorder
from chaos.infra_support import (
    DETECTION,
    INTERVAL_S,
    PROBE_TIMEOUT_S,
    REFUSED_BUDGET_S,
    THRESHOLD,
    healthy_rounds,
    probing,
    stack,
    watching,
)
from chaos.netns import namespace, require_netns
from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core.config import load_config
from orchestrator.core.config_daemon import NatsConfig
from orchestrator.detection.observer import is_fresh_vantage
from orchestrator.probes.prober import Prober
from orchestrator.runtime.daemon import Daemon
from orchestrator.sandbox.proxy import TcpProxy
from tests.daemons import DaemonProcess
from tests.helpers import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[1]
STALE_AFTER_S = 1.5
THREE = (
    f"{{failure_threshold: {THRESHOLD}, success_threshold: 2, recovery_hold: 1s,"
    f" stale_after: {STALE_AFTER_S}s, vantages: [v1, v2, v3]}}"  # quorum: majority, 2 of 3
)


async def test_one_vantage_cut_off(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path, recorder: Recorder
) -> None:
    """One vantage of three cut off (its prober's network namespace loses its link): nothing drained

    Recovery: a real failure while the vantage is cut off -> drained by the other two (quorum 2).
    """
    require_netns()
    recorder.budget(REFUSED_BUDGET_S)
    async with stack(tmp_path, nats_server.url, haproxy_binary) as s:
        base = s.config("daemon", vantage="v1", detection=THREE, extra="")
        daemon = Daemon(load_config(base), run_probes=False)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(daemon.run(stop), name="daemon")]
        bus = await Bus.connect(NatsConfig(url=nats_server.url), tmp_path, name="probers")
        for v in ("v1", "v2"):
            prober = Prober(load_config(base), bus.publish, vantage=v)
            tasks.append(asyncio.create_task(prober.run(stop), name=f"prober-{v}"))
        proxies: list[TcpProxy] = []
        try:
            with namespace("v3") as ns:
                # the namespace reaches NATS and each app through a proxy on the host end of its link
                nats_proxy = TcpProxy(free_port(), "127.0.0.1", nats_server.port, host=ns.host_ip)
                proxies.append(nats_proxy)
                text = _point_nats(base.read_text(), ns.host_ip, nats_proxy.port)
                for app in s.fleet.apps.values():
                    proxy = TcpProxy(free_port(), "127.0.0.1", app.port, host=ns.host_ip)
                    proxies.append(proxy)
                    text = text.replace(app.url, proxy.url)
                for proxy in proxies:
                    await proxy.start()
                config = tmp_path / "v3.yaml"
                config.write_text(text)
                v3 = ns.process(DaemonProcess(config, tmp_path / "v3.log", name="v3", command=("probe",)))
                await v3.start("--vantage", "v3")
                try:
                    await asyncio.wait_for(daemon.ready.wait(), 20)
                    await wait_for(lambda: _fresh(daemon, "v3"), 20, "v3 reports from its namespace")
                    await wait_for(lambda: _all_healthy(daemon), 15, "all healthy from three vantages")
                    async with watching(s.fleet) as watch:
                        ns.link_down()
                        cut = time.monotonic()
                        await wait_for(lambda: not _fresh(daemon, "v3"), STALE_AFTER_S + 5, "v3 stale")
                        went_stale = time.monotonic() - cut
                        await asyncio.sleep(2 * THRESHOLD * INTERVAL_S)  # silence: nothing may happen
                        assert daemon.detection is not None
                        assert set(daemon.detection.cluster_view().values()) == {"healthy"}
                        watch.may_drain.add("us-east")
                        await s.fleet.apps["us-east"].stop()
                        took = await s.wait_weight("us-east", 0, REFUSED_BUDGET_S + 10, "us-east drained")
                        recorder.trial(took)
                        await asyncio.sleep(1.0)
                        ns.link_up()
                        back = await wait_for(lambda: _fresh(daemon, "v3"), 30, "v3 fresh again")
                    watch.check()
                    assert took <= REFUSED_BUDGET_S, f"drained in {took:.2f}s with v3 cut off"
                    assert s.drains("us-east") == 1, s.counter.commands
                    failed = s.failed_events("us-east")
                    assert len(failed) == 1 and set(failed[0]["evidence"]["failing"]) == {"v1", "v2"}, failed
                    failures = [e for e in s.events if e["type"] == "cluster.failed"]
                    assert [e["cluster"] for e in failures] == ["us-east"], failures
                    recorder.note(
                        f"v3 stale {went_stale:.2f}s after its link went down, fresh {back:.2f}s after it "
                        f"came back; 0 false drains in {watch.samples} samples"
                    )
                finally:
                    await v3.stop(10)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await bus.close()
            for proxy in proxies:
                await proxy.stop()


def _point_nats(text: str, host: str, port: int) -> str:
    """Replace the config's NATS URL (whatever it is) by the proxy's in the namespace."""
    start = text.index("nats: {url: '") + len("nats: {url: '")
    end = text.index("'", start)
    return text[:start] + f"nats://{host}:{port}" + text[end:]


def _fresh(daemon: Daemon, vantage: str) -> bool:
    if daemon.detection is None:
        return False
    return is_fresh_vantage(daemon.detection.state, vantage, daemon.detection.clock())


def _all_healthy(daemon: Daemon) -> bool:
    return daemon.detection is not None and set(daemon.detection.cluster_view().values()) == {"healthy"}


async def test_management_vantage_cut_off_from_every_cluster(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path, recorder: Recorder
) -> None:
    """Management vantage cut off from every cluster: the observer guard freezes and pages, drains nothing

    Recovery: every path from the daemon's in-process prober refused at once -> the critical page.
    """
    budget = REFUSED_BUDGET_S + PROBE_TIMEOUT_S + 1.0  # detection, then the page's run and delivery
    recorder.budget(budget)
    books = [(REPO / "playbooks" / f"{n}.yaml").read_text() for n in ("cluster-failover", "observer-suspect")]
    async with stack(tmp_path, nats_server.url, haproxy_binary, books) as s:
        config = s.config("daemon", vantage="mgmt", detection=DETECTION, extra="")
        text = config.read_text()
        proxies = []
        for app in s.fleet.apps.values():
            proxy = TcpProxy(free_port(), "127.0.0.1", app.port)
            await proxy.start()
            proxies.append(proxy)
            text = text.replace(app.url, proxy.url)
        config.write_text(text)
        assert probing("mgmt") in text
        try:
            daemon = await s.add("daemon", config)
            await daemon.wait_leads(20)
            await healthy_rounds()
            async with watching(s.fleet, [daemon]) as watch:
                cut = time.monotonic()
                for proxy in proxies:
                    await proxy.refuse()

                def paged() -> bool:
                    return any("automation frozen" in n.get("summary", "") for n in s.hook.received)

                took = await wait_for(paged, budget + 10, "the critical page")
                recorder.trial(took)
                status = await _status(daemon)
                assert status.get("frozen") is True, status
                await asyncio.sleep(2.0)  # frozen: still nothing drained
                suspect = [e for e in s.system if e.get("type") == "observer.suspect"]
                assert len(suspect) == 1, s.system
                assert sorted(suspect[0]["detail"]["clusters"]) == sorted(s.fleet.apps), suspect
                for proxy in proxies:
                    await proxy.restore()
                back = time.monotonic()

                async def cleared() -> bool:
                    return (await _status(daemon)).get("frozen") is False

                await wait_for(cleared, 20, "the observer guard cleared")
                cleared_s = time.monotonic() - back
                await asyncio.sleep(1.0)
            watch.check()
            assert took <= budget, f"paged {took:.2f}s after the cut"
            assert s.counter.sets("eu1") == s.counter.sets("us1") == s.counter.sets("ap1") == []
            assert not [e for e in s.events if e.get("type") == "cluster.failed"], s.events
            assert daemon.running
            recorder.note(
                f"frozen and paged, 0 drains; cleared {cleared_s:.2f}s after the paths came back "
                f"(cut {time.monotonic() - cut:.1f}s in all)"
            )
        finally:
            for proxy in proxies:
                await proxy.stop()


async def _status(daemon: DaemonProcess) -> dict[str, object]:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
            session.get(f"http://127.0.0.1:{daemon.api}/api/v1/status") as resp,
        ):
            body: dict[str, object] = await resp.json()
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}
