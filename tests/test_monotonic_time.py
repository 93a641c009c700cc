"""Durations inside a process follow the monotonic clock, whatever the wall clock does (issue 10).

Runs are executed by the real executor against a real NATS journal (and a real HAProxy for ramps),
with a `Clock` injected through `Services.clock`: its monotonic clock is the real one, its wall clock is
moved by the test. Two kinds of wall clock misbehave here:
- `jump`: it jumps once, an hour forward, 0.2 s into the step (an NTP step, `date -s`, a resumed VM);
- `drift`: every reading is an hour later (or earlier) than the one before, so any duration computed
  from two wall readings is off by at least an hour, while one computed from a single reading (the
  journalled deadline, converted once to a monotonic deadline) is exact.
Every wait must still last its full duration by the monotonic clock, and no longer. The journalled
deadlines stay absolute wall-clock timestamps; a step resumed in a new process recomputes what is left
of them once, from its own wall clock.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.actuators.registry import build_balancer
from orchestrator.bus.client import Bus
from orchestrator.bus.state import StateStore
from orchestrator.core.config import Config
from orchestrator.playbooks.actions import Services
from orchestrator.playbooks.approvals import ApprovalBook
from orchestrator.playbooks.clock import Clock
from orchestrator.playbooks.execute import RunExecutor
from orchestrator.playbooks.journal import BusJournal
from orchestrator.playbooks.loader import load_playbook
from orchestrator.playbooks.plan import render_plan
from tests.helpers import MEMBERS, AdminCounter, fleet

pytestmark = pytest.mark.timeout(60)

HOUR = 3600.0
SLACK_S = 0.02
"""asyncio may wake a timer up to its clock resolution early."""
BOUND_S = 20.0
"""A run that waits for the wall clock instead would wait an hour: stop it well before the test timeout."""


class MovingWallClock(Clock):
    """The real monotonic clock, and a wall clock the test moves (see the module docstring)."""

    def __init__(self, *, per_read: float = 0.0, jump: float = 0.0, jump_after_s: float = 0.2) -> None:
        self.per_read = per_read
        self.jump = jump
        self.jump_after_s = jump_after_s
        self.jump_at = time.monotonic() + jump_after_s
        self.offset = 0.0
        self.reads = 0

    def arm(self) -> None:
        """Start counting to the jump now (when the run starts)."""
        self.jump_at = time.monotonic() + self.jump_after_s

    def wall(self) -> float:
        self.reads += 1
        value = time.time() + self.offset + (self.jump if time.monotonic() >= self.jump_at else 0.0)
        self.offset += self.per_read
        return value


CLOCKS = {
    "jump-forward": lambda: MovingWallClock(jump=HOUR),
    "jump-back": lambda: MovingWallClock(jump=-HOUR),
    "drift-forward": lambda: MovingWallClock(per_read=HOUR),
    "drift-back": lambda: MovingWallClock(per_read=-HOUR),
}


@pytest.fixture(params=sorted(CLOCKS))
def clock(request: pytest.FixtureRequest) -> MovingWallClock:
    return CLOCKS[request.param]()


def config(admin: str = "tcp://127.0.0.1:1") -> Config:
    return Config.model_validate(
        {
            "clusters": [{"name": n} for n in MEMBERS],
            "load_balancers": [
                {
                    "name": "global",
                    "driver": "haproxy",
                    "haproxy": {"admin": [admin], "backend": "web"},
                    "members": MEMBERS,
                }
            ],
        }
    )


class Run:
    """One run of a playbook, executed directly by a RunExecutor with a journal in real NATS KV."""

    def __init__(self, bus: Bus, tmp_path: Path, book: str, services: Services) -> None:
        file = tmp_path / "book.yaml"
        file.write_text(book)
        loaded = load_playbook(file, services.config)
        self.event: dict[str, Any] = {"type": "manual", "cluster": "us-east", "id": "clock-test"}
        self.clusters = [{"name": c, "state": "healthy", "labels": {}, "weight": 100} for c in MEMBERS]
        self.record: dict[str, Any] = {
            "id": f"clock-{time.monotonic_ns()}",
            "playbook": loaded.playbook.name,
            "playbook_sha256": loaded.sha256,
            "event": self.event,
            "key": "us-east",
            "status": "running",
            "steps": {},
            "plan": render_plan(loaded.playbook, self.event, self.clusters),
        }
        self.services = services
        self.journal = BusJournal(bus)
        self.events: list[tuple[str, str | None, dict[str, Any]]] = []

    async def execute(self) -> tuple[str, float]:
        """(final status, seconds it took by the monotonic clock)."""

        async def emit(kind: str, step: str | None, attempt: int | None, detail: dict[str, Any]) -> None:
            self.events.append((kind, step, detail))

        executor = RunExecutor(
            self.record, self.services, self.journal, emit, lambda: self.clusters, asyncio.Event()
        )
        if isinstance(self.services.clock, MovingWallClock):
            self.services.clock.arm()
        started = time.monotonic()
        async with asyncio.timeout(BOUND_S):
            status = await executor.execute()
        return status, time.monotonic() - started

    def step(self, step_id: str) -> dict[str, Any]:
        entry: dict[str, Any] = self.record["steps"][step_id]
        return entry


def services(clock: Clock, cfg: Config | None = None, **extra: Any) -> Services:
    cfg = cfg or config()
    return Services(cfg, {}, {}, lambda: dict.fromkeys(MEMBERS, "healthy"), clock=clock, **extra)


async def test_a_sleep_lasts_its_duration_whatever_the_wall_clock_does(
    bus: Bus, tmp_path: Path, clock: MovingWallClock
) -> None:
    book = "name: nap\non: {event: manual}\nsteps:\n  - {id: hold, action: sleep, with: {duration: 600ms}}\n"
    run = Run(bus, tmp_path, book, services(clock))
    wall_before = time.time()
    status, took = await run.execute()
    assert status == "succeeded"
    assert 0.6 - SLACK_S <= took < 0.6 + 3, f"a 600ms sleep took {took:.3f}s"
    assert clock.reads > 2  # the wall clock was read (and moved) while the step ran
    # the journal keeps the absolute wall-clock deadline, read once when the sleep started (before the
    # jump; a drifting clock has no right value to compare with)
    until = run.step("hold")["until"]
    assert isinstance(until, float)
    if not clock.per_read:
        assert abs(until - (wall_before + 0.6)) < 0.15


async def test_wait_for_times_out_after_its_timeout_by_the_monotonic_clock(
    bus: Bus, tmp_path: Path, clock: MovingWallClock
) -> None:
    book = """name: poll
