"""Deciding a cluster's status from its tracks: freshness, quorum and the failed/degraded/unknown rules.

This is the core of `transition`: given the recorded tracks it works out which vantages are fresh, how
many make a quorum, and which status the cluster should be in, handing recoveries to `recovery` and
held-back failures to the observer guard.
"""

from __future__ import annotations

from bisect import insort
from typing import TYPE_CHECKING, Any

from orchestrator.detection.observer import guard_holds
from orchestrator.detection.outputs import Output
from orchestrator.detection.recovery import maybe_recover, move
from orchestrator.detection.tracks import Track

if TYPE_CHECKING:
    from orchestrator.detection.machine import ClusterState, DetectorState, ProbeSpec, Settings


def evaluate_all(state: DetectorState, now: float, out: list[Output]) -> None:
    for cluster in state.clusters.values():
        evaluate(state, cluster, now, out)


def required_quorum(settings: Settings, known_vantages: int) -> int:
    """`majority` of the listed (or known) vantages, at least 2 once two count; or the configured integer."""
    if settings.quorum != "majority":
        return int(settings.quorum)
    if known_vantages <= 1:
        return 1
    return max(2, known_vantages // 2 + 1)


def known_vantages(state: DetectorState, now: float) -> int:
    """How many vantages `majority` counts over: the configured list (DESIGN §12), or, for a detector
    built without one (tests of the pure machine), the vantages seen in the last hour."""
    if state.settings.vantages is not None:
        return len(state.settings.vantages)
    window = state.settings.known_vantage_window_s
    return sum(1 for seen in state.vantages.values() if now - seen <= window)


def evaluate(state: DetectorState, cluster: ClusterState, now: float, out: list[Output]) -> None:
    s = state.settings
    specs = state.probes[cluster.name]
    fresh: dict[str, list[tuple[str, Track]]] = {}
    for (probe, vantage), track in cluster.tracks.items():
        if state.boots.get(vantage) != track.boot_id or vantage in state.suspects:
            continue
        if now - track.received_at <= s.stale_after_s:
            fresh.setdefault(vantage, []).append((probe, track))
    quorum = required_quorum(s, known_vantages(state, now))

    failing: dict[str, dict[str, Any]] = {}
    degrading: dict[str, dict[str, Any]] = {}
    onsets: list[float] = []
    healthy_vantages = []
    for vantage, tracks in fresh.items():
        vantage_ok = True
        vantage_onset: float | None = None
        for probe, track in tracks:
            spec = specs[probe]
            if spec.impact == "fail" and track.fail_started_at is not None:
                vantage_onset = min(vantage_onset or track.fail_started_at, track.fail_started_at)
            if track.consecutive_fail >= s.failure_threshold:
                target = failing if spec.impact == "fail" else degrading
                target.setdefault(vantage, {})[probe] = _evidence(track)
                vantage_ok = False
            elif spec.latency_limit_ms is not None and track.ok and track.latency_ms > spec.latency_limit_ms:
                degrading.setdefault(vantage, {})[probe] = {
                    **_evidence(track),
                    "latency_limit_ms": spec.latency_limit_ms,
                }
            if track.consecutive_ok < s.success_threshold:
                vantage_ok = False
        if vantage_onset is not None:
            insort(onsets, vantage_onset)
        # a vantage must have reported every probe of this cluster to vouch for its health
        if vantage_ok and len(tracks) == len(specs):
            healthy_vantages.append(vantage)
    if len(onsets) >= quorum:
        if cluster.onset is None:
            cluster.onset = onsets[quorum - 1]
    elif cluster.status != "failed":
        cluster.onset = None

    evidence: dict[str, Any] = {"quorum": quorum, "fresh_vantages": sorted(fresh)}
    if state.suspects:
        evidence["suspect_vantages"] = sorted(state.suspects)
    if failing:
        evidence["failing"] = failing
    if degrading:
        evidence["degraded"] = degrading

    if len(failing) >= quorum:
        cluster.healthy_since = None
        if cluster.status == "failed":
            return
        if guard_holds(state, cluster, now, out):
            return
        if cluster.suppressed and not any(
            track.received_at > state.cleared_at
            for vantage in failing
            for probe, track in fresh[vantage]
            if track.consecutive_fail >= s.failure_threshold
        ):
            return  # held back while frozen: confirm with a report made after the picture cleared
        cluster.suppressed = False
        reason = (
            f"{len(failing)} of {len(fresh)} fresh vantage(s) see a failing probe "
            f"(quorum {quorum}, threshold {s.failure_threshold})"
        )
        move(state, cluster, "failed", reason, evidence, now, out)
        return
    cluster.suppressed = False

    if not fresh:
        cluster.healthy_since = None
        if cluster.status in ("unknown", "failed"):
            # failed was decided on evidence: silence neither confirms nor clears it, so the drain stays
            return
        move(
            state,
            cluster,
            "unknown",
            f"no fresh report for {s.stale_after_s:g}s from any vantage",
            evidence,
            now,
            out,
        )
        return

    if cluster.status == "failed" or (cluster.status == "unknown" and cluster.last_known == "failed"):
        # sticky until a full recovery: a partial improvement is not a reason to restore traffic
        maybe_recover(
            state, cluster, healthy_vantages, bool(failing or degrading), quorum, evidence, now, out
        )
        return

    if failing and not degrading and not _contradicted(cluster, failing, fresh, specs):
        # below quorum, but the other vantages have not reported since: one round's reports are still in
        # flight. Deciding `degraded` now would page for a failure that becomes `failed` a moment later.
        return
    if failing or degrading:
        cluster.healthy_since = None
        parts = []
        if failing:
            parts.append(f"{len(failing)} vantage(s) see failure, below quorum {quorum}")
        if degrading:
            parts.append("a degrade-impact probe fails or a latency limit is exceeded")
        move(state, cluster, "degraded", "; ".join(parts), evidence, now, out)
        return

    maybe_recover(state, cluster, healthy_vantages, False, quorum, evidence, now, out)


def _contradicted(
    cluster: ClusterState,
    failing: dict[str, Any],
    fresh: dict[str, list[tuple[str, Track]]],
    specs: dict[str, ProbeSpec],
) -> bool:
    """Whether a below-quorum failure is a disagreement (degraded) and not a round whose reports are still
    in flight: a fresh vantage that does not see the failure has reported since the failing ones crossed
    their threshold, or there is no other fresh vantage to wait for."""
    crossed = [
        track.crossed_at
        for vantage in failing
        for probe, track in fresh[vantage]
        if track.crossed_at is not None and specs[probe].impact == "fail"
    ]
    if not crossed:
        return True
    latest = max(crossed)
    others = [
        track for vantage, tracks in fresh.items() if vantage not in failing for _probe, track in tracks
    ]
    # nobody else fresh: no report is in flight, the disagreement (with silence) is all there is;
    # otherwise wait, at most one interval, until another vantage has reported since the crossing
    return not others or any(track.received_at > latest for track in others)


def _evidence(track: Track) -> dict[str, Any]:
    return {
        "consecutive_fail": track.consecutive_fail,
        "ok": track.ok,
        "detail": track.detail,
        "latency_ms": track.latency_ms,
        "seq": track.seq,
    }
