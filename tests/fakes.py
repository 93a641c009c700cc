"""In-memory stand-ins for the playbook runner's outside world, for tests that run thousands of
interleavings (tests/test_runner_properties.py) where a real NATS and a real HAProxy per example would
take minutes.

Each fake keeps the contract of what it replaces, including the properties the runner relies on:
- `MemoryJournal` writes with compare-and-set like `BusJournal` (a stale revision raises `Fenced`);
  several journals over one `JournalData` are several processes over one KV bucket, each with its own
  revisions, so a deposed process that writes after the new leader adopted a run is fenced;
- `FakeBalancer` calls the fence immediately before its write, keeps weights as absolute values, and
  lets a test watch every write at the moment it is sent;
- `MemoryNotifier` records what it sent.
Every call yields to the event loop once (the I/O it stands for), so other tasks can interleave there.

`VirtualTimeLoop` runs asyncio on virtual time: when every task waits, the loop jumps to the next timer
instead of sleeping, so a 10 ms ramp interval or a 10 minute approval timeout costs no wall time, and an
interleaving depends on the order of events only, never on how fast the machine is. `LoopClock` gives
the runner's `Clock` the same time.
"""

from __future__ import annotations

import asyncio
import copy
import json
import selectors
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.actuators.base import Balancer, Fence, no_fence
from orchestrator.core.config_drivers import LoadBalancerConfig, NotifierConfig
from orchestrator.core.models import RunEvent
from orchestrator.notifiers import Notification, Notifier
from orchestrator.playbooks.clock import Clock
from orchestrator.playbooks.journal import UNFINISHED, Fenced

# virtual time ---------------------------------------------------------------------------------------


class Deadlock(RuntimeError):
    """Every task waits and no timer is due: nothing can ever happen again."""


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Deadlock("every task waits and no timer is scheduled")
        if timeout > 0:
            self._loop.advance(timeout)
        return super().select(0)  # the loop's own self-pipe, never blocking


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when every task waits, straight to the next timer."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds


class LoopClock(Clock):
    """The runner's clocks on the running loop's time (virtual under `VirtualTimeLoop`); the wall clock
    starts at the real time, so timestamps other code takes with `time.time()` stay comparable."""

    def __init__(self) -> None:
        self._wall0 = time.time()

    def mono(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return self._wall0 + self.mono()


# journal --------------------------------------------------------------------------------------------


@dataclass
class JournalData:
    """The KV bucket `failover-runs` and the run event stream, shared by every process of a test."""

    records: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    """run id -> (revision, record as last written)."""
    events: list[RunEvent] = field(default_factory=list)
    """Called with the run id when a process starts writing a record (before the round trip)."""
    on_save: Callable[[str], None] | None = None
    """Called with the run id after each write that landed."""

    def record(self, run_id: str) -> dict[str, Any] | None:
        found = self.records.get(run_id)
        return None if found is None else found[1]


class MemoryJournal:
    """One process's journal over `JournalData`, with `BusJournal`'s compare-and-set semantics."""

    def __init__(self, data: JournalData) -> None:
        self.data = data
        self._revisions: dict[str, int] = {}

    async def save(self, record: dict[str, Any]) -> None:
        run_id = str(record["id"])
        await asyncio.sleep(0)
        found = self.data.records.get(run_id)
        known = self._revisions.get(run_id)
        if (found is None and known is not None) or (found is not None and found[0] != known):
            raise Fenced(f"run {run_id}: revision {known} is stale (now {found and found[0]})")
        revision = (found[0] if found else 0) + 1
        # through JSON, as the KV stores it: a value that does not serialize fails here as it would there
        self.data.records[run_id] = (revision, json.loads(json.dumps(record)))
        self._revisions[run_id] = revision
        if self.data.on_save is not None:
            self.data.on_save(run_id)

    async def emit(self, event: RunEvent) -> None:
        await asyncio.sleep(0)
        self.data.events.append(event)

    async def load(self, run_id: str) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        found = self.data.records.get(run_id)
        if found is None:
            return None
        self._revisions[run_id] = found[0]
        return copy.deepcopy(found[1])

    async def unfinished(self) -> list[dict[str, Any]]:
        """Adopt every unfinished run with its revision, oldest first (records keep insertion order)."""
        await asyncio.sleep(0)
        out = []
        for run_id, (revision, record) in self.data.records.items():
            if record.get("status") in UNFINISHED:
                self._revisions[run_id] = revision
                out.append(copy.deepcopy(record))
        return out


# balancer and notifier ----------------------------------------------------------------------------

Watcher = Callable[[Mapping[str, int], Mapping[str, int]], None]
"""Called with (weights before, weights after) at the moment a write is sent."""


class FakeBalancer(Balancer):
    max_weight = 256

    def __init__(self, name: str, weights: Mapping[str, int]) -> None:
        super().__init__(
            LoadBalancerConfig.model_validate(
                {
                    "name": name,
                    "driver": "webhook",
                    "webhook": {"url": "http://127.0.0.1:9/unused"},
                    "members": {c: f"m-{c}" for c in weights},
                }
            )
        )
        self.weights = dict(weights)
        self.watchers: list[Watcher] = []
        self.writes = 0

    async def get_weights(self) -> dict[str, int]:
        await asyncio.sleep(0)
        return dict(self.weights)

    async def set_weights(self, weights: Mapping[str, int], fence: Fence = no_fence) -> None:
        fence()
        unknown = set(weights) - set(self.weights)
        if unknown:
            raise KeyError(f"no member for {sorted(unknown)}")
        before = dict(self.weights)
        self.weights.update(weights)
        self.writes += 1
        for watch in self.watchers:
            watch(before, dict(self.weights))
        await asyncio.sleep(0)  # the balancer's answer


class MemoryNotifier(Notifier):
    """Records every notification; `on_send` sees each at the moment it is sent."""

    def __init__(self, name: str, on_send: Callable[[Notification], None] | None = None) -> None:
        self.config = NotifierConfig.model_validate(
            {"name": name, "driver": "webhook", "webhook": {"url": "http://127.0.0.1:9/unused"}}
        )
        self.name = name
        self.sent: list[Notification] = []
        self.on_send = on_send

    async def send(self, note: Notification) -> None:
        self.sent.append(note)
        if self.on_send is not None:
            self.on_send(note)
        await asyncio.sleep(0)