on: {event: manual}
steps:
  - {id: ready, action: wait_for, with: {expression: "clusters | length == 4", poll: 50ms, timeout: 700ms}}
"""
    run = Run(bus, tmp_path, book, services(clock))
    status, took = await run.execute()
    assert status == "failed"
    assert "still false after 0.7s" in run.step("ready")["error"]
    assert 0.7 - SLACK_S <= took < 0.7 + 3, f"a 700ms wait_for timed out after {took:.3f}s"


async def test_an_approval_waits_its_whole_timeout(bus: Bus, tmp_path: Path, clock: MovingWallClock) -> None:
    book = """name: ask
on: {event: manual}
steps:
  - {id: ask, action: approval, with: {timeout: 600ms, on_timeout: proceed}}
"""
    run = Run(bus, tmp_path, book, services(clock, approvals=ApprovalBook()))
    status, took = await run.execute()
    assert status == "succeeded"
    assert run.step("ask")["result"] == {"approved": None, "timed_out": True, "proceeded": True}
    assert 0.6 - SLACK_S <= took < 0.6 + 3, f"a 600ms approval timed out after {took:.3f}s"


async def test_a_step_times_out_after_its_timeout_by_the_monotonic_clock(
    bus: Bus, tmp_path: Path, clock: MovingWallClock
) -> None:
    book = """name: slow
on: {event: manual}
steps:
  - {id: hold, action: sleep, with: {duration: 30s}, timeout: 600ms}
