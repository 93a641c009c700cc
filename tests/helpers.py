"""Building blocks for integration tests: a signed-webhook receiver, simulated clusters behind a real
HAProxy, and a config writer, all on loopback."""

from __future__ import annotations

import asyncio
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

from orchestrator import signing
from orchestrator.actuators.haproxy import HAProxyAdmin
from orchestrator.bus import free_port
from orchestrator.sandbox.app import AppServer
from orchestrator.sandbox.haproxy import HAProxyProcess

HOOK_SECRET = "test-hook-secret"


@dataclass
class HookReceiver:
    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    status: int = 204


@asynccontextmanager
async def hook_receiver(secret: str = HOOK_SECRET) -> AsyncIterator[HookReceiver]:
    hook = HookReceiver()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if not signing.verify(secret, body, request.headers.get(signing.HEADER, "")):
            hook.rejected += 1
            return web.Response(status=401)
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
) -> Path:
    """A config for the fleet; `probing`/`detection` None keeps the production defaults."""
    lines = [f"state_dir: {work / 'state'}", f"api: {{listen: 127.0.0.1:{api_port or free_port()}}}"]
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
        f"  - {{name: global, driver: haproxy, haproxy: {{admin: ['{f.haproxy.admin_url}'], backend: web}}, "
        f"members: {{{members}}}}}",
        "notifiers:",
        f"  - {{name: oncall, driver: webhook, webhook: {{url: '{hook_url}', secret: '{secret}'}}}}",
        f"playbooks: {{paths: ['{playbooks or Path(__file__).resolve().parents[1] / 'playbooks'}']}}",
    ]
    path = work / "failover.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, poll_s: float = 0.02
) -> float:
    """Poll `check` until true; return the seconds it took. Bounded: raises AssertionError at the limit."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(poll_s)
    raise AssertionError(f"{what} did not happen within {timeout_s}s")
