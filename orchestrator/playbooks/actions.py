"""The action registry: every playbook action has the same shape and is registered by name.

An action declares its parameters as a pydantic model (so `failover validate` checks field names
statically and each run checks the rendered values), whether it is idempotent (a non-idempotent step
that was in flight when the daemon died is never repeated blindly), which parameters name a balancer,
notifier or cluster (checked against the config), and implements `run`. Adding an action is one class.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.config import Config, Seconds
from orchestrator.errors import PermanentError
from orchestrator.notifiers import Notification, Notifier


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


@dataclass
class Services:
    """What actions may touch; built once by the runtime and shared by every run."""

    config: Config
    balancers: dict[str, BalancerActuator]
    notifiers: dict[str, Notifier]
    cluster_states: Callable[[], Mapping[str, str]]


@dataclass
class StepContext:
    services: Services
    run_id: str
    playbook: str
    step: str
    event: Mapping[str, Any]
    min_healthy_clusters: int = 1
    force: bool = False
    journal: dict[str, Any] = field(default_factory=dict)
    """This step's journal entry: values read before the effect (`before`) survive a resume."""

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


class Action(ABC):
    name: ClassVar[str]
    params: ClassVar[type[Params]]
    idempotent: ClassVar[bool] = True
    refs: ClassVar[dict[str, Literal["balancer", "notifier", "cluster"]]] = {}

    def default_timeout_s(self, params: Any) -> float:
        """Used when a step sets no `timeout`: every step runs under one."""
        return 60.0

    @abstractmethod
    async def run(self, ctx: StepContext, params: Any) -> dict[str, Any]:
        """Perform the effect; return a JSON-able result (available to later steps' templates)."""


REGISTRY: dict[str, Action] = {}


def register(cls: type[Action]) -> type[Action]:
    REGISTRY[cls.name] = cls()
    return cls


class DrainParams(Params):
    balancer: str
    cluster: str


@register
class LbDrain(Action):
    """Weight 0 for one cluster in one balancer; the original weight is recorded first."""

    name = "lb.drain"
    params = DrainParams
    refs = {"balancer": "balancer", "cluster": "cluster"}

    async def run(self, ctx: StepContext, params: DrainParams) -> dict[str, Any]:
        change = await ctx.balancer(params.balancer).drain(
            params.cluster, ctx.min_healthy_clusters, ctx.force
        )
        return {
            "balancer": change.balancer,
            "cluster": change.cluster,
            "before": change.before,
            "after": change.after,
            "change": change.describe(),
        }


class RestoreParams(Params):
    balancer: str
    cluster: str
    ramp: list[int] = Field(default=[100], min_length=1)
    """Percentages of the original weight, applied in order; must end at 100."""
    interval_s: Seconds = Field(default=10.0, alias="interval", ge=0)

    @model_validator(mode="after")
    def _ramp(self) -> RestoreParams:
        if self.ramp[-1] != 100 or any(not 0 < p <= 100 for p in self.ramp) or self.ramp != sorted(self.ramp):
            raise ValueError("ramp must be increasing percentages in (0, 100] ending at 100")
        return self


@register
class LbRestore(Action):
    """Put back the recorded weight (optionally ramped), only where the current value is still ours."""

    name = "lb.restore"
    params = RestoreParams
    refs = {"balancer": "balancer", "cluster": "cluster"}

    def default_timeout_s(self, params: RestoreParams) -> float:
        return 60.0 + params.interval_s * (len(params.ramp) - 1)

    async def run(self, ctx: StepContext, params: RestoreParams) -> dict[str, Any]:
        actuator = ctx.balancer(params.balancer)
        if "target" not in ctx.journal:
            ctx.journal["target"] = await actuator.target_weight(params.cluster)
        target = int(ctx.journal["target"])
        expect = int(ctx.journal.get("last_set", 0))
        changes = []
        for i, percent in enumerate(params.ramp):
            weight = max(1, round(target * percent / 100)) if target else 0
            if i and params.interval_s:
                await asyncio.sleep(params.interval_s)
            change = await actuator.set_weight(
                params.cluster, weight, expect=expect, min_healthy=ctx.min_healthy_clusters, force=ctx.force
            )
            changes.append(change.describe())
            if change.drift:
                return {
                    "balancer": actuator.name,
                    "cluster": params.cluster,
                    "drift": change.drift,
                    "changes": changes,
                    "restored": False,
                }
            expect = weight
            ctx.journal["last_set"] = weight
        await actuator.finish_restore(params.cluster)
        return {
            "balancer": actuator.name,
            "cluster": params.cluster,
            "after": target,
            "changes": changes,
            "restored": True,
        }


class NotifyParams(Params):
    notifier: str
    summary: str
    severity: Literal["info", "warning", "error", "critical"] = "info"
    details: dict[str, Any] = {}


@register
class Notify(Action):
    """Tell humans. Not idempotent: an interrupted notification is reported, not sent twice."""

    name = "notify"
    params = NotifyParams
    idempotent = False
    refs = {"notifier": "notifier"}

    async def run(self, ctx: StepContext, params: NotifyParams) -> dict[str, Any]:
        cluster = ctx.event.get("cluster")
        note = Notification(
            summary=params.summary,
            severity=params.severity,
            details=params.details,
            run_id=ctx.run_id,
            playbook=ctx.playbook,
            cluster=cluster if isinstance(cluster, str) else None,
            dedup_key=f"{ctx.run_id}.{ctx.step}",
        )
        await ctx.notifier(params.notifier).send(note)
        return {"notifier": params.notifier, "severity": params.severity}
