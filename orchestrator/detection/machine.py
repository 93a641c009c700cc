"""The detector: a pure state machine from health reports to cluster state changes.

`transition(state, input, now) -> (state, outputs)` does no I/O and reads no clock: the time is an
argument, which is what makes replay tests, property tests and dry-runs possible (DESIGN §2.2, §6).
`state` is owned by the caller and updated in place; it is also returned for convenience. Outputs are
cluster `Transition`s and system `Signal`s (observer guard, suspect vantages, flapping).

Rules (DESIGN §6):
- per (cluster, probe, vantage) consecutive failure/success counts within one prober boot; a newer boot
  of a vantage supersedes the older one and its counts do not carry over;
- intermittent failure (`failure_ratio`): a vantage also sees a probe failing while at least the
  threshold share of its rounds in the window failed (with at least `min_rounds` of them), so an app
  down half the time in short bursts, which never reaches the consecutive threshold, is seen;
- a vantage is fresh while its last report is younger than `stale_after`; silence counts neither up nor
  down, and no fresh vantage makes a cluster `unknown`, never `failed`;
- `failed` needs `quorum` fresh vantages seeing a `fail`-impact probe failing for `failure_threshold`
  rounds (`majority`: of the listed `detection.vantages`, at least 2 once 2 are listed); fewer, a
  failing `degrade`-impact probe, or a latency limit exceeded give `degraded`;
- `failed` is sticky, through silence too: it ends only by recovering (quorum of fresh vantages past
  `success_threshold` and under the failure ratio, none failing, held for `recovery_hold`), which emits
  `cluster.recovered`; a cluster failed by the ratio rule recovers like a flapping one;
  `unknown -> healthy` emits nothing unless the last known state was failed or degraded;
- suspect vantage: one that sees more than `max_failed_fraction` of all clusters failing while other
  fresh vantages do not is the one that is cut off, and its reports count as stale;
- observer guard: failures whose onsets (the round a quorum first saw them fail) lie within 2 intervals
  of each other count as together. When they exceed `max_failed_fraction` of all clusters, no
  `cluster.failed` is emitted: an `observer.suspect` signal is, automation freezes, and the failures are
  held as suppressed until the picture clears (`observer.clear`, then they are evaluated again) or a
  human resumes (they are then accepted). With `failure_threshold >= 3` every onset in the window is
  already known when the first cluster crosses its threshold, so the guard adds no latency;
- flapping: more than `flap.max_transitions` state changes within `flap.window` emit `cluster.flapping`
  (a page) and double the recovery hold for that cluster, keeping it drained until it is stable.

This module holds the state and input types and `transition`, which routes an input through the
helpers: `tracks` (recording reports), `observer` (suspect vantages, observer guard), `evaluation`
(quorum, freshness, deciding a status), `recovery` (recovery hold, flapping), `outputs` (what is
emitted), `snapshots` (what survives a restart) and `schedule` (which clusters a tick must evaluate).
Costs per input do not grow with the fleet (issue 19): a report evaluates its own cluster at most and
keeps the suspect-vantage counts exact in O(its tracks); a tick evaluates only the clusters whose
decision time alone can change. A test runs random inputs through this and through the
evaluate-everything detector it replaced and compares every output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.core.config import Config
from orchestrator.core.models import ClusterStatus, HealthReport
from orchestrator.detection.evaluation import evaluate, evaluate_all, evaluate_due, known_vantages
from orchestrator.detection.observer import (
    maybe_clear,
    note_contradictions,
    recount_failing,
    suppressed_clusters,
    update_suspects,
)
from orchestrator.detection.outputs import Output, Signal
from orchestrator.detection.tracks import Track, record, steady

Impact = Literal["fail", "degrade"]


@dataclass(frozen=True)
class Settings:
    failure_threshold: int = 3
    success_threshold: int = 3
    quorum: int | Literal["majority"] = "majority"
    stale_after_s: float = 5.0
    recovery_hold_s: float = 30.0
    interval_s: float = 1.0
    max_failed_fraction: float = 0.5
    flap_max_transitions: int = 4
    flap_window_s: float = 600.0
    known_vantage_window_s: float = 3600.0
    failure_ratio: float | None = 0.5
    """`detection.failure_ratio.threshold`: a vantage also sees a probe failing when at least this share
    of its rounds in the window failed (intermittent failure, DESIGN §6); None: the rule is off."""
    failure_ratio_window_s: float = 20.0
    failure_ratio_min_rounds: int = 10
    vantages: tuple[str, ...] | None = None
    """`detection.vantages`: the vantages whose reports count; `majority` is over this list (DESIGN
    §12). The service drops reports from other vantages before they reach the machine."""

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        d = config.detection
        ratio = d.failure_ratio
        return cls(
            failure_threshold=d.failure_threshold,
            success_threshold=d.success_threshold,
            quorum=d.quorum,
            stale_after_s=d.stale_after_s,
            recovery_hold_s=d.recovery_hold_s,
            interval_s=config.probing.interval_s,
            max_failed_fraction=d.max_failed_fraction,
            flap_max_transitions=d.flap.max_transitions,
            flap_window_s=d.flap.window_s,
            vantages=tuple(config.counted_vantages),
            failure_ratio=ratio.threshold if ratio is not None else None,
            failure_ratio_window_s=ratio.window_s if ratio is not None else cls.failure_ratio_window_s,
            failure_ratio_min_rounds=ratio.min_rounds if ratio is not None else cls.failure_ratio_min_rounds,
        )

    @property
    def replay_window_s(self) -> float:
        """How much health history a restarted detector needs to rebuild its counts and failure-ratio
        windows (DESIGN §6)."""
        ratio_window = self.failure_ratio_window_s if self.failure_ratio is not None else 0.0
        return max(
            self.stale_after_s, self.failure_threshold * self.interval_s, self.recovery_hold_s, ratio_window
        )


@dataclass(frozen=True)
class ProbeSpec:
    """What the detector needs to know of a configured probe."""

    impact: Impact = "fail"
    latency_limit_ms: float | None = None


@dataclass
class ClusterState:
    name: str
    status: ClusterStatus = "unknown"
    since: float = 0.0
    last_known: ClusterStatus = "unknown"
    """The last status other than unknown: decides whether silence ending is a recovery."""
    healthy_since: float | None = None
    onset: float | None = None
    """When a quorum of vantages first saw the current failure: the observer guard groups by it."""
    suppressed: bool = False
    """A failure held back by the observer guard."""
    history: list[float] = field(default_factory=list)
    """Times of recent state changes, for flap damping."""
    flapping: bool = False
    tracks: dict[tuple[str, str], Track] = field(default_factory=dict)
    """(probe, vantage) -> Track"""
    due_at: float = math.inf
    """When time alone can next change this cluster's decision: its live entry in `DetectorState.due`."""
    quiet: bool = False
    """Healthy with no counted track failing or slow at the last evaluation: a steady passing report
    cannot change it (`schedule`)."""


