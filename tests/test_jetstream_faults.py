"""JetStream faults under a running daemon (DESIGN §12, liveness), with real nats-servers only.

1. A 3-node NATS cluster with R3 streams and KV buckets (`nats.replicas: 3`): the JetStream meta leader,
   the leader of the lease stream `KV_failover-leader`, the leader of `FAILOVER_EVENTS`, then the leader
   of `KV_failover-state` are SIGKILLed and started again, one at a time. During each fault nothing is
   drained (HAProxy weights stay 100), the daemon keeps running, no task of it dies, and it leads again.
   A real cluster failure is drained while a node is down: once right after the kill (while streams
   elect leaders), once after JetStream re-elected them (quorum 2 of 3). SIGTERM then exits 0.
2. JetStream unanswered for 10 s while core NATS works (a proxy drops the JetStream API and KV calls,
   and publishes waiting for a JetStream ack, as during a JetStream leader election): the daemon neither
   exits nor drains anything, and acts on a real failure once JetStream answers again. SIGTERM exits 0.
3. `nats.replicas` above 1 on a single nats-server fails at start with a clear message, and a prober or
   a dry run (`ensure_topology()` without a TTL) leaves the daemon's lease TTL alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core import subjects
from orchestrator.core.config_daemon import NatsConfig
from orchestrator.core.errors import OrchestratorError, PermanentError
from tests.daemons import DaemonProcess, running
from tests.helpers import Fleet, fleet, hook_receiver, wait_for, write_config
from tests.natscluster import NatsCluster, jetstream_blocker, jetstream_calls, nats_cluster

pytestmark = pytest.mark.timeout(150)

LEASE = "leadership: {lease_ttl: 3s, renew_interval: 500ms, margin: 1s}"
RECONCILE = "reconcile: {interval: 1s}"
"""The reconciler and the drain watchdog read the KV every second, so they run into every fault."""
NOMINAL = 100
DRAIN_BOUND_S = 15.0
"""A real failure while JetStream answers (with a node down, or after an outage) is drained within this."""
DRAIN_DURING_ELECTION_S = 25.0
"""A failure at the moment the streams elect leaders waits for them: measured up to ~14 s (the lease and
KV streams re-elect in 4-9 s, a KV read that went unanswered meanwhile times out after nats-py's 5 s, then
the drain watchdog's next pass at 1 s drains it)."""
MIN_DOWN_S = 4.0
"""A killed nats-server stays down at least this long: longer than the lease can go unrenewed."""
BLOCK_S = 10.0
FAILED_APP = "us-east"


@dataclass
class Watch:
    """Samples every 100 ms: the HAProxy weights (a cluster not in `may_drain` below nominal is a false
    drain), whether the daemon process runs, and whether it leads."""

    fleet: Fleet
    daemon: DaemonProcess
    may_drain: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    leading: list[tuple[float, bool]] = field(default_factory=list)
    samples: int = 0
    unreadable: int = 0
    started: float = field(default_factory=time.monotonic)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            at = time.monotonic() - self.started
            if not self.daemon.running:
                assert self.daemon.proc is not None
                self.problems.append(f"{at:.1f}s: the daemon exited with {self.daemon.proc.returncode}")
                return
            try:
                weights = await self.fleet.weights()
            except (OrchestratorError, OSError):
                self.unreadable += 1
            else:
                self.samples += 1
                drained = {c: w for c, w in weights.items() if w != NOMINAL and c not in self.may_drain}
                if drained:
                    self.problems.append(f"{at:.1f}s: false drain {drained}")
            self.leading.append((time.monotonic(), await self.daemon.leads()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    def not_leading_s(self, since: float) -> float:
        """The longest stretch after `since` (monotonic) during which the daemon did not lead."""
        longest, start = 0.0, None
        for at, leads in self.leading:
            if at < since:
                continue
            if not leads and start is None:
                start = at
            elif leads and start is not None:
                longest, start = max(longest, at - start), None
        if start is not None and self.leading:
            longest = max(longest, self.leading[-1][0] - start)
        return longest


@asynccontextmanager
async def watching(f: Fleet, daemon: DaemonProcess) -> AsyncIterator[Watch]:
    watch = Watch(f, daemon)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(watch.run(stop), name="fault-watch")
    try:
        yield watch
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def cluster_states(daemon: DaemonProcess) -> dict[str, str]:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s,
            s.get(f"http://127.0.0.1:{daemon.api}/api/v1/status") as r,
        ):
            body: dict[str, Any] = await r.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}
    return dict(body.get("clusters") or {})


async def all_healthy(daemon: DaemonProcess) -> bool:
    states = await cluster_states(daemon)
    return bool(states) and set(states.values()) == {"healthy"}


def make_daemon(
    tmp_path: Path, f: Fleet, hook_url: str, nats_url: str, nats_extra: str = ""
) -> DaemonProcess:
    """A daemon for the fleet on `nats_url` with a short lease; `nats_extra` adds to the `nats:` map."""
    api = free_port()
    config = write_config(
        tmp_path, f, hook_url, nats_url=nats_url, api_port=api, extra=f"{LEASE}\n{RECONCILE}"
    )
    if nats_extra:
        text = config.read_text()
        config.write_text(
            text.replace(f"nats: {{url: '{nats_url}'}}", f"nats: {{url: '{nats_url}', {nats_extra}}}")
        )
        assert nats_extra in config.read_text()
    return DaemonProcess(config, tmp_path / "daemon.log", api)


async def start_and_settle(daemon: DaemonProcess, f: Fleet) -> None:
    """Start the daemon; return once it leads and sees every cluster healthy, nothing drained."""
    await daemon.start()
    took = await daemon.wait_leads(30)
    await wait_for(lambda: all_healthy(daemon), 20, "every cluster healthy", poll_s=0.1)
    assert await f.weights() == dict.fromkeys(f.apps, NOMINAL)
    print(f"\ndaemon leads {took:.2f}s after start")


async def drain_after_failure(
    f: Fleet, watch: Watch, app: str = FAILED_APP, bound_s: float = DRAIN_BOUND_S
) -> float:
    """Stop one app (a real cluster failure) and return the seconds until HAProxy drained it."""
    watch.may_drain.add(app)
    await f.apps[app].stop()

    async def drained() -> bool:
        with contextlib.suppress(OrchestratorError, OSError):
            return (await f.weights())[app] == 0
        return False

    return await wait_for(drained, bound_s, f"{app} drained", poll_s=0.1)


def log_counts(daemon: DaemonProcess) -> dict[str, int]:
    text = daemon.log_text()
    return {
        event: len(re.findall(rf'"event": ?"{re.escape(event)}"', text))
        for event in (
            "leader.deposed",
            "leader.resumed",
            "leader.elected",
            "leader.renew_failed",
            "task.died",
            "task.gave_up",
            "nats.reconnected",
        )
    }


async def stop_cleanly(daemon: DaemonProcess) -> None:
    started = time.monotonic()
    code = await daemon.stop()
    print(f"SIGTERM -> exit code {code} after {time.monotonic() - started:.2f}s")
    assert code == 0, daemon.log_text()[-3000:]


def assert_no_task_died(daemon: DaemonProcess) -> None:
    counts = log_counts(daemon)
    print(f"daemon log: {counts}")
    died = [
        line for line in daemon.log_text().splitlines() if '"task.died"' in line or '"task.gave_up"' in line
    ]
    assert not died, "\n".join(died)[-4000:]


async def role_leader(cluster: NatsCluster, role: str) -> str | None:
    return await (cluster.meta_leader() if role == "meta" else cluster.stream_leader(role))


async def settled_leader(cluster: NatsCluster, role: str, timeout_s: float = 15) -> str:
    """The leader of `role` once every live node agrees on it (a restarted node catches up first)."""
    found: list[str] = []

    async def agreed() -> bool:
        leader = await role_leader(cluster, role)
        found[:] = [leader] if leader else []
        return bool(found)

    await wait_for(agreed, timeout_s, f"a leader for {role} every node agrees on", poll_s=0.1)
    return found[0]


STREAMS = (
    subjects.STREAM_EVENTS,
    subjects.STREAM_HEALTH,
    f"KV_{subjects.KV_LEADER}",
    f"KV_{subjects.KV_RUNS}",
    f"KV_{subjects.KV_STATE}",
)


async def roles_of(cluster: NatsCluster, node: str) -> list[str]:
    """What `node` leads: the JetStream meta group and/or streams."""
    return [role for role in ("meta", *STREAMS) if await role_leader(cluster, role) == node]


async def every_stream_led(cluster: NatsCluster) -> bool:
    """JetStream answers with the nodes left: a meta leader and a leader for every stream."""
    for role in ("meta", *STREAMS):
        if await role_leader(cluster, role) is None:
            return False
    return True


async def kill_leader(
    cluster: NatsCluster,
    daemon: DaemonProcess,
    f: Fleet,
    watch: Watch,
    role: str,
    fail: str | None = None,
    fail_when: str = "election",
) -> None:
    """SIGKILL the node leading `role`, keep it down until `role` has a new leader, the daemon leads again
    and MIN_DOWN_S passed, then start it again. With `fail`, that app is stopped as well: right after the
    kill (`election`: while streams elect leaders) or once every stream has a leader again (`quorum`:
    JetStream answers with 2 of 3 nodes), and it must be drained while the node is still down."""
    victim = await settled_leader(cluster, role)
    held = await roles_of(cluster, victim)
    await cluster.kill(victim)
    killed = time.monotonic()

    async def elected() -> bool:
        return await role_leader(cluster, role) is not None

    async def fail_app() -> float:
        assert fail is not None
        if fail_when == "election":
            return await drain_after_failure(f, watch, fail, DRAIN_DURING_ELECTION_S)
        await wait_for(lambda: every_stream_led(cluster), 20, "every stream led by a live node", poll_s=0.1)
        await wait_for(daemon.leads, 20, "the daemon leads", poll_s=0.1)
        return await drain_after_failure(f, watch, fail, DRAIN_BOUND_S)

    async with asyncio.TaskGroup() as group:
        drain = group.create_task(fail_app()) if fail else None
        await wait_for(elected, 20, f"a new leader for {role}", poll_s=0.1)
        took_elect = time.monotonic() - killed
        await wait_for(daemon.leads, 20, "the daemon leads again", poll_s=0.1)
    if (left := MIN_DOWN_S - (time.monotonic() - killed)) > 0:
        await asyncio.sleep(left)
    down = time.monotonic() - killed
    assert daemon.running
    assert not watch.problems, watch.problems
    back = await cluster.restart(victim)
    print(
        f"killed {victim} (leader of {', '.join(held)}): a new {role} leader {took_elect:.2f}s after "
        f"the kill; the daemon did not lead for {watch.not_leading_s(killed):.2f}s; {victim} down "
        f"{down:.2f}s, cluster healthy {back:.2f}s after its restart"
    )
    if drain is not None:
        when = "right after the kill" if fail_when == "election" else "once every stream had a leader"
        print(f"  {fail} stopped {when}: drained in {drain.result():.2f}s")


async def test_a_3_node_nats_cluster_loses_its_jetstream_leaders_and_nothing_is_drained(
    nats_binary: str, haproxy_binary: str, tmp_path: Path
) -> None:
    async with (
        hook_receiver() as hook,
        fleet(tmp_path, haproxy_binary) as f,
        nats_cluster(nats_binary, tmp_path / "nats") as cluster,
    ):
        daemon = make_daemon(
            tmp_path, f, hook.url, cluster.url, "replicas: 3, max_bytes: {events: 64MiB, runs: 32MiB}"
        )
        async with running(daemon):
            await start_and_settle(daemon, f)
            assert {s: await cluster.stream_replicas(s) for s in STREAMS} == dict.fromkeys(STREAMS, 3)
            async with watching(f, daemon) as watch:
                await asyncio.sleep(1.0)  # a steady state first
                await kill_leader(cluster, daemon, f, watch, "meta")
                await kill_leader(cluster, daemon, f, watch, f"KV_{subjects.KV_LEADER}")
                await kill_leader(cluster, daemon, f, watch, subjects.STREAM_EVENTS, FAILED_APP, "election")
                await kill_leader(cluster, daemon, f, watch, f"KV_{subjects.KV_STATE}", "ap-south", "quorum")
                await asyncio.sleep(1.0)  # after the last restart, still nothing else drained
            assert not watch.problems, watch.problems
            assert watch.samples > 50, watch.samples
            print(f"{watch.samples} weight samples, {watch.unreadable} unreadable, no false drain")
            assert await f.weights() == {"eu-west": NOMINAL, "us-east": 0, "ap-south": 0}
            assert_no_task_died(daemon)
            await stop_cleanly(daemon)


async def test_jetstream_unanswered_for_10s_while_core_nats_works(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    # the JetStream API and KV, and publishes that wait for a JetStream ack (events, runs, audit)
    drop = jetstream_calls(captured=("failover.events.", "failover.runs.", subjects.AUDIT))
    async with (
        hook_receiver() as hook,
        fleet(tmp_path, haproxy_binary) as f,
        jetstream_blocker(nats_server.port, drop) as proxy,
    ):
        daemon = make_daemon(tmp_path, f, hook.url, proxy.url)
        async with running(daemon):
            await start_and_settle(daemon, f)
            async with watching(f, daemon) as watch:
                await asyncio.sleep(1.0)
                proxy.blocking = True
                blocked = time.monotonic()
                await asyncio.sleep(BLOCK_S)
                assert daemon.running, daemon.log_text()[-3000:]
                assert not watch.problems, watch.problems
                proxy.blocking = False
                unblocked = time.monotonic()
                print(
                    f"JetStream unanswered for {unblocked - blocked:.2f}s; dropped "
                    f"{sum(proxy.dropped.values())} calls {dict(proxy.dropped)}; the daemon did not "
                    f"lead for {watch.not_leading_s(blocked):.2f}s at most during it"
                )
                assert proxy.dropped, "nothing was blocked: the daemon made no JetStream call in 10 s?"
                # fencing: unable to renew its lease, the leader stepped down (TTL 3 s minus margin 1 s)
                assert watch.not_leading_s(blocked) > 0, "the daemon kept leading without a lease"
                relead = await wait_for(daemon.leads, 20, "the daemon leads again", poll_s=0.1)
                print(f"the daemon leads again {relead:.2f}s after JetStream answers")
                took_drain = await drain_after_failure(f, watch)
                print(f"{FAILED_APP} stopped after the fault: drained in {took_drain:.2f}s")
                await asyncio.sleep(0.5)
            assert not watch.problems, watch.problems
            assert watch.samples > 50, watch.samples
            print(f"{watch.samples} weight samples, {watch.unreadable} unreadable, no false drain")
            assert_no_task_died(daemon)
            await stop_cleanly(daemon)


async def test_replicas_above_1_on_a_single_nats_server_is_a_configuration_error(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"needs nats\.url"):
        NatsConfig(replicas=3)
    bus = await Bus.connect(NatsConfig(url=nats_server.url, replicas=3), tmp_path, name="test")
    try:
        with pytest.raises(PermanentError, match=r"nats\.replicas above 1 needs a NATS cluster"):
            await bus.ensure_topology(leader_ttl_s=3.0)
    finally:
        await bus.close()


async def test_a_prober_or_a_dry_run_leaves_the_daemons_lease_ttl_alone(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    daemon = await Bus.connect(NatsConfig(url=nats_server.url), tmp_path, name="daemon")
    prober = await Bus.connect(NatsConfig(url=nats_server.url), tmp_path, name="prober")
    try:
        await daemon.ensure_topology(leader_ttl_s=3.0)
        await prober.ensure_topology()  # what `failover probe` and `failover plan` call
        info = await daemon.js.stream_info(f"KV_{subjects.KV_LEADER}")
        assert info.config.max_age == 3.0
        await daemon.ensure_topology(leader_ttl_s=4.0)  # the daemon's own TTL still applies
        info = await daemon.js.stream_info(f"KV_{subjects.KV_LEADER}")
        assert info.config.max_age == 4.0
    finally:
        await prober.close()
        await daemon.close()
