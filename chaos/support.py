"""What the app and balancer scenarios share: the daemon as a separate process over a real NATS, a real
HAProxy behind an `AdminCounter`, and a `Watch` that samples the balancer every 50 ms so the invariants
(no false drain, never all drained, one `set weight ... 0` per drain) are checked on what the balancer
really held, not on what the daemon says it did.

`AppProcess` runs a sandbox app in its own process, so a scenario can SIGSTOP it: the kernel still
accepts connections into the backlog while nothing answers, which a coroutine that sleeps cannot imitate.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats, free_port
from orchestrator.core import subjects
from tests.daemons import DaemonProcess
from tests.helpers import (
    HOOK_SECRET,
    MEMBERS,
    AdminCounter,
    Fleet,
    HookReceiver,
    collect,
    fleet,
    hook_receiver,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
PROBING = "{interval: 200ms, timeout: 150ms, jitter: 0s, vantage: test}"
DETECTION = "{failure_threshold: 3, success_threshold: 2, quorum: 1, recovery_hold: 1s}"
INTERVAL_S, THRESHOLD, TIMEOUT_S = 0.2, 3, 0.15
REFUSED_BUDGET_S = THRESHOLD * INTERVAL_S + 1.0
"""The contract's budget (`failure_threshold x interval + 1 s`) at the short timings above."""
BLACKHOLE_BUDGET_S = REFUSED_BUDGET_S + TIMEOUT_S


def short_playbooks(target: Path) -> Path:
    """The shipped playbooks with the failback ramp shortened (3 s steps would dominate a scenario)."""
    target.mkdir(parents=True, exist_ok=True)
    for book in (REPO / "playbooks").glob("*.yaml"):
        text = (
            book.read_text()
            .replace("interval: 3s", "interval: 200ms")
            .replace("interval: 5s", "interval: 200ms")
        )
        (target / book.name).write_text(text)
    return target


@dataclass
class Watch:
    """Samples `cluster -> weight` from the real balancer until stopped; `healthy` names the clusters
    that must never be seen at weight 0 (a false drain)."""

    read: Any
    healthy: set[str]
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    false: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    """Samples where a cluster in `healthy` (as it was at that moment) was at weight 0."""
    _task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # an instance being reloaded does not answer for a moment
                weights = dict(await self.read())
                self.samples.append((time.monotonic(), weights))
                if any(weights.get(c) == 0 for c in self.healthy):
                    self.false.append(self.samples[-1])
            await asyncio.sleep(0.05)

    def start(self) -> Watch:
        self._task = asyncio.create_task(self._loop())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def all_drained(self) -> list[tuple[float, dict[str, int]]]:
        return [(t, w) for t, w in self.samples if w and not any(w.values())]

    def returns(self, cluster: str, after: float = 0.0) -> list[float]:
        """When `cluster` went from weight 0 back to serving, as sampled (after `after`)."""
        out, was_zero = [], False
        for t, w in self.samples:
            if t < after:
                continue
            if w[cluster] == 0:
                was_zero = True
            elif was_zero:
                out.append(t)
                was_zero = False
        return out

    def check(self) -> None:
        """The invariants every scenario asserts: no healthy cluster at 0, never all clusters at 0."""
        assert self.samples, "the balancer was never read"
        assert not self.false, f"false drain: {self.false[:3]}"
        assert not self.all_drained(), f"every cluster at weight 0: {self.all_drained()[:3]}"


@dataclass
class Stack:
    fleet: Fleet
    counter: AdminCounter
    daemon: DaemonProcess
    hook: HookReceiver
    events: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    watch: Watch
    work: Path

    async def weight(self, cluster: str) -> int:
        return (await self.fleet.weights())[cluster]

    async def drained(self, cluster: str, started: float, budget_s: float, limit_s: float = 30) -> float:
        """Seconds from `started` until the real balancer holds `cluster` at 0; fails past `budget_s`
        (polls on to `limit_s` first, so a miss still reports how late it was)."""

        async def zero() -> bool:
            return await self.weight(cluster) == 0

        await wait_for(zero, limit_s, f"{cluster} drained", poll_s=0.01)
        took = time.monotonic() - started
        assert took <= budget_s, f"{cluster} drained after {took:.2f}s, over its {budget_s:g}s budget"
        return took

    def drains(self, cluster: str) -> list[str]:
        """The `set weight ... 0` commands HAProxy was sent for `cluster`."""
        return [c for c in self.counter.sets(MEMBERS[cluster]) if c.endswith(" 0")]

    def event_types(self, cluster: str | None = None) -> list[str]:
        return [e["type"] for e in self.events if cluster is None or e.get("cluster") == cluster]

    def alive(self) -> None:
        assert self.daemon.running, self.daemon.log_text()[-3000:]


