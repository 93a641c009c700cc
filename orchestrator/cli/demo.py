"""`failover demo`: the product on one machine, every part real, narrated as it happens.

The world (`demo_world`): a nats-server with the bus roles, three sandbox Kubernetes clusters with their
applications behind a real HAProxy, the daemon probing from the management cluster and two stand-alone
probers (three vantages, quorum 2), a signed webhook standing in for on-call. Then, in four acts:

1. one prober loses its network path to `ap-south`: one vantage of three is below quorum, nothing moves;
2. `us-east`'s application stops: the quorum of vantages sees it, the edge drains it, the survivors are
   scaled to absorb its load and waited for, the incident opens, and the recovery timeline is printed;
3. `us-east` comes back: after the recovery hold the failback sizes it, then waits for a person; the
   operator `bob` approves (as `failover ctl approve RUN` would), the weight ramps back, the survivors
   shrink to their baseline, and the incident resolves;
4. a summary of recovery times, notifications and incidents.

It exits 0 when every act happened (1 otherwise, with the reason). `--keep` then stays up with the
dashboard's URL printed, until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import typer
from nats.aio.msg import Msg

from orchestrator.actuators.haproxy import HAProxyAdmin
from orchestrator.cli.demo_world import BASE_REPLICAS, CLUSTERS, VANTAGES, World, world
from orchestrator.core import logs, subjects
from orchestrator.core.config import load_config
from orchestrator.core.errors import ValidationFailed
from orchestrator.playbooks import timeline
from orchestrator.runtime.daemon import Daemon
from orchestrator.runtime.prober import run_prober
from orchestrator.sandbox.haproxy import find_haproxy

VICTIM = "us-east"
PARTITIONED = ("us-prober", "ap-south")  # the vantage that loses its path, and to which cluster


def find_playbooks() -> Path:
    """The repository's example playbooks (the demo writes its own; `failover validate` examples use
    these)."""
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


class Demo:
    """One run of the demo against a started world; each act raises TimeoutError naming what did not
    happen in time."""

    def __init__(self, w: World, daemon: Daemon, say: Callable[..., None], timeout_s: float) -> None:
        self.w = w
        self.daemon = daemon
        self.say = say
        self.deadline = time.monotonic() + timeout_s
        self.admin = HAProxyAdmin(w.haproxy.admin_url, 2.0)
        self.runs: dict[tuple[str, str], str] = {}  # (playbook, cluster) -> its latest run id
        self.steps: list[tuple[str, str, str]] = []  # (run id, step, event type)
        self.finished: set[str] = set()
        self.failed_events: list[dict[str, Any]] = []
        self.vantages_seen: set[str] = set()

    # -- observation ------------------------------------------------------------------------------

    async def weights(self) -> dict[str, int]:
        state = await self.admin.servers_state("web")
        return {n: state[s].weight for n, s in CLUSTERS.items()}

    async def until(self, what: str, check: Callable[[], Awaitable[bool]], limit_s: float) -> float:
        start = time.monotonic()
        end = min(self.deadline, start + limit_s)
        while time.monotonic() < end:
            if await check():
                return time.monotonic() - start
            await asyncio.sleep(0.05)
        raise TimeoutError(what)

    async def api(self, method: str, path: str, who: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.w.tokens[who]}"}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.request(method, self.w.api_url + path, json=body, headers=headers) as resp,
        ):
            answer = await resp.json()
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {answer.get('error')}")
            return answer

    async def listen(self) -> None:
        bus = self.daemon.bus
        assert bus is not None

        async def on_event(msg: Msg) -> None:
            event = json.loads(msg.data)
            if event.get("to") == "failed":
                self.failed_events.append(event)
            self._print_event(event)

        async def on_run(msg: Msg) -> None:
            event = json.loads(msg.data)
            if event["type"] == "started":
                cluster = str((event.get("detail") or {}).get("cluster"))
                self.runs[(event["playbook"], cluster)] = event["run_id"]
            self.steps.append((event["run_id"], str(event.get("step")), event["type"]))
            if event["type"] == "finished":
                self.finished.add(event["run_id"])
            self._print_run(event)

        async def on_health(msg: Msg) -> None:
            self.vantages_seen.add(msg.subject.split(".")[2])

        await bus.subscribe(subjects.EVENTS_ALL, on_event)
        await bus.subscribe(subjects.RUNS_ALL, on_run)
        await bus.subscribe("failover.health.>", on_health)

    def _print_event(self, event: dict[str, Any]) -> None:
        if "cluster" not in event:
            self.say(f"system event {event['type']}: {event.get('reason')}", "magenta")
            return
        color = {"failed": "red", "healthy": "green"}.get(str(event.get("to")), "yellow")
        failing = sorted((event.get("evidence") or {}).get("failing") or {})
        seen = f"; failing at {', '.join(failing)}" if failing and event.get("to") == "failed" else ""
        self.say(
            f"event {event['type']}: {event['cluster']} {event['from']} -> {event['to']} "
            f"({event['reason']}{seen})",
            color,
        )

    def _print_run(self, event: dict[str, Any]) -> None:
        kind, step, detail = event["type"], event.get("step"), event.get("detail", {})
        head = f"  run {event['run_id'][:8]} {event['playbook']}"
        if kind == "step.succeeded":
            result = detail.get("result") or {}
            items = result if isinstance(result, list) else [result]  # a for_each step: one per item
            extra = "; ".join(
                str(r.get("change") or "; ".join(r.get("changes", []))) for r in items if isinstance(r, dict)
            ).strip("; ")
            self.say(f"{head}: step {step} succeeded {extra}".rstrip(), "cyan")
        elif kind == "step.started" and step == "ask":
            self.say(f"{head}: step ask waits for a person: failover ctl approve {event['run_id']}", "yellow")
        elif kind in ("started", "finished"):
            self.say(f"{head}: {kind} {detail.get('status') or ''}".rstrip(), "cyan")
        elif kind in ("step.failed", "blocked", "needs_attention"):
            self.say(f"{head}: {kind} {step}: {detail}", "red")

    # -- the acts ---------------------------------------------------------------------------------

    async def setting(self) -> None:
        detection = self.daemon.detection
        assert detection is not None

        async def ready() -> bool:
            states = detection.cluster_view().values()
            return all(s == "healthy" for s in states) and self.vantages_seen >= set(VANTAGES)

        try:
            await self.until("all clusters healthy, seen from every vantage", ready, 45)
        except TimeoutError:
            raise TimeoutError(
                f"all clusters healthy, seen from every vantage (states {detection.cluster_view()}, "
                f"vantages reporting {sorted(self.vantages_seen)})"
            ) from None
        self.say(
            f"all clusters healthy, seen from {len(VANTAGES)} vantages ({', '.join(VANTAGES)}), quorum 2; "
            f"weights {await self.weights()}; replicas {self._replicas()}",
            "green",
        )
        self.say(f"traffic: {await traffic(self.w.haproxy.frontend_url)}")

    async def act_quorum(self) -> None:
        vantage, cluster = PARTITIONED
        self.say(f">>> act 1: {vantage} loses its network path to {cluster}", "yellow", bold=True)
        await self.w.proxies[vantage][cluster].blackhole()
        await asyncio.sleep(4.0)  # 8 probe intervals: more than failure_threshold at that vantage
        weights = await self.weights()
        if any(e["cluster"] == cluster for e in self.failed_events) or weights[cluster] != 100:
            raise RuntimeError(f"{cluster} was acted on though only {vantage} saw it failing")
        self.say(
            f"1 of 3 vantages sees {cluster} failing, below quorum 2: nothing moved (weight "
            f"{weights[cluster]})",
            "green",
            bold=True,
        )
        await self.w.proxies[vantage][cluster].restore()

    async def act_failover(self) -> str:
        self.say(f">>> act 2: {VICTIM}'s application stops (connection refused)", "yellow", bold=True)
        stopped = time.monotonic()
        await self.w.apps[VICTIM].stop()
        took = await self.until(f"{VICTIM} drained", self._weight_is(VICTIM, 0), 30)
        self.say(
            f"{VICTIM} drained {took:.2f}s after its application stopped; weights {await self.weights()}",
            "green",
            bold=True,
        )
        self.say(f"traffic: {await traffic(self.w.haproxy.frontend_url)}")
        absorb = BASE_REPLICAS * len(CLUSTERS) // (len(CLUSTERS) - 1)

        async def scaled() -> bool:
            replicas = self.w.replicas()
            return all(replicas[c] == (absorb, absorb) for c in CLUSTERS if c != VICTIM)

        await self.until("survivors scaled and ready", scaled, 60)
        self.say(
            f"survivors scaled {BASE_REPLICAS} -> {absorb} and ready "
            f"{time.monotonic() - stopped:.2f}s after the failure; replicas {self._replicas()}",
            "green",
            bold=True,
        )
        run_id = await self._finished("demo-failover")
        incident = await self._incident(lambda i: i.get("state") not in (None, "resolved"))
        self.say(f"incident {incident['id']} is open ({incident['state']}): {incident.get('summary')}", "red")
        record = await self.api("GET", f"/api/v1/runs/{run_id}", "viewer")
        self.say("recovery timeline of the failover run:", bold=True)
        for label, _at, offset, stage in timeline.table(record.get("timeline") or {}):
            self.say(f"    {label:<14} {offset:>9}  {stage}")
        return run_id

    async def act_failback(self) -> None:
        self.say(f">>> act 3: {VICTIM}'s application is back", "yellow", bold=True)
        await self.w.apps[VICTIM].start()

        async def asking() -> bool:
            run = self.runs.get(("demo-failback", VICTIM))
            return run is not None and (run, "ask", "step.started") in self.steps

        await self.until("the failback asking for approval", asking, 90)
        run_id = self.runs[("demo-failback", VICTIM)]
        await asyncio.sleep(1.0)  # a person reads the message
        command = {"command": "approve", "args": {"run": run_id}}
        answer = await self.api("POST", "/api/v1/commands", "bob", command)
        self.say(f"bob (operator) approves run {run_id[:8]}: {answer['result']}", "green")

        async def back() -> bool:
            replicas = self.w.replicas()
            return (await self.weights())[VICTIM] == 100 and all(
                r == (BASE_REPLICAS, BASE_REPLICAS) for r in replicas.values()
            )

        took = await self.until(f"{VICTIM} restored and the survivors back to baseline", back, 60)
        await self._finished("demo-failback")
        self.say(
            f"{VICTIM} serves again ({took:.1f}s after approval); weights {await self.weights()}; "
            f"replicas {self._replicas()}",
            "green",
            bold=True,
        )
        self.say(f"traffic: {await traffic(self.w.haproxy.frontend_url)}")
        incident = await self._incident(lambda i: i.get("state") == "resolved")
        self.say(f"incident {incident['id']} resolved at {incident['resolved_at']}", "green")

    async def summary(self, failover_run: str) -> None:
        record = await self.api("GET", f"/api/v1/runs/{failover_run}", "viewer")
        stages = timeline.recovery_stages(record.get("timeline") or {})
        self.say("recovery times (failover_recovery_seconds{stage} on /metrics):", bold=True)
        for stage, seconds in stages.items():
            self.say(f"    {stage:<18} {seconds:7.3f}s")
        self.say(
            f"on-call received {len(self.w.notes)} signed notification(s): "
            + "; ".join(f"[{n['severity']}] {n['summary']}" for n in self.w.notes)
        )

    # -- helpers ----------------------------------------------------------------------------------

    def _replicas(self) -> dict[str, int]:
        return {c: spec for c, (spec, _available) in self.w.replicas().items()}

    def _weight_is(self, cluster: str, weight: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return (await self.weights())[cluster] == weight

        return check

    async def _finished(self, playbook: str) -> str:
        async def done() -> bool:
            run = self.runs.get((playbook, VICTIM))
            return run is not None and run in self.finished

        await self.until(f"run of {playbook} for {VICTIM} finished", done, 60)
        return self.runs[(playbook, VICTIM)]

    async def _incident(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        async def check() -> bool:
            answer = await self.api("GET", "/api/v1/incidents", "viewer")
            found[:] = [i for i in answer.get("incidents", []) if i.get("cluster") == VICTIM and match(i)]
            return bool(found)

        await self.until(f"the incident of {VICTIM}", check, 20)
        return found[0]


async def run_demo(
    state_dir: Path | None, recovery_hold: str = "5s", timeout_s: float = 300.0, keep: bool = False
) -> int:
    logs.configure("console", "warning")
    narrator = Narrator()
    say = narrator.say
    if find_haproxy() is None:
        typer.echo(
            "haproxy is not installed. Install it with:  sudo apt-get install -y haproxy   "
            "(or run `make demo` as root, which installs it)",
            err=True,
        )
        return 1
    work = Path(state_dir or tempfile.mkdtemp(prefix="failover-demo-"))
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        async with world(work, recovery_hold) as w:
            try:
                return await _play(w, tasks, stop, say, timeout_s, keep)
            finally:  # the daemon and the probers stop before the world they live in
                stop.set()
                for task in tasks:
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await asyncio.wait_for(task, 30)
    except (TimeoutError, RuntimeError) as e:
        say(f"demo failed: {e} (state and logs: {work})", "red", bold=True)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                say(f"  because the {task.get_name()} stopped: {task.exception()!r}", "red")
        return 1
    except ValidationFailed as e:
        say(f"demo failed: invalid configuration or playbooks:\n{e}", "red", bold=True)
        return 1


async def _play(
    w: World,
    tasks: list[asyncio.Task[None]],
    stop: asyncio.Event,
    say: Callable[..., None],
    timeout_s: float,
    keep: bool,
) -> int:
    say(
        f"3 sandbox Kubernetes clusters ({', '.join(CLUSTERS)}), shop/web at {BASE_REPLICAS} "
        f"replicas each, behind HAProxy {w.haproxy.frontend_url}",
        bold=True,
    )
    say(f"config: {w.config_path}; NATS with per-role credentials at {w.nats.url}")
    daemon = Daemon(load_config(w.config_path))
    tasks.append(asyncio.create_task(daemon.run(stop), name="daemon"))
    await _started(daemon, tasks[0])
    for vantage, path in w.prober_configs.items():
        tasks.append(
            asyncio.create_task(run_prober(load_config(path), vantage, stop), name=f"prober {vantage}")
        )
    demo = Demo(w, daemon, say, timeout_s)
    await demo.listen()
    await demo.setting()
    await demo.act_quorum()
    failover_run = await demo.act_failover()
    await demo.act_failback()
    await demo.summary(failover_run)
    say("demo finished: quorum, drain, scaling, approval, incident and recovery times", "green")
    if keep:
        await _keep(w, say)
    return 0


async def _started(daemon: Daemon, task: asyncio.Task[None]) -> None:
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait([ready, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if daemon.ready.is_set():
        return
    ready.cancel()
    if task.done() and task.exception():
        raise task.exception()  # type: ignore[misc]
    raise TimeoutError("the daemon start")


async def _keep(w: World, say: Callable[..., None]) -> None:
    """Stay up until Ctrl-C (or SIGTERM) with the dashboard's address printed."""
    say(f"dashboard: {w.api_url}/?access_token={w.tokens['viewer']}", "cyan", bold=True)
    say(f"operator token (failover ctl --url {w.api_url} --token ...): {w.tokens['bob']}")
    say("the demo stays up; Ctrl-C to stop", "yellow")
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, done.set)
    await done.wait()


async def traffic(url: str, requests: int = 30) -> str:
    counts: Counter[str] = Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        for _ in range(requests):
            try:
                async with session.get(url) as resp:
                    counts[(await resp.text()).strip() if resp.status == 200 else f"HTTP {resp.status}"] += 1
            except (aiohttp.ClientError, TimeoutError):
                counts["error"] += 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f" (of {requests} requests)"
