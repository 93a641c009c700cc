"""Recording reports: one `Track` per (cluster, probe, vantage) within one prober boot (DESIGN §6).

Applying a report to its track (boots superseding each other, duplicates and out-of-order reports
dropped, consecutive counts, the failure-ratio window) is the detector's bookkeeping, separate from
deciding what the counts mean (`evaluation`). It also keeps `DetectorState.failing_at` in step, which
suspect-vantage detection reads.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orchestrator.core.models import HealthReport

if TYPE_CHECKING:
    from orchestrator.detection.machine import DetectorState


@dataclass
class Track:
    """The last results of one probe of one cluster as seen from one vantage (within one boot)."""

    boot_id: str
    seq: int
    received_at: float
    ok: bool
    consecutive_fail: int = 0
    consecutive_ok: int = 0
    fail_started_at: float | None = None
    """Receipt time of the first report of the current failing streak."""
    ok_since: float | None = None
    """Receipt time of the first report of the current passing streak."""
    crossed_at: float | None = None
    """Receipt time of the report that took the failing streak to `failure_threshold`."""
    latency_ms: float = 0.0
    detail: str = ""
    window: deque[tuple[float, bool]] = field(default_factory=deque)
    """(receipt time, ok) of this boot's rounds in the last `failure_ratio` window, oldest first: each
    round is appended once and dropped once, so a report costs O(1) amortized."""
    window_failed: int = 0
    """How many rounds in `window` failed."""
    ratio_since: float | None = None
    """Receipt time of the report that took the window's failed share to the `failure_ratio` threshold
    (with at least `min_rounds` rounds); None while under it. Set: the vantage sees the probe failing."""

    def sees_failing(self, failure_threshold: int) -> bool:
        """Failing at this vantage: `failure_threshold` consecutive failures, or the ratio rule."""
        return self.consecutive_fail >= failure_threshold or self.ratio_since is not None


def accepts(state: DetectorState, report: HealthReport) -> bool:
    """Whether a report names a configured cluster and probe."""
    return report.probe in state.probes.get(report.cluster, {})


def steady(state: DetectorState, report: HealthReport) -> bool:
    """A report that cannot change anything, so the cluster need not be evaluated (an evaluation looks
    at every vantage's tracks of the cluster: with many vantages, the cost of each report):
    - passing, the cluster healthy, this track already past its success threshold, no latency limit in
      question: what keeps a large healthy fleet cheap;
    - failing, the cluster failed (sticky), this track already past its failure threshold: the vantage
      was already counted failing, and what time changes (freshness, holds) the next tick evaluates.
    """
    cluster = state.clusters[report.cluster]
    if state.frozen:
        return False
    track = cluster.tracks[(report.probe, report.vantage)]
    if not report.ok:
        return cluster.status == "failed" and track.consecutive_fail > state.settings.failure_threshold
    return (
        cluster.status == "healthy"
        and track.consecutive_ok > state.settings.success_threshold
        and track.ratio_since is None
        and state.probes[report.cluster][report.probe].latency_limit_ms is None
    )


def record(state: DetectorState, report: HealthReport, now: float) -> bool | None:
    """Apply a report to its track. None: ignored (unknown, duplicate, superseded); otherwise whether a
    fail-impact probe started or stopped failing at this vantage."""
    if not accepts(state, report):
        return None
    vantage = report.vantage
    current_boot = state.boots.get(vantage)
    if current_boot != report.boot_id:
        retired = state.retired_boots.setdefault(vantage, [])
        if report.boot_id in retired:
            return None  # a late report from a prober boot that a newer one superseded
        if current_boot is not None:
            retired.append(current_boot)
            del retired[:-8]  # bounded memory; eight restarts back is plenty to catch stragglers
        state.boots[vantage] = report.boot_id
        state.all_due = True  # every cluster's tracks of the older boot stop counting: a full tick
    state.vantages[vantage] = now
    cluster = state.clusters[report.cluster]
    key = (report.probe, vantage)
    counts_for_guard = state.probes[report.cluster][report.probe].impact == "fail"
    track = cluster.tracks.get(key)
    if track is None or track.boot_id != report.boot_id:
        if track is not None and track.consecutive_fail and counts_for_guard:
            _count_failing(state, vantage, report.cluster, -1)
        track = Track(report.boot_id, -1, now, report.ok)  # counts never carry across boots
        cluster.tracks[key] = track
    if report.seq <= track.seq:
        return None  # duplicate or out of order within one boot
    was_failing = track.consecutive_fail > 0
    track.seq = report.seq
    track.received_at = now
    track.ok = report.ok
    track.latency_ms = report.latency_ms
    track.detail = report.detail
    if report.ok:
        track.crossed_at = None
        if track.consecutive_ok == 0:
            track.ok_since = now
        track.consecutive_ok += 1
        track.consecutive_fail = 0
        track.fail_started_at = None
    else:
        if track.consecutive_fail == 0:
            track.fail_started_at = now
        track.consecutive_fail += 1
        track.consecutive_ok = 0
        track.ok_since = None
        if track.consecutive_fail == state.settings.failure_threshold:
            track.crossed_at = now
    _slide(state, track, report.ok, now)
    if counts_for_guard and was_failing == report.ok:  # started or stopped failing
        _count_failing(state, vantage, report.cluster, -1 if report.ok else 1)
        return True
    return False


def _slide(state: DetectorState, track: Track, ok: bool, now: float) -> None:
    """Add this round to the track's failure-ratio window, drop the rounds older than the window, and
    note whether the failed share is at the threshold (`ratio_since`).

    Rounds are counted by receipt time over the last `window` up to this vantage's latest report: a
    track that stops reporting goes stale long before its window matters. The window also keeps at most
    4 x window / interval rounds, so a prober publishing far faster than the interval (a bug, or a
    leaked prober credential) cannot grow the detector's memory."""
    s = state.settings
    if s.failure_ratio is None:
        return
    window = track.window
    window.append((now, ok))
    if not ok:
        track.window_failed += 1
    cap = max(s.failure_ratio_min_rounds, 4 * math.ceil(s.failure_ratio_window_s / s.interval_s))
    while window and (now - window[0][0] >= s.failure_ratio_window_s or len(window) > cap):
        if not window.popleft()[1]:
            track.window_failed -= 1
    # a quotient, not a product: 3 / 10 rounds exactly as 0.3 does, while 0.3 * 10 is above 3
    over = len(window) >= s.failure_ratio_min_rounds and track.window_failed / len(window) >= s.failure_ratio
    if not over:
        track.ratio_since = None
    elif track.ratio_since is None:
        track.ratio_since = now


def _count_failing(state: DetectorState, vantage: str, cluster: str, delta: int) -> None:
    """Keep `failing_at` in step with the tracks: +1 when a probe starts failing, -1 when it stops."""
    per_cluster = state.failing_at.setdefault(vantage, {})
    count = per_cluster.get(cluster, 0) + delta
    if count > 0:
        per_cluster[cluster] = count
    else:
        per_cluster.pop(cluster, None)
