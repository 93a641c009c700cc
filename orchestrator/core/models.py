"""Wire messages of DESIGN §5 (a contract): every body is a JSON object with `"v": 1`.

Reports arrive from the network, so parsing is strict and cheap (pydantic-core validates JSON directly);
anything that does not parse is counted and dropped by the caller, never raised into a loop.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(ts: datetime | float) -> str:
    if isinstance(ts, int | float):
        ts = datetime.fromtimestamp(ts, UTC)
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    return uuid.uuid4().hex[:16]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    v: Literal[1] = 1

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class HealthReport(Message):
    """`failover.health.<vantage>.<cluster>.<probe>`: one probe result from one vantage point."""

    cluster: str = Field(min_length=1, max_length=63)
    probe: str = Field(min_length=1, max_length=63)
    vantage: str = Field(min_length=1, max_length=253)
    boot_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    ok: bool
    latency_ms: float = Field(ge=0)
    detail: str = ""
    ts: datetime


ClusterEventType = Literal["cluster.failed", "cluster.degraded", "cluster.recovered", "cluster.unknown"]
ClusterStatus = Literal["unknown", "healthy", "degraded", "failed"]


class ClusterEvent(Message):
    """`failover.events.cluster.<cluster>`: a state change decided by our detector."""

    id: str = Field(default_factory=new_id)
    type: ClusterEventType
    cluster: str
    from_: ClusterStatus = Field(alias="from")
    to: ClusterStatus
    reason: str
    evidence: dict[str, Any] = {}
    ts: datetime = Field(default_factory=utc_now)


class SystemEvent(Message):
    """`failover.events.system`."""

    id: str = Field(default_factory=new_id)
    type: str
    reason: str
    detail: dict[str, Any] = {}
    ts: datetime = Field(default_factory=utc_now)


RunEventType = Literal[
    "started",
    "blocked",
    "deduplicated",
    "preempted",
    "step.started",
    "step.succeeded",
    "step.failed",
    "waiting_approval",
    "compensated",
    "needs_attention",
    "resumed",
    "finished",
]


class RunEvent(Message):
    """`failover.runs.<run_id>`."""

    run_id: str
    playbook: str
    type: RunEventType
    step: str | None = None
    attempt: int | None = None
    detail: dict[str, Any] = {}
    ts: datetime = Field(default_factory=utc_now)


class AuditRecord(Message):
    """`failover.audit`: who did what through which channel; never a token."""

    id: str = Field(default_factory=new_id)
    actor: str
    via: str
    command: str
    args: dict[str, Any] = {}
    result: str
    runs: list[str] = []
    """The runs the command started: a resumed run journalled with `force` must be found here."""
    ts: datetime = Field(default_factory=utc_now)
