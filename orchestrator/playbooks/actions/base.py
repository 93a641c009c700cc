"""The shape every playbook action shares, and what actions may touch.

An action declares its parameters (a pydantic model: `failover validate` checks names statically, each
run checks rendered values), whether it is idempotent (a non-idempotent step that was in flight when
the daemon died is never repeated blindly), which parameters name a balancer, notifier or cluster, and
implements:
- `before`: read the value the effect will replace; journalled before the effect, reused on resume;
- `run`: the effect, as absolute targets;
- `verify`: read back and compare (a mismatch is retried);
- `describe`: the exact change in words, from read-only calls (`failover plan`).

Time: an action that waits journals its deadline as an absolute wall-clock timestamp (`deadline`) and
waits on the monotonic deadline derived from it once per process (`playbooks.clock`), so a wall-clock
jump during the wait changes nothing. An action that writes to anything outside calls `ctx.fence()`
immediately before the write, after any journal save or other NATS I/O that precedes it.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import aiohttp
from pydantic import BaseModel, ConfigDict

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.core.config import Config
from orchestrator.core.errors import OrchestratorError, PermanentError
from orchestrator.notifiers import Notifier
from orchestrator.playbooks.clock import SYSTEM, Clock

T = TypeVar("T")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Preempted(OrchestratorError):
    """A more urgent run for the same key asked this one to stop at its next journalled point."""


Publish = Callable[[str, bytes], Awaitable[None]]


@dataclass
class Services:
    """What actions may touch; built once by the runtime and shared by every run."""

    config: Config
    balancers: dict[str, BalancerActuator]
    notifiers: dict[str, Notifier]
    cluster_states: Callable[[], Mapping[str, str]]
    http: aiohttp.ClientSession | None = None
    publish: Publish | None = None
    approvals: Any = None
    """An ApprovalBook (runtime): approve/deny decisions arriving by command."""
    scale: Any = None
    """A ScaleActuator (runtime), when any cluster has a `kubernetes:` section."""
    incidents: Any = None
    """An IncidentBook (`playbooks.incidents`): the runtime's; None (plan, dry run) sends no incident."""
    dry_run: bool = False
    fence: Callable[[], None] = lambda: None
    """Raises when this replica no longer leads; called before every attempt of every step, and by
    actions and actuators immediately before every external write."""
    clock: Clock = SYSTEM
    """Wall clock for journalled deadlines and timestamps, monotonic clock for every wait."""


@dataclass
class StepContext:
    services: Services
    run_id: str
    playbook: str
    step: str
    event: Mapping[str, Any]
    journal: dict[str, Any] = field(default_factory=dict)
    """This step's (or item's) journal entry; survives a resume."""
    min_healthy_clusters: int = 1
    force: bool = False
    checkpoint: Callable[[], Awaitable[None]] | None = None
    """Persist the journal now (progress inside a step, e.g. each ramp step)."""
    preempt: asyncio.Event = field(default_factory=asyncio.Event)
    template_context: Callable[[], dict[str, Any]] | None = None
    """A fresh template context (cluster states now), for actions that poll."""
    mono_deadlines: dict[str, float] = field(default_factory=dict)
    """Journalled wall deadlines converted to this process's monotonic clock (never journalled)."""

    @property
    def clock(self) -> Clock:
        return self.services.clock

    def fence(self) -> None:
        """Raise NotLeader unless this replica still leads: call it right before an external write."""
        self.services.fence()

    @property
    def before(self) -> Any:
        return self.journal.get("before")

    def balancer(self, name: str) -> BalancerActuator:
        try:
            return self.services.balancers[name]
        except KeyError:
            raise PermanentError(f"unknown balancer {name!r}") from None

    def notifier(self, name: str) -> Notifier:
        try:
            return self.services.notifiers[name]
        except KeyError:
            raise PermanentError(f"unknown notifier {name!r}") from None

    async def save(self) -> None:
        if self.checkpoint is not None:
            await self.checkpoint()

    async def sleep_until(self, mono_deadline: float) -> None:
        """Sleep to a deadline on the monotonic clock (from `deadline`); a preemption ends the sleep at
        once (it is a journalled point)."""
        if self.preempt.is_set():
            raise Preempted(f"preempted before {self.step}")
        remaining = mono_deadline - self.clock.mono()
        if remaining <= 0:
            return
        try:
            await asyncio.wait_for(self.preempt.wait(), timeout=remaining)
        except TimeoutError:
            return
        raise Preempted(f"preempted during {self.step}")

    async def preemptible(self, waiting: Awaitable[T]) -> T:
        """Wait for `waiting` unless a preemption comes first (a wait is a journalled point: a drain of
        this cluster never waits for a failback's readiness wait to end)."""
        if self.preempt.is_set():
            raise Preempted(f"preempted before {self.step}")
        work = asyncio.ensure_future(waiting)
        stop = asyncio.ensure_future(self.preempt.wait())
        try:
            await asyncio.wait([work, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (work, stop):
                if not future.done():
                    future.cancel()
            await asyncio.gather(work, stop, return_exceptions=True)
        if work.done() and not work.cancelled():
            return work.result()
        raise Preempted(f"preempted during {self.step}")

    def deadline(self, key: str, seconds: float) -> float:
        """The monotonic deadline `seconds` from the first call, for waiting in this process.

        The first time, the absolute wall-clock deadline is journalled under `key`, so a resumed step
        keeps the same moment. A step resumed in another process finds it in the journal and converts
        it to its own monotonic clock once (what is left, clamped at 0); every later call in this
        process returns that same monotonic deadline, whatever the wall clock does meanwhile.
        """
        if key not in self.mono_deadlines:
            if key in self.journal:
                self.mono_deadlines[key] = self.clock.to_mono(float(self.journal[key]))
            else:
                self.mono_deadlines[key] = self.clock.mono() + seconds
                self.journal[key] = self.clock.wall() + seconds
        return self.mono_deadlines[key]

    def forget_deadline(self, key: str) -> None:
        """Drop a deadline that was reached (e.g. one ramp interval), from the journal and this process."""
        self.journal.pop(key, None)
        self.mono_deadlines.pop(key, None)


class Action(ABC):
    name: ClassVar[str]
    params: ClassVar[type[Params]]
    idempotent: ClassVar[bool] = True
    refs: ClassVar[dict[str, Literal["balancer", "notifier", "cluster"]]] = {}

    def default_timeout_s(self, params: Any) -> float:
        """Used when a step sets no `timeout`: every step runs under one."""
        return 60.0

    async def before(self, ctx: StepContext, params: Any) -> Any:
        """Read the value the effect will replace (None when there is none)."""
        return None

    @abstractmethod
    async def run(self, ctx: StepContext, params: Any) -> dict[str, Any]:
        """Perform the effect; return a JSON-able result (available to later steps as `steps.<id>`)."""

    async def verify(self, ctx: StepContext, params: Any, result: dict[str, Any]) -> str | None:
        """Read back; None when the world is as intended, else what differs."""
        return None

    async def describe(self, ctx: StepContext, params: Any) -> list[str]:
        """The exact change, in words, using read-only calls only."""
        return [f"{self.name} {params.model_dump(mode='json', by_alias=True)}"]


REGISTRY: dict[str, Action] = {}


def register(cls: type[Action]) -> type[Action]:
    REGISTRY[cls.name] = cls()
    return cls
