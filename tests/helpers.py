"""Building blocks for integration tests: a signed-webhook receiver, simulated clusters behind a real
HAProxy, and a config writer, all on loopback."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from orchestrator.actuators.haproxy import HAProxyAdmin
from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import free_port
from orchestrator.core import signing
from orchestrator.sandbox.app import AppServer
from orchestrator.sandbox.haproxy import HAProxyProcess

HOOK_SECRET = "test-hook-secret"


@dataclass
class HookReceiver:
    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    status: int = 204
    delay_s: float = 0.0


@asynccontextmanager
async def hook_receiver(secret: str = HOOK_SECRET) -> AsyncIterator[HookReceiver]:
    hook = HookReceiver()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if not signing.verify(secret, body, request.headers.get(signing.HEADER, "")):
            hook.rejected += 1
            return web.Response(status=401)
        if hook.delay_s:
            await asyncio.sleep(hook.delay_s)
        if hook.status < 300:
            hook.received.append(json.loads(body))
        return web.Response(status=hook.status)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    hook.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield hook
    finally:
        await runner.cleanup()


MEMBERS = {"eu-west": "eu1", "us-east": "us1", "ap-south": "ap1"}


@dataclass
class Fleet:
    apps: dict[str, AppServer]
    haproxy: HAProxyProcess

    async def weights(self) -> dict[str, int]:
        state = await HAProxyAdmin(self.haproxy.admin_url, 2.0).servers_state("web")
        return {c: state[s].weight for c, s in MEMBERS.items()}

    async def traffic(self, requests: int) -> Counter[str]:
        counts: Counter[str] = Counter()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            for _ in range(requests):
                async with session.get(self.haproxy.frontend_url) as resp:
                    counts[(await resp.text()).strip() if resp.status == 200 else f"HTTP {resp.status}"] += 1
        return counts


@asynccontextmanager
async def fleet(work: Path, binary: str) -> AsyncIterator[Fleet]:
    apps = {name: AppServer(name, free_port()) for name in MEMBERS}
    haproxy = HAProxyProcess(
        work / "haproxy", {MEMBERS[n]: ("127.0.0.1", a.port) for n, a in apps.items()}, binary=binary
    )
    try:
        for app in apps.values():
            await app.start()
        await haproxy.start()
        yield Fleet(apps, haproxy)
    finally:
        await haproxy.stop()
        for app in apps.values():
            await app.stop()


SHORT_PROBING = "{interval: 200ms, timeout: 150ms, jitter: 0s, vantage: test}"
SHORT_DETECTION = "{failure_threshold: 3, success_threshold: 2, quorum: 1, recovery_hold: 1s}"


def write_config(
    work: Path,
    f: Fleet,
    hook_url: str,
    *,
    nats_url: str | None = None,
    probing: str | None = SHORT_PROBING,
    detection: str | None = SHORT_DETECTION,
    secret: str = HOOK_SECRET,
    playbooks: Path | None = None,
    api_port: int | None = None,
    admin_url: str | None = None,
    extra: str = "",
    tokens: str = "[]",
) -> Path:
    """A config for the fleet; `probing`/`detection` None keeps the production defaults."""
    lines = [
        f"state_dir: {work / 'state'}",
        f"api: {{listen: 127.0.0.1:{api_port or free_port()}, tokens: {tokens}}}",
    ]
    if nats_url:
        lines.append(f"nats: {{url: '{nats_url}'}}")
    if probing:
        lines.append(f"probing: {probing}")
    if detection:
        lines.append(f"detection: {detection}")
    lines.append("clusters:")
    for name, app in f.apps.items():
        lines += [f"  - name: {name}", f"    probes: [{{name: ingress, http: {{url: '{app.url}/healthz'}}}}]"]
    members = ", ".join(f"{c}: {s}" for c, s in MEMBERS.items())
    lines += [
        "load_balancers:",
        f"  - {{name: global, driver: haproxy, haproxy: {{admin: ['{admin_url or f.haproxy.admin_url}'], "
        "backend: web}, "
        f"members: {{{members}}}}}",
        "notifiers:",
        f"  - {{name: oncall, driver: webhook, webhook: {{url: '{hook_url}', secret: '{secret}'}}}}",
        f"playbooks: {{paths: ['{playbooks or Path(__file__).resolve().parents[1] / 'playbooks'}']}}",
        extra,
    ]
    path = work / "failover.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def wait_for(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float, what: str, poll_s: float = 0.02
) -> float:
    """Poll `check` (a plain or an async predicate) until true; return the seconds it took. Bounded:
    raises AssertionError at the limit."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return time.monotonic() - start
        await asyncio.sleep(poll_s)
    raise AssertionError(f"{what} did not happen within {timeout_s}s")


class AdminCounter:
    """A proxy in front of HAProxy's runtime API that counts the commands sent through it, so a test
    can prove how many changes HAProxy saw (one command per connection, as HAProxy expects)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.commands: list[str] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def sets(self, server: str) -> list[str]:
        return [c for c in self.commands if c.startswith("set weight") and f"/{server} " in c]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            self.commands.append(line.decode().strip())
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            up_writer.write(line)
            await up_writer.drain()
            writer.write(await up_reader.read())
            up_writer.close()
            await writer.drain()
        finally:
            writer.close()


async def collect(bus: Bus, subject: str) -> list[dict[str, Any]]:
    """Subscribe to `subject`; the returned list fills with the decoded messages as they arrive."""
    out: list[dict[str, Any]] = []

    async def on(msg: Any) -> None:
        out.append(json.loads(msg.data))

    await bus.subscribe(subject, on)
    return out


@dataclass
class HAProxyPair:
    """Two HAProxy instances of one balancer, as deploy/ ships them: the same backend and servers, an
    admin port each, and an `AdminCounter` in front of each admin port to count what each one is sent."""

    apps: dict[str, AppServer]
    instances: list[HAProxyProcess]
    counters: list[AdminCounter]

    async def weights(self, index: int) -> dict[str, int]:
        """cluster -> weight on one instance, read straight from it (not through its counter)."""
        state = await HAProxyAdmin(self.instances[index].admin_url, 2.0).servers_state("web")
        return {c: state[s].weight for c, s in MEMBERS.items()}


@asynccontextmanager
async def haproxy_pair(work: Path, binary: str) -> AsyncIterator[HAProxyPair]:
    """Simulated clusters behind two real HAProxy instances that serve the same backend `web`."""
    apps = {name: AppServer(name, free_port()) for name in MEMBERS}
    servers = {MEMBERS[n]: ("127.0.0.1", a.port) for n, a in apps.items()}
    instances = [HAProxyProcess(work / f"haproxy-{i}", servers, binary=binary) for i in (1, 2)]
    counters: list[AdminCounter] = []
    try:
        for app in apps.values():
            await app.start()
        for instance in instances:
            await instance.start()
            counter = AdminCounter(instance.admin_port)
            await counter.start()
            counters.append(counter)
        yield HAProxyPair(apps, instances, counters)
    finally:
        for counter in counters:
            await counter.stop()
        for instance in instances:
            await instance.stop()
        for app in apps.values():
            await app.stop()