@dataclass
class DetectorState:
    settings: Settings
    probes: dict[str, dict[str, ProbeSpec]]
    """cluster -> probe -> spec; reports for anything else are ignored."""
    clusters: dict[str, ClusterState] = field(default_factory=dict)
    vantages: dict[str, float] = field(default_factory=dict)
    """vantage -> time of its last report: the known vantages `majority` counts over."""
    boots: dict[str, str] = field(default_factory=dict)
    retired_boots: dict[str, list[str]] = field(default_factory=dict)
    failing_at: dict[str, dict[str, int]] = field(default_factory=dict)
    """vantage -> cluster -> number of fail-impact probes failing there (suspect-vantage detection)."""
    suspects: set[str] = field(default_factory=set)
    frozen: bool = False
    """The observer guard holds: no cluster.failed is emitted."""
    accepted_before: float = float("-inf")
    """A human resumed: failures with an onset before this are accepted despite the guard."""
    cleared_at: float = float("-inf")
    """When the guard last cleared: a suppressed failure needs a failing report after it to count."""
    contradictions: dict[tuple[str, str], int] = field(default_factory=dict)
    """(suspect, witness) -> how many clusters the suspect sees failing that the witness contradicts,
    kept exact report by report (`observer.note_contradictions`)."""
    contradiction_pairs: dict[str, frozenset[tuple[str, str]]] = field(default_factory=dict)
    """cluster -> the (suspect, witness) pairs it counts in: what a report on it may change."""
    due: list[tuple[float, str]] = field(default_factory=list)
    """Heap of (deadline, cluster): when time alone can change a cluster's decision (`schedule`)."""
    pending: set[str] = field(default_factory=set)
    """Clusters a report touched without evaluating them: the next tick evaluates them."""
    all_due: bool = True
    """The next tick evaluates every cluster (start, restored state, a prober's new boot)."""
    known_count: int = -1
    """The number of vantages `majority` counted over at the last tick: a change re-evaluates all."""
    order: dict[str, int] = field(default_factory=dict)
    """cluster -> its position in `clusters`: a tick evaluates due clusters in that order."""
    generation: int = 0
    failing_count: int = 0
    onsets: list[float] = field(default_factory=list)
    """Every cluster's failure onset, sorted: how many started failing together is two bisections."""
    """Clusters whose failure onset is after `accepted_before`: what the observer guard counts, kept
    exact at every onset change (`observer.set_onset`) so a frozen guard does not scan the fleet on
    every report to see whether it may clear."""
    """Bumped whenever a cluster's status changes: what a view of every status is cached on."""

    @classmethod
    def from_config(cls, config: Config) -> DetectorState:
        probes: dict[str, dict[str, ProbeSpec]] = {}
        for cluster in config.clusters:
            probes[cluster.name] = {}
            for probe in cluster.probes:
                limit = probe.http.latency_limit_s if probe.http else None
                probes[cluster.name][probe.name] = ProbeSpec(
                    impact=probe.effective_impact,
                    latency_limit_ms=limit * 1000 if limit is not None else None,
                )
        state = cls(Settings.from_config(config), probes)
        for name in probes:
            state.clusters[name] = ClusterState(name)
        return state


