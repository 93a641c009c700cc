"""The playbook format (DESIGN §7, a contract) as typed models.

Templated fields stay strings here; they are rendered when a run starts (or when a step starts, for
fields that refer to earlier steps). Each action validates its own `with:` parameters (see actions).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.core.config_fields import Name, Seconds


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


EventType = Literal[
    "cluster.failed",
    "cluster.degraded",
    "cluster.recovered",
    "cluster.unknown",
    "manual",
    # system events a human must hear about: a playbook with `notify` pages on them
    "observer.suspect",
    "observer.clear",
    "cluster.flapping",
    "vantage.suspect",
]


class Selector(Model):
    labels: dict[str, str] = {}
    names: list[str] = []

    def matches(self, name: str, labels: dict[str, str]) -> bool:
        if self.names and name not in self.names:
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())


class Trigger(Model):
    event: EventType
    clusters: Selector | None = None


class Budget(Model):
    runs: int = Field(ge=1)
    per_s: Seconds = Field(alias="per", gt=0)


class Guards(Model):
    min_healthy_clusters: int = Field(default=1, ge=0)
    """Never drain the last serving cluster: 1 unless a human says otherwise."""
    cooldown_s: Seconds | None = Field(default=None, alias="cooldown")
    budget: Budget | None = None


class RetryPolicy(Model):
    attempts: int = Field(default=3, ge=1, le=100)
    backoff: Literal["exponential", "fixed"] = "exponential"
    initial_s: Seconds = Field(default=0.2, alias="initial", gt=0)
    max_s: Seconds = Field(default=5.0, alias="max", gt=0)


class Compensate(Model):
    action: str
    with_: dict[str, Any] = Field(default={}, alias="with")


class Step(Model):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] | None = None
    action: str
    with_: dict[str, Any] = Field(default={}, alias="with")
    when: str | bool | None = None
    for_each: str | list[Any] | None = None
    max_parallel: int = Field(default=8, ge=1)
    timeout_s: Seconds | None = Field(default=None, alias="timeout", gt=0)
    retry: RetryPolicy | None = None
    compensate: Compensate | None = None
    verify: bool = True
    continue_on_error: bool = False


class OnFailure(Model):
    steps: list[Step] = Field(min_length=1)


class Playbook(Model):
    name: Name
    description: str = ""
    on: Trigger
    concurrency: str | None = None
    guards: Guards = Guards()
    vars: dict[str, Any] = {}
    steps: list[Step] = Field(min_length=1)
    on_failure: OnFailure | None = None

    def step_id(self, index: int, step: Step, prefix: str = "") -> str:
        return step.id or f"{prefix}{index + 1}-{step.action}"
