"""What may be read back from KV (DESIGN §12, bus trust): every value is validated against the shape of
its key before anything uses it, and a bad one is quarantined, never fatal.

Anyone who could write a bucket (an operator's `nats kv put`, a bug in an older version, a disk that
lost a write) could otherwise stop the daemon on every start (`cluster.x` = `not json {`), fail the API
(`run.junk` = `[1,2]`) or kill the leadership task. `check` validates one value by its bucket and key
prefix; `kv.kv_get` calls it and treats a bad value as absent after moving it aside: the raw bytes go
to `quarantine.<bucket>.<key>.<revision>` in the state bucket (so an operator can look), the original
is deleted if nobody rewrote it meanwhile, and the bus's `on_bad_record` hook counts it and emits a
`record.quarantined` system event.

The models check what the readers rely on (types they convert, values they compare) and allow extra
fields, so a newer version's additions never get an older replica's records quarantined.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class Record(BaseModel):
    model_config = ConfigDict(extra="allow", strict=False)


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class ClusterRecord(Record):
    """`cluster.<name>`: a detector snapshot."""

    status: Literal["unknown", "healthy", "degraded", "failed"]
    since: float = 0.0
    last_known: str | None = None
    flapping: bool = False
    history: list[float] = []
    suppressed: bool = False

    @field_validator("since")
    @classmethod
    def _since(cls, value: float) -> float:
        return _finite(value) or 0.0


class FreezeRecord(Record):
    """`freeze`: the observer guard."""

    frozen: bool = False
    accepted_before: float | None = None
    suppressed: list[str] = []


class PauseRecord(Record):
    """`pause`, `pause.cluster.<c>`: until (epoch seconds) or None for "until resumed"."""

    until: float | None = None

    @field_validator("until")
    @classmethod
    def _until(cls, value: float | None) -> float | None:
        return _finite(value)


class WeightRecord(Record):
    """`orig.lb.<b>.<c>` and `desired.lb.<b>.<c>`."""

    weight: int = Field(ge=0)


class HpaBounds(Record):
    name: str
    min: int = Field(ge=0)
    max: int = Field(ge=0)


class ScaleRecord(Record):
    """`orig.scale.<c>.<ns>.<kind>.<name>`: the baseline and the value we set."""

    replicas: int = Field(ge=0)
    set: int | None = Field(default=None, ge=0)
    hpa: HpaBounds | None = None


class GuardRecord(Record):
    """`guard.<playbook>.<key>`: start times of recent runs (cooldown, budget)."""

    runs: list[float] = []


class LeaseRecord(Record):
    """The leader lease (`failover-leader`, key `leader`)."""

    holder: str
    term: int | None = None
    renewed_at: float | None = None


class RunRecord(Record):
    """`run.<id>` in `failover-runs`: what resuming and listing a run read."""

    id: str
    playbook: str
    status: str
    key: str = ""
    event: dict[str, Any] = {}
    steps: dict[str, dict[str, Any]] = {}
    plan: dict[str, Any] = {}


IncidentState = Literal["opened", "drained", "scaled", "waiting_approval", "step_failed", "resolved"]


class IncidentPointer(Record):
    """`incident.open.<cluster>`: the last incident number given out, and the open incident if any."""

    n: int = Field(ge=0)
    open: str | None = None


class IncidentRecord(Record):
    """`incident.<id>` (DESIGN §13): what the notify action and the incident views read."""

    id: str
    cluster: str
    state: IncidentState
    opened_at: float
    updated_at: float
    resolved_at: float | None = None
    runs: list[str] = []
    summary: str | None = None
    receipts: dict[str, dict[str, Any] | None] = {}
    notified: dict[str, str] = {}

    @field_validator("opened_at", "updated_at", "resolved_at")
    @classmethod
    def _times(cls, value: float | None) -> float | None:
        return _finite(value)


SCHEMAS: Mapping[str, list[tuple[str, type[Record]]]] = {
    "failover-state": [
        ("cluster.", ClusterRecord),
        ("freeze", FreezeRecord),
        ("pause", PauseRecord),
        ("orig.lb.", WeightRecord),
        ("desired.lb.", WeightRecord),
        ("orig.scale.", ScaleRecord),
        ("guard.", GuardRecord),
        ("incident.open.", IncidentPointer),
        ("incident.", IncidentRecord),
    ],
    "failover-leader": [("leader", LeaseRecord)],
    "failover-runs": [("run.", RunRecord)],
}
"""bucket -> (key prefix, model): the first prefix that matches decides; other keys are not checked."""


def schema_for(bucket: str, key: str) -> type[Record] | None:
    for prefix, model in SCHEMAS.get(bucket, []):
        if key == prefix or key.startswith(prefix if prefix.endswith(".") else f"{prefix}."):
            return model
    return None


def check(bucket: str, key: str, value: Any) -> str | None:
    """Why `value` is not a valid record for `key` in `bucket`, or None when it is (or is not checked)."""
    model = schema_for(bucket, key)
    if model is None:
        return None
    try:
        model.model_validate(value)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(value)"
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        return f"{where}: {first['msg']}{more}"
    return None