"""
    run = Run(bus, tmp_path, book, services(clock))
    status, took = await run.execute()
    assert status == "failed"
    assert "timed out after 0.6s" in run.step("hold")["error"]
    assert 0.6 - SLACK_S <= took < 0.6 + 3, f"a step with a 600ms timeout ended after {took:.3f}s"


async def test_a_ramp_interval_lasts_its_interval_whatever_the_wall_clock_does(
    bus: Bus, tmp_path: Path, haproxy_binary: str, clock: MovingWallClock
) -> None:
    async with fleet(tmp_path, haproxy_binary) as f:
        counter = AdminCounter(int(f.haproxy.admin_url.rsplit(":", 1)[1]))
        await counter.start()
        try:
            await f.haproxy.admin().set_weight("web", MEMBERS["us-east"], 0)
            cfg = config(counter.url)
            states = dict.fromkeys(MEMBERS, "healthy")
            lb = build_balancer(cfg.load_balancers[0])
            nominal = dict.fromkeys(MEMBERS, 100)
            balancers = {"global": BalancerActuator(lb, nominal, lambda: states, StateStore(bus))}
            book = """name: back
on: {event: manual}
steps:
  - id: restore
    action: lb.restore
    with: {balancer: global, cluster: us-east, ramp: [50, 100], interval: 700ms}
"""
            run = Run(bus, tmp_path, book, Services(cfg, balancers, {}, lambda: states, clock=clock))
            status, took = await run.execute()
        finally:
            await counter.stop()
        assert status == "succeeded", run.record.get("error")
        assert counter.sets("us1") == ["set weight web/us1 50", "set weight web/us1 100"]
        assert 0.7 - SLACK_S <= took < 0.7 + 3, f"a 700ms ramp interval took {took:.3f}s"
        assert "next_at" not in run.step("restore")  # consumed: a resume would not wait again
        assert (await f.weights())["us-east"] == 100


@pytest.mark.parametrize(
    ("journalled_s", "jumped_s", "left_s"),
    [
        (2.0, 1.5, 0.5),  # the wall clock jumped 1.5 s forward while no process ran: 0.5 s left
        (0.5, -1.0, 1.5),  # ... or 1 s back: 1.5 s left (the journalled moment is what counts)
        (0.5, 5.0, 0.0),  # the deadline passed meanwhile: the resumed sleep ends at once
    ],
)
async def test_a_resumed_sleep_recomputes_what_is_left_once_from_the_wall_deadline(
    bus: Bus, tmp_path: Path, journalled_s: float, jumped_s: float, left_s: float
) -> None:
    """A jump between processes shifts a resumed step once; after that, the new process's wall clock
    does not matter any more (here it keeps drifting an hour per reading)."""
    book = "name: nap\non: {event: manual}\nsteps:\n  - {id: hold, action: sleep, with: {duration: 10s}}\n"

    class Resumed(MovingWallClock):
        def __init__(self) -> None:
            super().__init__()
            self.converted = False

        def to_mono(self, wall_deadline: float) -> float:
            # the one reading that decides: the wall clock as it is after the jump
            self.offset = jumped_s
            result = super().to_mono(wall_deadline)
            self.per_read, self.converted = HOUR, True
            return result

    clock = Resumed()
    run = Run(bus, tmp_path, book, services(clock))
    now = time.time()
    run.record["steps"]["hold"] = {  # what the previous process journalled before it died
        "action": "sleep",
        "status": "running",
        "attempts": 1,
        "started_at": "2024-01-01T00:00:00Z",
        "params": {"duration": "10s"},
        "before": None,
        "until": now + journalled_s,
        "deadline": now + 60,
    }
    status, took = await run.execute()
    assert status == "succeeded" and clock.converted
    assert ("step.started", "hold", {"action": "sleep", "items": None, "resumed": True}) in run.events
    assert left_s - SLACK_S <= took < left_s + 0.5, f"{left_s}s were left, the resumed sleep took {took:.3f}s"
    assert run.step("hold")["until"] == now + journalled_s  # the journalled moment itself never changes