async def all_healthy(api_port: int) -> bool:
    """Every cluster healthy in the daemon's `/api/v1/clusters` view (False while it does not answer)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s,
            s.get(f"http://127.0.0.1:{api_port}/api/v1/clusters") as r,
        ):
            body = await r.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    states = {c["name"]: c["state"] for c in body.get("clusters", [])}
    return len(states) == len(MEMBERS) and set(states.values()) == {"healthy"}


def config_text(
    work: Path,
    f: Fleet,
    hook: HookReceiver,
    nats: EmbeddedNats,
    admin: list[str],
    api_port: int,
    *,
    probing: str | None = PROBING,
    detection: str | None = DETECTION,
    probe_extra: str = "",
    playbooks: Path | None = None,
    extra: str = "reconcile: {interval: 500ms}",
) -> Path:
    """The daemon's config: `admin` lists the balancer's admin addresses (one per HAProxy instance)."""
    lines = [
        f"state_dir: {work / 'state'}",
        f"api: {{listen: 127.0.0.1:{api_port}}}",
        f"nats: {{url: '{nats.url}'}}",
    ]
    if probing:
        lines.append(f"probing: {probing}")
    if detection:
        lines.append(f"detection: {detection}")
    lines.append("clusters:")
    for name, app in f.apps.items():
        lines += [
            f"  - name: {name}",
            f"    probes: [{{name: ingress, http: {{url: '{app.url}/healthz'{probe_extra}}}}}]",
        ]
    members = ", ".join(f"{c}: {s}" for c, s in MEMBERS.items())
    addresses = ", ".join(f"'{a}'" for a in admin)
    lines += [
        "load_balancers:",
        f"  - {{name: global, driver: haproxy,"
        f" haproxy: {{admin: [{addresses}], backend: web, timeout: 500ms}}, members: {{{members}}}}}",
        "notifiers:",
        f"  - {{name: oncall, driver: webhook, webhook: {{url: '{hook.url}', secret: '{HOOK_SECRET}'}}}}",
        f"playbooks: {{paths: ['{playbooks or short_playbooks(work / 'books')}']}}",
        extra,
    ]
    path = work / "failover.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@asynccontextmanager
async def stack(
    work: Path,
    nats: EmbeddedNats,
    bus: Bus,
    haproxy_binary: str,
    *,
    healthy: set[str] | None = None,
    run_args: tuple[str, ...] = (),
    **config: Any,
) -> AsyncIterator[Stack]:
    """Three sandbox apps behind a real HAProxy, the daemon (`failover run`) as its own process, events
    and run events collected from NATS, the balancer watched. `healthy`: the clusters that must never
    be seen at weight 0 (default: all; a scenario narrows it before it fails one)."""
    async with hook_receiver() as hook, fleet(work, haproxy_binary) as f:
        counter = AdminCounter(f.haproxy.admin_port)
        await counter.start()
        api_port = free_port()
        path = config_text(work, f, hook, nats, [counter.url], api_port, **config)
        events = await collect(bus, subjects.EVENTS_ALL)
        runs = await collect(bus, subjects.RUNS_ALL)
        daemon = DaemonProcess(path, work / "daemon.log", api_port)
        watch = Watch(f.weights, healthy if healthy is not None else set(MEMBERS))
        try:
            await daemon.start(*run_args)
            await daemon.wait_ready(30)
            watch.start()
            yield Stack(f, counter, daemon, hook, events, runs, watch, work)
        finally:
            await watch.stop()
            code = await daemon.stop()
            await counter.stop()
        assert code == 0, daemon.log_text()[-3000:]


async def settle(s: Stack, timeout_s: float = 20) -> None:
    """Until the daemon reports every cluster healthy (its success threshold met everywhere)."""
    await wait_for(lambda: all_healthy(s.daemon.api), timeout_s, "every cluster healthy", poll_s=0.1)


APP_SCRIPT = """
import asyncio, signal, sys
from orchestrator.sandbox.app import AppServer

async def main() -> None:
    app = AppServer(sys.argv[1], int(sys.argv[2]))
    await app.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await app.stop()

asyncio.run(main())
"""


class AppProcess:
    """A sandbox app in its own process (the sandbox app has no CLI of its own), to freeze with SIGSTOP."""

    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = name, port
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", APP_SCRIPT, self.name, str(self.port), cwd=str(REPO)
        )

        async def answers() -> bool:
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as s,
                    s.get(f"{self.url}/healthz") as r,
                ):
                    return r.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        await wait_for(answers, 15, f"app process {self.name}", poll_s=0.1)

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def stop(self) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
