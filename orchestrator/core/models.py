"""Wire messages of DESIGN §5 (a contract): every body is a JSON object with `"v": 1`.

Reports arrive from the network, so parsing is strict and cheap (pydantic-core validates JSON directly);
anything that does not parse is counted and dropped by the caller, never raised into a loop.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

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


SUBJECT_TOKEN = r"^[A-Za-z0-9_-]+$"
"""One NATS subject token: no dots, wildcards, spaces or control characters."""
DETAIL_LIMIT = 1024
"""Longer details are cut: they travel into evidence, events and notifications."""


def _cut_detail(value: object) -> object:
    return value[:DETAIL_LIMIT] if isinstance(value, str) else value


class HealthReport(Message):
    """`failover.health.<vantage>.<cluster>.<probe>`: one probe result from one vantage point.

    Anyone able to publish on the bus can send one, so every field is bounded: names are single subject
    tokens (as the config requires of them), numbers are finite, `ts` carries its zone (RFC 3339; a
    zoneless time would be read in the daemon's local zone, and year 1 then raised), and `detail` is cut
    rather than refused so that a prober's long error message still reports."""

    cluster: str = Field(min_length=1, max_length=63, pattern=SUBJECT_TOKEN)
    probe: str = Field(min_length=1, max_length=63, pattern=SUBJECT_TOKEN)
    vantage: str = Field(min_length=1, max_length=64, pattern=SUBJECT_TOKEN)
    boot_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0, lt=2**63)
    ok: bool
    latency_ms: float = Field(ge=0, allow_inf_nan=False)
    detail: Annotated[str, BeforeValidator(_cut_detail)] = ""
    ts: AwareDatetime


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
