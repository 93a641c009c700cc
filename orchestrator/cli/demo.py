"""`failover demo`: the whole product on one machine, with real parts, narrated as it happens.

Embedded NATS, three simulated clusters (application servers) behind a real HAProxy, the daemon with the
example playbooks, a local webhook receiver standing in for on-call. Then one cluster is stopped and
brought back; the demo prints states, weights, traffic and playbook steps, and exits 0 when both the
failover and the failback happened (1 otherwise, with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import typer
from aiohttp import web
from nats.aio.msg import Msg

from orchestrator.actuators.haproxy import HAProxyAdmin
from orchestrator.bus.embedded import free_port
from orchestrator.core import logs, signing, subjects
from orchestrator.core.config import load_config
from orchestrator.core.errors import ValidationFailed
from orchestrator.runtime.daemon import Daemon
from orchestrator.sandbox.app import AppServer
from orchestrator.sandbox.haproxy import HAProxyProcess, find_haproxy

CLUSTERS = {"eu-west": "eu1", "us-east": "us1", "ap-south": "ap1"}
VICTIM = "us-east"
HOOK_SECRET = "demo-secret"  # a local demo receiver's secret, not a credential


def find_playbooks() -> Path:
    for candidate in (Path.cwd() / "playbooks", Path(__file__).resolve().parents[2] / "playbooks"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("playbooks/ not found: run the demo from the repository root")


class Narrator:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, text: str, color: str | None = None, bold: bool = False) -> None:
        stamp = typer.style(f"[{time.monotonic() - self.t0:6.1f}s]", dim=True)
        typer.echo(f"{stamp} {typer.style(text, fg=color, bold=bold)}")


async def run_demo(state_dir: Path | None, recovery_hold: str = "10s", timeout_s: float = 180.0) -> int:
    logs.configure("console", "warning")
    say = Narrator().say
    if find_haproxy() is None:
        typer.echo(
            "haproxy is not installed. Install it with:  sudo apt-get install -y haproxy   "
            "(or run `make demo` as root, which installs it)",
            err=True,
        )
        return 1
    work = Path(state_dir or tempfile.mkdtemp(prefix="failover-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    apps = {name: AppServer(name, free_port()) for name in CLUSTERS}
    notes: list[dict[str, Any]] = []
    hook = await _start_hook(notes)
    haproxy = HAProxyProcess(work / "haproxy", {CLUSTERS[n]: ("127.0.0.1", a.port) for n, a in apps.items()})
    daemon: Daemon | None = None
    stop = asyncio.Event()
    daemon_task: asyncio.Task[None] | None = None
    try:
        for app in apps.values():
            await app.start()
        await haproxy.start()
        say(
            f"3 simulated clusters behind HAProxy {haproxy.frontend_url} (admin {haproxy.admin_url})",
            bold=True,
        )
        config_path = _write_config(work, apps, haproxy, hook[1], recovery_hold)
        say(f"config: {config_path}; playbooks: {find_playbooks()}")
        config = load_config(config_path)
        daemon = Daemon(config)
        daemon_task = asyncio.create_task(daemon.run(stop))
        ready = asyncio.create_task(daemon.ready.wait())
        await asyncio.wait([ready, daemon_task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not daemon.ready.is_set():
            ready.cancel()
            if daemon_task.done() and daemon_task.exception():
                raise daemon_task.exception()  # type: ignore[misc]
            raise TimeoutError("the daemon start")
        assert daemon.bus is not None and daemon.detection is not None and daemon.runner is not None
        detection, runner = daemon.detection, daemon.runner

        async def on_event(msg: Msg) -> None:
            _print_event(say, msg.data)

        async def on_run(msg: Msg) -> None:
            _print_run(say, msg.data)

        await daemon.bus.subscribe(subjects.EVENTS_ALL, on_event)
        await daemon.bus.subscribe(subjects.RUNS_ALL, on_run)
        admin = HAProxyAdmin(haproxy.admin_url, 2.0)
        deadline = time.monotonic() + timeout_s

        async def weights() -> dict[str, int]:
            state = await admin.servers_state("web")
            return {n: state[s].weight for n, s in CLUSTERS.items()}

        async def until(what: str, check: Any, limit_s: float) -> float:
            start = time.monotonic()
            end = min(deadline, start + limit_s)
            while time.monotonic() < end:
                if await check():
                    return time.monotonic() - start
                await asyncio.sleep(0.05)
            raise TimeoutError(what)

        async def all_healthy() -> bool:
            return all(s == "healthy" for s in detection.cluster_view().values())

        await until("all clusters healthy", all_healthy, 30)
        say(f"all clusters healthy; weights {await weights()}", "green")
        say(f"traffic: {await _traffic(haproxy.frontend_url)}")

        say(f">>> stopping the application of {VICTIM} (connection refused)", "yellow", bold=True)
        await apps[VICTIM].stop()

        async def drained() -> bool:
            return (await weights())[VICTIM] == 0

        took = await until(f"{VICTIM} drained", drained, 30)
        say(f"{VICTIM} drained {took:.2f}s after it stopped; weights {await weights()}", "green", bold=True)
        say(f"traffic: {await _traffic(haproxy.frontend_url)}")

        say(
            f">>> starting {VICTIM} again (failback after recovery_hold {recovery_hold}, ramped)",
            "yellow",
            bold=True,
        )
        await apps[VICTIM].start()

        async def restored() -> bool:
            return (await weights())[VICTIM] == 100 and not runner.active

        took = await until(f"{VICTIM} restored", restored, 90)
        say(
            f"{VICTIM} restored {took:.1f}s after it came back; weights {await weights()}", "green", bold=True
        )
        say(f"traffic: {await _traffic(haproxy.frontend_url)}")
        say(
            f"on-call received {len(notes)} signed notification(s): "
            + "; ".join(f"[{n['severity']}] {n['summary']}" for n in notes)
        )
        return 0
    except TimeoutError as e:
        say(f"demo failed: {e} did not happen in time (logs: {work})", "red", bold=True)
        return 1
    except ValidationFailed as e:
        say(f"demo failed: invalid configuration or playbooks:\n{e}", "red", bold=True)
        return 1
    finally:
        stop.set()
        if daemon_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(daemon_task, 30)
        await haproxy.stop()
        for app in apps.values():
            await app.stop()
        await hook[0].cleanup()


def _write_config(
    work: Path, apps: dict[str, AppServer], haproxy: HAProxyProcess, hook_url: str, recovery_hold: str
) -> Path:
    lines = [
        f"state_dir: {work / 'state'}",
        f"api: {{listen: 127.0.0.1:{free_port()}}}",
        "probing: {interval: 1s, timeout: 800ms, vantage: demo}",
        "detection: {failure_threshold: 3, success_threshold: 3, quorum: 1, "
        f"recovery_hold: {recovery_hold}}}",
        "clusters:",
    ]
    for name, app in apps.items():
        lines += [
            f"  - name: {name}",
            "    weight: 100",
            f"    probes: [{{name: ingress, http: {{url: '{app.url}/healthz'}}}}]",
        ]
    members = ", ".join(f"{n}: {s}" for n, s in CLUSTERS.items())
    lines += [
        "load_balancers:",
        f"  - {{name: global, driver: haproxy, haproxy: {{admin: ['{haproxy.admin_url}'], backend: web}}, "
        f"members: {{{members}}}}}",
        "notifiers:",
        f"  - {{name: oncall, driver: webhook, webhook: {{url: '{hook_url}', "
        f"secret: '${{DEMO_HOOK_SECRET:-{HOOK_SECRET}}}'}}}}",
        f"playbooks: {{paths: ['{find_playbooks()}']}}",
    ]
    path = work / "failover.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _start_hook(notes: list[dict[str, Any]]) -> tuple[web.AppRunner, str]:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if not signing.verify(HOOK_SECRET, body, request.headers.get(signing.HEADER, "")):
            return web.Response(status=401)
        notes.append(json.loads(body))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook"


async def _traffic(url: str, requests: int = 30) -> str:
    counts: Counter[str] = Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        for _ in range(requests):
            try:
                async with session.get(url) as resp:
                    counts[(await resp.text()).strip() if resp.status == 200 else f"HTTP {resp.status}"] += 1
            except (aiohttp.ClientError, TimeoutError):
                counts["error"] += 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f" (of {requests} requests)"


def _print_event(say: Any, data: bytes) -> None:
    event = json.loads(data)
    if "cluster" in event:
        color = {"failed": "red", "healthy": "green"}.get(event.get("to"), "yellow")
        say(
            f"event {event['type']}: {event['cluster']} {event['from']} -> {event['to']} ({event['reason']})",
            color,
        )
    else:
        say(f"system event {event['type']}: {event.get('reason')}", "magenta")


def _print_run(say: Any, data: bytes) -> None:
    event = json.loads(data)
    kind, step, detail = event["type"], event.get("step"), event.get("detail", {})
    if kind == "step.succeeded":
        result = detail.get("result") or {}
        extra = result.get("change") or "; ".join(result.get("changes", [])) or ""
        say(f"  run {event['run_id'][:8]} {event['playbook']}: step {step} succeeded {extra}", "cyan")
    elif kind in ("started", "finished"):
        say(f"  run {event['run_id'][:8]} {event['playbook']}: {kind} {detail.get('status') or ''}", "cyan")
    elif kind in ("step.failed", "blocked", "needs_attention"):
        say(f"  run {event['run_id'][:8]} {event['playbook']}: {kind} {step}: {detail}", "red")
