"""What the infrastructure and vantage scenarios share: a fleet behind a real HAProxy whose runtime API is
reached through an `AdminCounter` (so every weight change HAProxy was sent is counted), an observer on
the bus, daemon replicas as separate processes, and a `Watch` that samples the real balancer every
100 ms for the invariants: no healthy cluster below its nominal weight, never every cluster drained,
no replica exiting.

Timings are the short ones of the test suite (probes every 200 ms, three failures to fail), so a refused
connection is drained within `failure_threshold x interval + 1 s`; scenarios that also lose a leader or
NATS add what that costs, from the lease they configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import free_port
from orchestrator.core import subjects
from orchestrator.core.config_daemon import NatsConfig
from orchestrator.core.errors import OrchestratorError
from tests.daemons import DaemonProcess, stop_all
from tests.helpers import (
    MEMBERS,
    AdminCounter,
    Fleet,
    HookReceiver,
    fleet,
    hook_receiver,
    wait_for,
    write_config,
)

NOMINAL = 100
INTERVAL_S = 0.2
THRESHOLD = 3
PROBE_TIMEOUT_S = 0.15
REFUSED_BUDGET_S = THRESHOLD * INTERVAL_S + 1.0
"""A refused connection is drained within failure_threshold x interval + 1 s (the chaos contract)."""
LEASE_TTL_S = 2.0
LEASE = "leadership: {lease_ttl: 2s, renew_interval: 400ms, margin: 600ms}"
DETECTION = f"{{failure_threshold: {THRESHOLD}, success_threshold: 2, recovery_hold: 1s}}"

FAST_FAILOVER = """name: fast-failover
on: {event: cluster.failed}
steps:
  - {id: drain, action: lb.drain, with: {balancer: global, cluster: "{{ event.cluster }}"},
     retry: {attempts: 5, initial: 100ms, max: 500ms}}
"""
FAST_FAILBACK = """name: fast-failback
on: {event: cluster.recovered}
steps:
  - {id: restore, action: lb.restore, with: {balancer: global, cluster: "{{ event.cluster }}"},
     retry: {attempts: 5, initial: 100ms, max: 500ms}}
