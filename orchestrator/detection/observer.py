"""The defences against a faulty observer: suspect vantages and the observer guard (DESIGN §6).

A vantage that sees most clusters failing while the others see them pass is the one cut off, and its
reports count as stale; when too many clusters start failing together, the observer itself is suspected
and `cluster.failed` is held back until the picture clears or a human resumes.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from typing import TYPE_CHECKING

from orchestrator.detection.outputs import Output, Signal

if TYPE_CHECKING:
    from orchestrator.detection.machine import ClusterState, DetectorState


def is_fresh_vantage(state: DetectorState, vantage: str, now: float) -> bool:
    return now - state.vantages.get(vantage, float("-inf")) <= state.settings.stale_after_s


def update_suspects(state: DetectorState, now: float, out: list[Output]) -> bool:
    """Recompute suspect vantages; True (and signals) when the set changed.

    A vantage is suspect when it sees more than `max_failed_fraction` of all clusters failing and another
    fresh vantage contradicts it: that one reported most of those clusters passing *after* the suspect's
    failures began. Comparing times, not just counts, keeps the verdict independent of the order in
    which the vantages' reports of one round arrive.

    This runs on every report while a vantage is suspect, so it reads counts kept up to date report by
    report (`note_contradictions`): O(vantages²), whatever the number of clusters. Re-counting every
    failing cluster here made one cut-off vantage cost 272 µs a report at 1,000 clusters (issue 19).
    """
    total = len(state.clusters)
    limit = state.settings.max_failed_fraction * total
    fresh = [v for v in state.vantages if is_fresh_vantage(state, v, now)]
    over = [v for v in fresh if len(state.failing_at.get(v, ())) > limit]
    suspects = set()
    if over and len(over) < len(fresh):
        for v in over:
            failing = len(state.failing_at.get(v, ()))
            if any(state.contradictions.get((v, w), 0) * 2 > failing for w in fresh if w not in over):
                suspects.add(v)
    if suspects == state.suspects:
        return False
    for v in sorted(suspects - state.suspects):
        out.append(
            Signal(
                "vantage.suspect",
                f"vantage {v} sees {len(state.failing_at.get(v, ()))} of "
                f"{total} clusters failing while others see them pass; its reports count as stale",
                {"vantage": v, "failing": sorted(state.failing_at.get(v, ()))},
                now,
            )
        )
    for v in sorted(state.suspects - suspects):
        out.append(Signal("vantage.clear", f"vantage {v} agrees with the others again", {"vantage": v}, now))
    state.suspects = suspects
    return True


def note_contradictions(state: DetectorState, name: str) -> None:
    """Keep `state.contradictions` in step after a report on cluster `name`.

    (suspect, witness) counts the clusters the suspect sees failing (`failing_at`) that the witness
    contradicts: for some probe, the witness has been seeing it pass *during* the suspect's failing
    streak (passing since before the suspect's latest failure, and reported since its streak began).
    Overlapping streaks are a disagreement; reports of one round still in flight (everyone failing, or
    everyone recovering, in turn) never overlap that way. Whether a cluster counts depends only on its
    own tracks and on `failing_at` for it, and both change only when one of its reports is recorded, so
    re-checking this one cluster keeps every count exact: O(tracks of the cluster) per report.
    """
    cluster = state.clusters[name]
    pairs: set[tuple[str, str]] = set()
    tracks = cluster.tracks
    for suspect, failing in state.failing_at.items():
        if name not in failing:
            continue
        for (probe, vantage), track in tracks.items():
            if vantage != suspect or track.fail_started_at is None:
                continue
            for (seen_probe, witness), seen in tracks.items():
                if (
                    seen_probe == probe
                    and witness != suspect
                    and seen.ok
                    and seen.ok_since is not None
                    and seen.ok_since <= track.received_at
                    and seen.received_at >= track.fail_started_at
                ):
                    pairs.add((suspect, witness))
    before = state.contradiction_pairs.get(name, frozenset())
    if pairs == before:
        return
    counts = state.contradictions
    for pair in before - pairs:
        counts[pair] -= 1
        if not counts[pair]:
            del counts[pair]
    for pair in pairs - before:
        counts[pair] = counts.get(pair, 0) + 1
    if pairs:
        state.contradiction_pairs[name] = frozenset(pairs)
    else:
        del state.contradiction_pairs[name]


def guard_holds(state: DetectorState, cluster: ClusterState, now: float, out: list[Output]) -> bool:
    """The observer guard: True when this failure must be held back (and says so once)."""
    s = state.settings
    onset = cluster.onset if cluster.onset is not None else now
    if onset <= state.accepted_before:
        return False
    if state.frozen:
        cluster.suppressed = True
        return True
    window = 2 * s.interval_s
    total = len(state.clusters)
    # how many onsets lie within the window of this one: O(log n), not a scan per failing cluster
    near = bisect_right(state.onsets, onset + window) - bisect_left(state.onsets, onset - window)
    if near <= s.max_failed_fraction * total:
        return False
    together = sorted(
        c.name for c in state.clusters.values() if c.onset is not None and abs(c.onset - onset) <= window
    )
    cluster.suppressed = True
    state.frozen = True
    out.append(
        Signal(
            "observer.suspect",
            f"{len(together)} of {total} clusters started failing within {window:g}s of each "
            f"other (limit {s.max_failed_fraction:.0%}): suspecting the observer, automation "
            "frozen until the picture clears or a human resumes",
            {
                "clusters": together,
                "fraction": round(len(together) / total, 3),
                "max_failed_fraction": s.max_failed_fraction,
            },
            now,
        )
    )
    return True


def _counts(state: DetectorState, onset: float | None) -> bool:
    return onset is not None and onset > state.accepted_before


def set_onset(state: DetectorState, cluster: ClusterState, onset: float | None) -> None:
    """Every change of a cluster's failure onset goes through here: it keeps `failing_count`."""
    state.failing_count += _counts(state, onset) - _counts(state, cluster.onset)
    if cluster.onset is not None:
        del state.onsets[bisect_left(state.onsets, cluster.onset)]
    if onset is not None:
        insort(state.onsets, onset)
    cluster.onset = onset


def recount_failing(state: DetectorState) -> None:
    """After `accepted_before` moved (a resume, a restore): count again, once."""
    state.failing_count = sum(_counts(state, c.onset) for c in state.clusters.values())
    state.onsets = sorted(c.onset for c in state.clusters.values() if c.onset is not None)


def maybe_clear(state: DetectorState, now: float, out: list[Output]) -> bool:
    """Unfreeze when few enough clusters are failing; suppressed failures are then evaluated again.

    True when it unfroze: the caller (`transition`) then evaluates every cluster again; that call is not
    made here so that the guard does not import the evaluation, which imports the guard."""
    if state.failing_count > state.settings.max_failed_fraction * len(state.clusters):
        return False  # checked per report while frozen: O(1), the list is built only to clear
    failing = [c.name for c in state.clusters.values() if _counts(state, c.onset)]
    state.frozen = False
    state.cleared_at = now
    suppressed = suppressed_clusters(state)
    out.append(
        Signal(
            "observer.clear",
            f"{len(failing)} of {len(state.clusters)} clusters failing: within "
            "limits again; suppressed failures are evaluated again",
            {"failing": failing, "suppressed": suppressed},
            now,
        )
    )
    return True


def suppressed_clusters(state: DetectorState) -> list[str]:
    return sorted(c.name for c in state.clusters.values() if c.suppressed)
