"""What the detector emits: cluster `Transition`s and system `Signal`s.

Kept apart from the state types in `machine` because every helper module builds these, and `machine`
imports those helpers: here they can be shared without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.core.models import ClusterStatus, rfc3339

if TYPE_CHECKING:
    from orchestrator.detection.tracks import Track


@dataclass(frozen=True)
class Transition:
    cluster: str
    from_: ClusterStatus
    to: ClusterStatus
    type: str | None
    """The event to emit (`cluster.failed`, ...), or None for a silent change (unknown -> healthy)."""
    reason: str
    evidence: dict[str, Any]
    at: float


@dataclass(frozen=True)
class Signal:
    """A system event: `observer.suspect`, `observer.clear`, `vantage.suspect`, `vantage.clear`,
    `cluster.flapping`, `automation.resumed`."""

    type: str
    reason: str
    detail: dict[str, Any]
    at: float


Output = Transition | Signal


def failure_marks(counted: dict[str, list[Track]], quorum: int, now: float) -> dict[str, str]:
    """The detector's part of a run's recovery timeline (DESIGN §15), for a failed or degraded event:
    `first_failure_at`, the receipt of the first failing report of the streaks that counted, and
    `quorum_at`, when the `quorum`-th vantage crossed its threshold (for a degraded event, below
    quorum: when the last counted one did). `counted`: vantage -> its failing tracks that counted. A
    rule that counts a track without a streak or a crossing (a latency limit) falls back to `now`."""
    starts = [start for tracks in counted.values() for t in tracks if (start := _first_failure(t))]
    crossings = sorted(
        min(c for t in tracks if (c := _crossed(t)) is not None)
        for tracks in counted.values()
        if any(_crossed(t) is not None for t in tracks)
    )
    quorum_at = crossings[min(quorum, len(crossings)) - 1] if crossings else now
    first = min(starts, default=quorum_at)
    return {"first_failure_at": rfc3339(min(first, quorum_at)), "quorum_at": rfc3339(min(quorum_at, now))}


def _crossed(track: Track) -> float | None:
    """When a track started counting: its consecutive-failure threshold, or its failure ratio."""
    marks = [m for m in (track.crossed_at, track.ratio_since) if m is not None]
    return min(marks) if marks else None


def _first_failure(track: Track) -> float | None:
    """The first failing report that counted: the streak's start, or the first failure in the ratio
    window (an intermittent failure has no streak)."""
    if track.fail_started_at:
        return track.fail_started_at
    if track.ratio_since is not None:
        return next((at for at, ok in track.window if not ok), None)
    return None
