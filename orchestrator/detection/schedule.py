"""Which clusters a tick must evaluate: those whose decision time alone can change (DESIGN §6, issue 19).

Evaluating every cluster on every tick (4 a second) cost 34 ms a tick at 10,000 clusters, on the event
loop. Between reports a cluster's decision depends on time in two ways only: a counted track going
stale (`received_at + stale_after`) and a recovery hold running out (`healthy_since + hold`). After each
evaluation the earliest of those is the cluster's deadline, kept in a heap; a tick evaluates only the
clusters whose deadline has come, plus the ones a report touched without evaluating (`pending`).

One decision reads other clusters: the observer guard, asked when a quorum sees a failure, counts
every cluster's onset. A failure it held back is re-decided every tick until it fails or clears, as
before (a handful of clusters: the guard has just cleared). Everything else that changes a decision is
an event that already evaluates every cluster: a suspect vantage appearing or clearing, the observer
guard clearing, a human resuming, a prober's new boot, or the number of known vantages that `majority`
counts over changing (`all_due`). A skipped evaluation is
one that would have changed nothing; the equivalence property test runs random report sequences
through this and through the evaluate-everything tick and compares every output.

A steady passing report (`tracks.steady`) on a *quiet* cluster (healthy, no counted track failing,
degraded or over a latency limit) cannot change its decision, so it is neither evaluated nor pending:
that keeps a healthy fleet at about one evaluation per cluster per `stale_after`.
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.detection.machine import ClusterState, DetectorState

_EARLY_S = 1e-6
"""Deadlines are taken this much early: `now - t > stale` and `now > t + stale` can differ in the last
bit, and an evaluation a microsecond early only finds nothing to do and schedules itself again."""


def schedule(state: DetectorState, cluster: ClusterState, now: float) -> None:
    """After an evaluation: note whether the cluster is quiet and when time alone can next change it."""
    s = state.settings
    specs = state.probes[cluster.name]
    quiet = cluster.status == "healthy"
    deadline = math.inf
    for (probe, vantage), track in cluster.tracks.items():
        if state.boots.get(vantage) != track.boot_id or vantage in state.suspects:
            continue
        if now - track.received_at > s.stale_after_s:
            continue  # stale already: only a report can bring it back
        deadline = min(deadline, track.received_at + s.stale_after_s)
        if quiet:
            limit = specs[probe].latency_limit_ms
            if track.sees_failing(s.failure_threshold) or (
                limit is not None and track.ok and track.latency_ms > limit
            ):
                quiet = False
    if cluster.healthy_since is not None:
        hold = s.recovery_hold_s * (2 if cluster.flapping else 1)
        deadline = min(deadline, cluster.healthy_since + hold)
    if cluster.suppressed and cluster.status != "failed" and not state.frozen:
        # held back after the guard cleared, waiting for a report that confirms it: each evaluation asks
        # the guard again, which counts the other clusters' onsets, so it is decided every tick
        deadline = now
    cluster.quiet = quiet
    deadline -= _EARLY_S
    if deadline < cluster.due_at:
        cluster.due_at = deadline
        heapq.heappush(state.due, (deadline, cluster.name))


def due_clusters(state: DetectorState, now: float) -> list[ClusterState]:
    """The clusters a tick at `now` must evaluate, in configuration order (the order a full evaluation
    takes, so outputs come out in the same order). Clears them from the heap and from `pending`."""
    names = state.pending
    state.pending = set()
    heap = state.due
    while heap and heap[0][0] <= now:
        at, name = heapq.heappop(heap)
        cluster = state.clusters.get(name)
        if cluster is not None and cluster.due_at == at:  # else superseded by an earlier deadline
            cluster.due_at = math.inf
            names.add(name)
    if len(heap) > 4 * len(state.clusters) + 64:
        _compact(state)
    if not names:
        return []
    order = state.order
    if len(order) != len(state.clusters):
        order.clear()
        order.update((name, i) for i, name in enumerate(state.clusters))
    return [state.clusters[name] for name in sorted(names, key=order.__getitem__)]


def _compact(state: DetectorState) -> None:
    """Drop superseded heap entries: bounded memory whatever the pattern of reports."""
    state.due = [(c.due_at, c.name) for c in state.clusters.values() if c.due_at != math.inf]
    heapq.heapify(state.due)
