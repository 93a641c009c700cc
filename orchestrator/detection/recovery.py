"""Changing a cluster's status: the recovery hold and flap damping (DESIGN §6).

`move` is the one place a status changes and a `Transition` is emitted, so it is also where changes are
counted for flapping; a flapping cluster's recovery hold is doubled in `maybe_recover`. A cluster failed
by the failure-ratio rule is flapping too, only below the probe's resolution of states: it recovers the
same way (`mark_intermittent`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.core.models import ClusterStatus
from orchestrator.detection.observer import set_onset
from orchestrator.detection.outputs import Output, Signal, Transition

if TYPE_CHECKING:
    from orchestrator.detection.machine import ClusterState, DetectorState


def maybe_recover(
    state: DetectorState,
    cluster: ClusterState,
    healthy_vantages: list[str],
    bad: bool,
    quorum: int,
    evidence: dict[str, Any],
    now: float,
    out: list[Output],
    ratio_held: bool = False,
) -> None:
    """Recover after `recovery_hold` (doubled while flapping) with a quorum of healthy vantages. `bad`
    (a probe past its failure threshold or a latency limit somewhere) restarts the hold; `ratio_held`
    (a probe failing only by `failure_ratio`: its window still holds too many failed rounds) lets the
    hold run on passing streaks but keeps the cluster where it is until the ratio is back under."""
    s = state.settings
    if bad or len(healthy_vantages) < quorum:
        cluster.healthy_since = None
        return
    if cluster.status == "healthy":
        return
    needs_hold = cluster.status in ("failed", "degraded") or cluster.last_known in ("failed", "degraded")
    if not needs_hold:
        move(
            state,
            cluster,
            "healthy",
            f"{len(healthy_vantages)} vantage(s) see every probe passing",
            evidence,
            now,
            out,
        )
        return
    if cluster.healthy_since is None:
        cluster.healthy_since = now
    hold = s.recovery_hold_s * (2 if cluster.flapping else 1)
    if now - cluster.healthy_since < hold or ratio_held:
        return
    evidence = {**evidence, "healthy_vantages": sorted(healthy_vantages), "held_s": hold}
    reason = f"{len(healthy_vantages)} vantage(s) see every probe passing for {hold:g}s"
    if cluster.flapping:
        reason += " (doubled hold: the cluster was flapping or failing intermittently)"
        cluster.flapping = False
    move(state, cluster, "healthy", reason, evidence, now, out, recovered=True)


def mark_intermittent(cluster: ClusterState) -> None:
    """A cluster just failed by the failure-ratio rule (DESIGN §6): it recovers like a flapping one, after
    twice `recovery_hold` (and, as every recovery, with the ratio back under the threshold at every fresh
    vantage). Its transitions are not counted twice and no `cluster.flapping` page is added: the
    `cluster.failed` event already says it is intermittent. The flag is persisted with the state, so a
    restarted detector keeps the doubled hold."""
    cluster.flapping = True


def move(
    state: DetectorState,
    cluster: ClusterState,
    to: ClusterStatus,
    reason: str,
    evidence: dict[str, Any],
    now: float,
    out: list[Output],
    recovered: bool = False,
) -> None:
    if cluster.status == to:
        return
    s = state.settings
    from_ = cluster.status
    cluster.status = to
    state.generation += 1
    cluster.since = now
    if to != "unknown":
        cluster.last_known = to
    if to == "healthy":
        cluster.healthy_since = None
        set_onset(state, cluster, None)
    kind = ("cluster.recovered" if recovered else None) if to == "healthy" else f"cluster.{to}"
    out.append(Transition(cluster.name, from_, to, kind, reason, evidence, now))
    if kind is None:
        return
    cluster.history = [t for t in cluster.history if now - t <= s.flap_window_s]
    cluster.history.append(now)
    if len(cluster.history) > s.flap_max_transitions and not cluster.flapping:
        cluster.flapping = True
        out.append(
            Signal(
                "cluster.flapping",
                f"{cluster.name} changed state {len(cluster.history)} times in "
                f"{s.flap_window_s:g}s (limit {s.flap_max_transitions}): it stays drained until "
                f"stable for {2 * s.recovery_hold_s:g}s",
                {"cluster": cluster.name, "transitions": len(cluster.history)},
                now,
            )
        )
