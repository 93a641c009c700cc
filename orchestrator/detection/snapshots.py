"""Persistence of the detector state: what survives a restart, and loading it back.

Only cluster statuses and the observer guard are persisted (KV `failover-state`); per-track counts are
rebuilt by replaying recent health (`Settings.replay_window_s`), so they never appear here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.detection.observer import recount_failing, suppressed_clusters

if TYPE_CHECKING:
    from orchestrator.detection.machine import DetectorState


def snapshot(state: DetectorState, name: str) -> dict[str, Any]:
    """What survives a restart for one cluster (KV `failover-state`, key `cluster.<name>`)."""
    c = state.clusters[name]
    return {
        "status": c.status,
        "since": c.since,
        "last_known": c.last_known,
        "flapping": c.flapping,
        "history": c.history,
        "suppressed": c.suppressed,
    }


def guard_snapshot(state: DetectorState) -> dict[str, Any]:
    """The observer guard's state (KV `failover-state`, key `freeze`)."""
    return {
        "frozen": state.frozen,
        "accepted_before": state.accepted_before if state.accepted_before != float("-inf") else None,
        "suppressed": suppressed_clusters(state),
    }


def restore(state: DetectorState, clusters: dict[str, dict[str, Any]], guard: dict[str, Any] | None) -> None:
    """Load persisted cluster states (counts are rebuilt by replaying recent health, not persisted)."""
    for name, data in clusters.items():
        c = state.clusters.get(name)
        if c is None:
            continue  # a cluster removed from the config
        c.status = data.get("status", "unknown")
        state.generation += 1
        c.since = float(data.get("since", 0.0))
        c.last_known = data.get("last_known", c.status)
        c.flapping = bool(data.get("flapping", False))
        c.history = [float(t) for t in data.get("history", [])]
        c.suppressed = bool(data.get("suppressed", False))
    state.all_due = True  # restored statuses: the next tick decides every cluster again
    if guard:
        state.frozen = bool(guard.get("frozen", False))
        accepted = guard.get("accepted_before")
        state.accepted_before = float(accepted) if accepted is not None else float("-inf")
    recount_failing(state)
