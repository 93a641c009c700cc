"""The recovery timeline of a run (DESIGN §15): when each stage of a recovery happened.

A run's record holds `timeline`, a map of mark -> RFC 3339 time, journalled with the rest of the record,
so a run resumed after a crash or by another replica keeps the marks already made (a mark is set once and
never moved). The marks, in the order a recovery passes them:
- `first_failure_at`, `quorum_at`: from the detector, in the evidence of the event that started the run
  (the first failing report that counted toward the transition; when a quorum of vantages saw it);
- `event_at`: the event's own time; `run_started_at`: when the run began (its record was created);
- `first_effect_at`: the first step that changed something outside (a balancer, a workload, an HTTP call
  or a message); waiting, approvals and notifications to people are not effects on the service;
- `traffic_moved_at`: an `lb.drain` step read the balancer back with the cluster drained;
- `verified_at`: the last step that read its change back through a balancer (`lb.*` with verify on);
- `dns_changed_at`, `ttl_expires_at`: for a DNS balancer (its step's result carries `ttl_s`), when the
  record was read back changed, and when the TTL served before the change runs out: until then a
  resolver that cached the old answer still hands it out (k8gb's and Route 53's "+ TTL");
- `finished_at`: when the run ended.

`stages` turns the marks into the durations `failover_recovery_seconds{stage}` observes, `table` into the
rows `failover ctl run` and the dashboard show. Kept out of `execute` so the executor only calls hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

MARKS: tuple[tuple[str, str], ...] = (
    ("first_failure_at", "first failure"),
    ("quorum_at", "quorum"),
    ("event_at", "event"),
    ("run_started_at", "run started"),
    ("first_effect_at", "first effect"),
    ("traffic_moved_at", "traffic moved"),
    ("dns_changed_at", "DNS record changed"),
    ("ttl_expires_at", "DNS TTL expired"),
    ("verified_at", "verified"),
    ("finished_at", "finished"),
)
"""Every mark and its label, in recovery order."""

STAGES: tuple[tuple[str, str, str], ...] = (
    ("detect", "first_failure_at", "quorum_at"),
    ("decide", "quorum_at", "event_at"),
    ("start", "event_at", "run_started_at"),
    ("act", "run_started_at", "first_effect_at"),
    ("moved", "first_failure_at", "traffic_moved_at"),
    ("resolvers", "first_failure_at", "ttl_expires_at"),
    ("total", "first_failure_at", "finished_at"),
)
"""stage -> (from mark, to mark): the `stage` label of `failover_recovery_seconds`."""

NOT_EFFECTS = frozenset({"sleep", "wait_for", "approval", "k8s.wait_ready", "notify"})
"""Actions that change nothing the service runs on: they wait, ask or tell people."""

FROM_DETECTOR = ("first_failure_at", "quorum_at")


def _stamp(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse(value: Any) -> float | None:
    """An RFC 3339 mark as epoch seconds; None when absent or unreadable (a record from elsewhere)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _normal(value: Any) -> str | None:
    """A mark as every mark is written: UTC, milliseconds (cut, not rounded: the event's own time has
    microseconds, and the run's start, cut to ms, must not read as earlier than it)."""
    if parse(value) is None:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    return parsed.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def begin(record: dict[str, Any]) -> dict[str, Any]:
    """The record's timeline, with the marks known before any step filled in: the detector's from the
    event's evidence, the event's time and the run's start. Marks already there are kept (a resume)."""
    marks: dict[str, Any] = record.setdefault("timeline", {})
    event = record.get("event")
    event = event if isinstance(event, Mapping) else {}
    evidence = event.get("evidence")
    evidence = evidence if isinstance(evidence, Mapping) else {}
    known = {
        **{key: evidence.get(key) for key in FROM_DETECTOR},
        "event_at": event.get("ts"),
        "run_started_at": record.get("created_at"),
    }
    for key, value in known.items():
        stamp = _normal(value)
        if stamp is not None:
            marks.setdefault(key, stamp)
    return marks


def mark_effect(record: dict[str, Any], action: str, wall: float) -> None:
    """An action's effect was made: the first one is the run's `first_effect_at`."""
    if action not in NOT_EFFECTS:
        record.setdefault("timeline", {}).setdefault("first_effect_at", _stamp(wall))


def mark_verified(record: dict[str, Any], step: Mapping[str, Any], wall: float) -> dict[str, str]:
    """A step succeeded: when it read a balancer back, traffic moved (a drain) and the run's balancer
    changes are verified as of now. Returns the marks it set (for the step's event), else {}."""
    action = str(step.get("action", ""))
    if not action.startswith("lb.") or step.get("verify", True) is False:
        return {}
    marks = record.setdefault("timeline", {})
    now = _stamp(wall)
    made = {"verified_at": now}
    if action == "lb.drain" and "traffic_moved_at" not in marks:
        made["traffic_moved_at"] = now
    ttl_s = _dns_ttl_s(record, step)
    if ttl_s is not None and "dns_changed_at" not in marks:
        made.update(dns_changed_at=now, ttl_expires_at=_stamp(wall + ttl_s))
    marks.update(made)
    return made


def _dns_ttl_s(record: Mapping[str, Any], step: Mapping[str, Any]) -> float | None:
    """The TTL a DNS balancer's step reports in its result (the largest, over `for_each` items); None
    for other balancers and for a restore that found drift and changed nothing."""
    entry = (record.get("steps") or {}).get(str(step.get("id")))
    result = entry.get("result") if isinstance(entry, Mapping) else None
    results = result if isinstance(result, list) else [result]
    ttls = [
        float(r["ttl_s"])
        for r in results
        if isinstance(r, Mapping) and isinstance(r.get("ttl_s"), int | float) and not r.get("drift")
    ]
    return max(ttls) if ttls else None


def finish(record: dict[str, Any], finished_at: str) -> dict[str, Any]:
    marks: dict[str, Any] = record.setdefault("timeline", {})
    marks.setdefault("finished_at", finished_at)
    return marks


def stages(marks: Mapping[str, Any]) -> dict[str, float]:
    """Stage durations in seconds, for the stages whose two marks are both known. Marks come from
    different processes' clocks (a prober, the leader), so a stage can read a few ms below zero: 0."""
    out: dict[str, float] = {}
    for stage, start, end in STAGES:
        a, b = parse(marks.get(start)), parse(marks.get(end))
        if a is not None and b is not None:
            out[stage] = max(0.0, b - a)
    return out


def recovery_stages(marks: Mapping[str, Any]) -> dict[str, float]:
    """What `failover_recovery_seconds` observes: only runs that a detected failure started (a failback
    or a manual run has no first failure, and its start or act would blur the recovery figures)."""
    return stages(marks) if parse(marks.get("first_failure_at")) is not None else {}


def table(marks: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows (label, time, offset from the first failure (or the first mark), stage ending here)."""
    known = {key: parse(marks.get(key)) for key, _label in MARKS}
    origin = known["first_failure_at"]
    if origin is None:
        origin = min((t for t in known.values() if t is not None), default=None)
    ending = {end: (stage, start) for stage, start, end in STAGES}
    rows = []
    for key, label in MARKS:
        at = known[key]
        if at is None or origin is None:
            continue
        stage = ""
        if key in ending:
            name, start = ending[key]
            began = known[start]
            if began is not None:
                stage = f"{name} {max(0.0, at - began):.3f}s"
        rows.append((label, str(marks[key]), f"{at - origin:+.3f}s", stage))
    return rows