"""


def probing(vantage: str, interval_s: float = INTERVAL_S) -> str:
    return (
        f"{{interval: {int(interval_s * 1000)}ms, timeout: {int(PROBE_TIMEOUT_S * 1000)}ms, jitter: 0s,"
        f" vantage: {vantage}}}"
    )


@dataclass
class Watch:
    """Samples the real balancer every 100 ms. A cluster not in `may_drain` below its nominal weight is a
    false drain; every cluster at 0 is the one outcome the product must never produce; a replica in
    `daemons` that exits on its own is a liveness failure."""

    fleet: Fleet
    daemons: list[DaemonProcess] = field(default_factory=list)
    may_drain: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    samples: int = 0
    unreadable: int = 0
    started: float = field(default_factory=time.monotonic)
    expected_exits: set[str] = field(default_factory=set)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            at = time.monotonic() - self.started
            for d in self.daemons:
                if d.proc is not None and not d.running and d.name not in self.expected_exits:
                    self.problems.append(f"{at:.1f}s: {d.name} exited with {d.proc.returncode}")
                    self.expected_exits.add(d.name)
            try:
                weights = await self.fleet.weights()
            except (OrchestratorError, OSError):
                self.unreadable += 1
            else:
                self.samples += 1
                false = {c: w for c, w in weights.items() if w != NOMINAL and c not in self.may_drain}
                if false:
                    self.problems.append(f"{at:.1f}s: false drain {false}")
                if weights and not any(weights.values()):
                    self.problems.append(f"{at:.1f}s: every cluster drained")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    def check(self) -> None:
        assert not self.problems, self.problems
        assert self.samples > 0, "the balancer was never read"


@asynccontextmanager
async def watching(f: Fleet, daemons: Iterable[DaemonProcess] = ()) -> AsyncIterator[Watch]:
    watch = Watch(f, list(daemons))
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(watch.run(stop), name="chaos-watch")
    try:
        yield watch
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@dataclass
class Stack:
    """A fleet, its counted HAProxy admin API, a webhook receiver, an observer's view of the bus, and the
    daemon replicas started on it (stopped when the stack closes)."""

    tmp: Path
    nats_url: str
    fleet: Fleet
    hook: HookReceiver
    counter: AdminCounter
    bus: Bus | None
    playbooks: Path
    replicas: list[DaemonProcess] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    system: list[dict[str, Any]] = field(default_factory=list)
    nats_extra: str = ""
    """Added to each replica's `nats:` map, e.g. `replicas: 3, max_bytes: {...}` on a NATS cluster."""

    def config(
        self, name: str, vantage: str = "mgmt", extra: str = LEASE, detection: str = DETECTION
    ) -> Path:
        """A replica's config: its own directory and API port, the counted admin API, these playbooks."""
        work = self.tmp / name
        work.mkdir(exist_ok=True)
        path = write_config(
            work,
            self.fleet,
            self.hook.url,
            nats_url=self.nats_url,
            playbooks=self.playbooks,
            api_port=free_port(),
            admin_url=self.counter.url,
            probing=probing(vantage),
            detection=detection,
            extra=extra,
        )
        if self.nats_extra:
            plain = f"nats: {{url: '{self.nats_url}'}}"
            text = path.read_text()
            assert plain in text, text
            path.write_text(text.replace(plain, f"nats: {{url: '{self.nats_url}', {self.nats_extra}}}"))
        return path

    async def add(self, name: str, config: Path | None = None, ready: bool = True) -> DaemonProcess:
        """Start a replica (`failover run` as its own process) and, by default, wait until it is ready."""
        path = config or self.config(name)
        api = int(path.read_text().split("listen: 127.0.0.1:", 1)[1].split(",", 1)[0])
        replica = DaemonProcess(path, self.tmp / f"{name}.log", api, name)
        self.replicas.append(replica)
        await replica.start()
        if ready:
            await replica.wait_ready(30)
        return replica

    async def leader(self, timeout_s: float = 15) -> DaemonProcess:
        """The one running replica that leads; fails when none or several do for `timeout_s`."""
        found: list[DaemonProcess] = []

        async def one_leads() -> bool:
            found[:] = [r for r in self.replicas if r.running and await r.leads()]
            return len(found) == 1

        await wait_for(one_leads, timeout_s, "exactly one replica leads", poll_s=0.1)
        return found[0]

    async def weight(self, cluster: str) -> int | None:
        with contextlib.suppress(OrchestratorError, OSError):
            return (await self.fleet.weights())[cluster]
        return None

    async def wait_weight(self, cluster: str, weight: int, timeout_s: float, what: str = "") -> float:
        async def reached() -> bool:
            return await self.weight(cluster) == weight

        return await wait_for(reached, timeout_s, what or f"{cluster} at weight {weight}", poll_s=0.02)

    def drains(self, cluster: str) -> int:
        """How many `set weight .../<server> 0` HAProxy was sent for this cluster (through the counter)."""
        return sum(1 for c in self.counter.sets(MEMBERS[cluster]) if c.split()[-1] == "0")

    def finished(self, run_id: str) -> list[dict[str, Any]]:
        return [r for r in self.runs if r.get("run_id") == run_id and r.get("type") == "finished"]

    def failed_events(self, cluster: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == "cluster.failed" and e.get("cluster") == cluster]


@asynccontextmanager
async def stack(
    tmp: Path, nats_url: str, haproxy_binary: str, playbooks: Iterable[str] = (FAST_FAILOVER, FAST_FAILBACK)
) -> AsyncIterator[Stack]:
    """The scenario's world; `playbooks` are written into a directory of their own."""
    book_dir = tmp / "playbooks"
    book_dir.mkdir(exist_ok=True)
    for i, text in enumerate(playbooks):
        (book_dir / f"book-{i}.yaml").write_text(text)
    async with hook_receiver() as hook, fleet(tmp, haproxy_binary) as f:
        counter = AdminCounter(int(f.haproxy.admin_url.rsplit(":", 1)[1]))
        await counter.start()
        s = Stack(tmp, nats_url, f, hook, counter, None, book_dir)
        try:
            # core subscriptions only: the observer never creates streams (the daemon does, with its
            # own `nats.replicas`), so a cluster's R3 streams are not created R1 by the test
            s.bus = await Bus.connect(NatsConfig(url=nats_url), tmp, name="chaos-observer")
            for subject, into in (
                (subjects.RUNS_ALL, s.runs),
                ("failover.events.cluster.>", s.events),
                (subjects.SYSTEM_EVENTS, s.system),
            ):
                await s.bus.subscribe(subject, _appender(into))
            yield s
        finally:
            await stop_all(s.replicas)
            if s.bus is not None:
                await s.bus.close()
            await counter.stop()


def _appender(into: list[dict[str, Any]]) -> Any:
    async def on(msg: Any) -> None:
        with contextlib.suppress(ValueError):
            into.append(json.loads(msg.data))

    return on


async def healthy_rounds() -> None:
    """Let the probers report every cluster healthy a few times before a fault."""
    await asyncio.sleep(THRESHOLD * INTERVAL_S + 0.6)
