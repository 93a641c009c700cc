"""Deciding a cluster's status from its tracks: freshness, quorum and the failed/degraded/unknown rules.

This is the core of `transition`: given the recorded tracks it works out which vantages are fresh, how
many make a quorum, and which status the cluster should be in, handing recoveries to `recovery` and
held-back failures to the observer guard.
"""

from __future__ import annotations

from bisect import insort
from typing import TYPE_CHECKING, Any

from orchestrator.detection.observer import guard_holds, set_onset
from orchestrator.detection.outputs import Output, failure_marks
from orchestrator.detection.recovery import mark_intermittent, maybe_recover, move
from orchestrator.detection.schedule import due_clusters, schedule
from orchestrator.detection.tracks import Track

if TYPE_CHECKING:
    from orchestrator.detection.machine import ClusterState, DetectorState, ProbeSpec, Settings


def evaluate_all(state: DetectorState, now: float, out: list[Output]) -> None:
    state.pending = set()
    state.all_due = False
    for cluster in state.clusters.values():
        evaluate(state, cluster, now, out)


def evaluate_due(state: DetectorState, now: float, out: list[Output]) -> None:
    """A tick: evaluate only the clusters whose decision time can have changed (`schedule`)."""
    for cluster in due_clusters(state, now):
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
    """Decide the cluster's status now, then note when time alone can next change it."""
    _decide(state, cluster, now, out)
    schedule(state, cluster, now)


def _decide(state: DetectorState, cluster: ClusterState, now: float, out: list[Output]) -> None:
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
    streaking = 0  # vantages failing a fail-impact probe by consecutive count (not only by the ratio)
    bad = False  # a probe past its failure threshold or latency limit: resets a recovery hold
    ratio_held = False  # a probe failing by the ratio alone: holds a recovery back, not its hold timer
    for vantage, tracks in fresh.items():
        vantage_ok = True
        vantage_onset: float | None = None
        vantage_streaks = False
        for probe, track in tracks:
            spec = specs[probe]
            # the onset of an intermittent failure is the round its ratio reached the threshold
            started = track.fail_started_at if track.fail_started_at is not None else track.ratio_since
            if spec.impact == "fail" and started is not None:
                vantage_onset = min(vantage_onset or started, started)
            if track.sees_failing(s.failure_threshold):
                target = failing if spec.impact == "fail" else degrading
                target.setdefault(vantage, {})[probe] = _evidence(track)
                if track.consecutive_fail >= s.failure_threshold:
                    vantage_streaks = vantage_streaks or spec.impact == "fail"
                    vantage_ok = False
                    bad = True
                else:
                    # passing streaks still count towards the hold; the ratio must be back under too
                    ratio_held = True
            elif spec.latency_limit_ms is not None and track.ok and track.latency_ms > spec.latency_limit_ms:
                bad = True
                degrading.setdefault(vantage, {})[probe] = {
                    **_evidence(track),
                    "latency_limit_ms": spec.latency_limit_ms,
                }
            if track.consecutive_ok < s.success_threshold:
                vantage_ok = False
        if vantage_onset is not None:
            insort(onsets, vantage_onset)
        streaking += vantage_streaks
        # a vantage must have reported every probe of this cluster to vouch for its health
        if vantage_ok and len(tracks) == len(specs):
            healthy_vantages.append(vantage)
    if len(onsets) >= quorum:
        if cluster.onset is None:
            set_onset(state, cluster, onsets[quorum - 1])
    elif cluster.status != "failed":
        set_onset(state, cluster, None)

    evidence: dict[str, Any] = {"quorum": quorum, "fresh_vantages": sorted(fresh)}
    if state.suspects:
        evidence["suspect_vantages"] = sorted(state.suspects)
    if failing:
        evidence["failing"] = failing
    if degrading:
        evidence["degraded"] = degrading

    # a failed cluster that only the ratio still sees failing is recovering: its passing streaks count
    # towards the hold below, and the ratio holds the recovery back until it is under the threshold
    if len(failing) >= quorum and (cluster.status != "failed" or streaking >= quorum):
        cluster.healthy_since = None
        if cluster.status == "failed":
            return
        if guard_holds(state, cluster, now, out):
            return
        if cluster.suppressed and not any(
            track.received_at > state.cleared_at
            for vantage in failing
            for probe, track in fresh[vantage]
            if track.sees_failing(s.failure_threshold)
        ):
            return  # held back while frozen: confirm with a report made after the picture cleared
        cluster.suppressed = False
        reason = (
            f"{len(failing)} of {len(fresh)} fresh vantage(s) see a failing probe "
            f"(quorum {quorum}, threshold {s.failure_threshold})"
        )
        intermittent = streaking < quorum  # the consecutive counts alone would not have failed it
        if intermittent:
            reason += (
                f"; intermittent: at least {s.failure_ratio:.0%} of the rounds in "
                f"{s.failure_ratio_window_s:g}s failed"
            )
        evidence.update(failure_marks(_counted(cluster, failing), quorum, now))
        move(state, cluster, "failed", reason, evidence, now, out)
        if intermittent:
            mark_intermittent(cluster)
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
            state, cluster, healthy_vantages, bad, quorum, evidence, now, out, ratio_held=ratio_held
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
        evidence.update(failure_marks(_counted(cluster, failing, degrading), quorum, now))
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
        crossing
        for vantage in failing
        for probe, track in fresh[vantage]
        for crossing in (track.crossed_at, track.ratio_since)
        if crossing is not None and specs[probe].impact == "fail"
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


def _counted(cluster: ClusterState, *by_vantage: dict[str, dict[str, Any]]) -> dict[str, list[Track]]:
    """vantage -> the tracks behind its evidence: what the recovery timeline is measured from."""
    counted: dict[str, list[Track]] = {}
    for evidence in by_vantage:
        for vantage, probes in evidence.items():
            counted.setdefault(vantage, []).extend(cluster.tracks[(p, vantage)] for p in probes)
    return counted


def _evidence(track: Track) -> dict[str, Any]:
    evidence: dict[str, Any] = {
        "consecutive_fail": track.consecutive_fail,
        "ok": track.ok,
        "detail": track.detail,
        "latency_ms": track.latency_ms,
        "seq": track.seq,
    }
    if track.ratio_since is not None:
        evidence["failure_ratio"] = {"failed": track.window_failed, "rounds": len(track.window)}
    return evidence