@dataclass(frozen=True)
class Tick:
    """Time passing with no report: staleness and recovery holds are evaluated."""


@dataclass(frozen=True)
class Resume:
    """A human resumed automation: the observer guard's current suppressions are accepted."""

    actor: str = "human"


def transition(
    state: DetectorState, item: HealthReport | Tick | Resume, now: float
) -> tuple[DetectorState, list[Output]]:
    out: list[Output] = []
    if isinstance(item, HealthReport):
        recorded = record(state, item, now)
        if recorded is None:
            return state, out
        note_contradictions(state, item.cluster)
        # suspects depend on failing counts (changed here) and freshness (re-checked on every tick)
        cluster = state.clusters[item.cluster]
        if (recorded or state.suspects) and update_suspects(state, now, out):
            evaluate_all(state, now, out)
        elif not steady(state, item):
            evaluate(state, cluster, now, out)
        elif not cluster.quiet:
            state.pending.add(item.cluster)  # decided at the next tick, as a full tick would
    elif isinstance(item, Resume):
        if state.frozen:
            state.frozen = False
            state.accepted_before = now
            recount_failing(state)
            out.append(
                Signal(
                    "automation.resumed",
                    f"{item.actor} resumed automation; suppressed failures are accepted",
                    {"actor": item.actor, "suppressed": suppressed_clusters(state)},
                    now,
                )
            )
        evaluate_all(state, now, out)
    else:
        changed = update_suspects(state, now, out)
        known = known_vantages(state, now)
        if changed or state.all_due or known != state.known_count:
            state.known_count = known
            evaluate_all(state, now, out)
        else:
            evaluate_due(state, now, out)
    if state.frozen and maybe_clear(state, now, out):
        evaluate_all(state, now, out)
    return state, out
