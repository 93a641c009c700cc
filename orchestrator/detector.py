"""The detector: a pure state machine from health reports to cluster state changes.

`transition(state, input, now) -> (state, transitions)` does no I/O and reads no clock: the time is an
argument, which is what makes replay tests, property tests and dry-runs possible (DESIGN §2.2, §6).
`state` is owned by the caller and updated in place; it is also returned for convenience.

Rules (DESIGN §6):
- per (cluster, probe, vantage) we keep consecutive failure/success counts within one prober boot;
  a newer boot of the same vantage supersedes the older one and resets its counts;
- a vantage is fresh while its last report is younger than `stale_after`; silence counts neither up
  nor down, and no fresh vantage makes a cluster `unknown`, never `failed`;
- `failed` needs `quorum` fresh vantages seeing a `fail`-impact probe failing for `failure_threshold`
  rounds; fewer, a failing `degrade`-impact probe, or a latency limit exceeded give `degraded`;
- `failed` is sticky, through silence too: it only ends by recovering (quorum of fresh vantages past
  `success_threshold`, none failing, held for `recovery_hold`), which emits `cluster.recovered`;
- `unknown -> healthy` emits nothing, unless the last known state before the silence was failed or
  degraded (then the drain is still in force, and only `recovered` lifts it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.config import Config
from orchestrator.models import ClusterStatus, HealthReport

Impact = Literal["fail", "degrade"]


@dataclass(frozen=True)
class Settings:
    failure_threshold: int = 3
    success_threshold: int = 3
    quorum: int | Literal["majority"] = "majority"
    stale_after_s: float = 5.0
    recovery_hold_s: float = 30.0
    interval_s: float = 1.0
    known_vantage_window_s: float = 3600.0

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        d = config.detection
        return cls(
            failure_threshold=d.failure_threshold,
            success_threshold=d.success_threshold,
            quorum=d.quorum,
            stale_after_s=d.stale_after_s,
            recovery_hold_s=d.recovery_hold_s,
            interval_s=config.probing.interval_s,
        )


@dataclass(frozen=True)
class ProbeSpec:
    """What the detector needs to know of a configured probe."""

    impact: Impact = "fail"
    latency_limit_ms: float | None = None


@dataclass
class Track:
    """The last results of one probe of one cluster as seen from one vantage (within one boot)."""

    boot_id: str
    seq: int
    received_at: float
    ok: bool
    consecutive_fail: int = 0
    consecutive_ok: int = 0
    latency_ms: float = 0.0
    detail: str = ""


@dataclass
class ClusterState:
    name: str
    status: ClusterStatus = "unknown"
    since: float = 0.0
    last_known: ClusterStatus = "unknown"
    """The last status other than unknown: decides whether silence ending is a recovery."""
    healthy_since: float | None = None
    tracks: dict[tuple[str, str], Track] = field(default_factory=dict)
    """(probe, vantage) -> Track"""


@dataclass
class DetectorState:
    settings: Settings
    probes: dict[str, dict[str, ProbeSpec]]
    """cluster -> probe -> spec; reports for anything else are ignored."""
    clusters: dict[str, ClusterState] = field(default_factory=dict)
    vantages: dict[str, float] = field(default_factory=dict)
    """vantage -> time of its last report: the known vantages quorum `majority` counts over."""
    boots: dict[str, str] = field(default_factory=dict)
    """vantage -> its current boot_id."""
    retired_boots: dict[str, list[str]] = field(default_factory=dict)
    """vantage -> boot_ids superseded by a newer boot (their late reports are dropped)."""

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
class Transition:
    cluster: str
    from_: ClusterStatus
    to: ClusterStatus
    type: str | None
    """The event to emit (`cluster.failed`, ...), or None for a silent change (unknown -> healthy)."""
    reason: str
    evidence: dict[str, Any]
    at: float


def transition(
    state: DetectorState, item: HealthReport | Tick, now: float
) -> tuple[DetectorState, list[Transition]]:
    if isinstance(item, HealthReport):
        if not _record(state, item, now):
            return state, []
        changed = _evaluate(state, state.clusters[item.cluster], now)
        return state, [changed] if changed else []
    out = []
    for cluster in state.clusters.values():
        changed = _evaluate(state, cluster, now)
        if changed:
            out.append(changed)
    return state, out


def accepts(state: DetectorState, report: HealthReport) -> bool:
    """Whether a report names a configured cluster and probe (cheap pre-check for counters)."""
    return report.probe in state.probes.get(report.cluster, {})


def _record(state: DetectorState, report: HealthReport, now: float) -> bool:
    if not accepts(state, report):
        return False
    vantage = report.vantage
    current_boot = state.boots.get(vantage)
    if current_boot != report.boot_id:
        retired = state.retired_boots.setdefault(vantage, [])
        if report.boot_id in retired:
            return False  # a late report from a prober boot that a newer one superseded
        if current_boot is not None:
            retired.append(current_boot)
            del retired[:-8]  # bounded memory; eight restarts back is plenty to catch stragglers
        state.boots[vantage] = report.boot_id
    state.vantages[vantage] = now
    cluster = state.clusters[report.cluster]
    key = (report.probe, vantage)
    track = cluster.tracks.get(key)
    if track is None or track.boot_id != report.boot_id:
        track = Track(report.boot_id, -1, now, report.ok)  # counts never carry across boots
        cluster.tracks[key] = track
    if report.seq <= track.seq:
        return False  # duplicate or out of order within one boot
    track.seq = report.seq
    track.received_at = now
    track.ok = report.ok
    track.latency_ms = report.latency_ms
    track.detail = report.detail
    if report.ok:
        track.consecutive_ok += 1
        track.consecutive_fail = 0
    else:
        track.consecutive_fail += 1
        track.consecutive_ok = 0
    return True


def required_quorum(settings: Settings, known_vantages: int) -> int:
    """`majority` of known vantages (at least 2 once two are known), or the configured integer."""
    if settings.quorum != "majority":
        return int(settings.quorum)
    if known_vantages <= 1:
        return 1
    return max(2, known_vantages // 2 + 1)


def _known_vantages(state: DetectorState, now: float) -> int:
    window = state.settings.known_vantage_window_s
    return sum(1 for seen in state.vantages.values() if now - seen <= window)


def _evaluate(state: DetectorState, cluster: ClusterState, now: float) -> Transition | None:
    s = state.settings
    specs = state.probes[cluster.name]
    fresh: dict[str, list[tuple[str, Track]]] = {}
    for (probe, vantage), track in cluster.tracks.items():
        if state.boots.get(vantage) != track.boot_id:
            continue
        if now - track.received_at <= s.stale_after_s:
            fresh.setdefault(vantage, []).append((probe, track))
    quorum = required_quorum(s, _known_vantages(state, now))

    failing: dict[str, dict[str, Any]] = {}
    degrading: dict[str, dict[str, Any]] = {}
    healthy_vantages = []
    for vantage, tracks in fresh.items():
        vantage_ok = True
        for probe, track in tracks:
            spec = specs[probe]
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
        # a vantage must have reported every probe of this cluster to vouch for its health
        if vantage_ok and len(tracks) == len(specs):
            healthy_vantages.append(vantage)

    evidence: dict[str, Any] = {"quorum": quorum, "fresh_vantages": sorted(fresh)}
    if failing:
        evidence["failing"] = failing
    if degrading:
        evidence["degraded"] = degrading

    if len(failing) >= quorum:
        cluster.healthy_since = None
        reason = (
            f"{len(failing)} of {len(fresh)} fresh vantage(s) see a failing probe "
            f"(quorum {quorum}, threshold {s.failure_threshold})"
        )
        return _move(cluster, "failed", reason, evidence, now)

    if not fresh:
        cluster.healthy_since = None
        if cluster.status in ("unknown", "failed"):
            # failed was decided on evidence: silence neither confirms nor clears it, so the drain stays
            return None
        return _move(
            cluster, "unknown", f"no fresh report for {s.stale_after_s:g}s from any vantage", evidence, now
        )

    if cluster.status == "failed" or (cluster.status == "unknown" and cluster.last_known == "failed"):
        # sticky until a full recovery: a partial improvement is not a reason to restore traffic
        return _maybe_recover(cluster, healthy_vantages, failing or degrading, quorum, evidence, now, s)

    if failing or degrading:
        cluster.healthy_since = None
        parts = []
        if failing:
            parts.append(f"{len(failing)} vantage(s) see failure, below quorum {quorum}")
        if degrading:
            parts.append("a degrade-impact probe fails or a latency limit is exceeded")
        return _move(cluster, "degraded", "; ".join(parts), evidence, now)

    return _maybe_recover(cluster, healthy_vantages, {}, quorum, evidence, now, s)


def _maybe_recover(
    cluster: ClusterState,
    healthy_vantages: list[str],
    bad: dict[str, Any],
    quorum: int,
    evidence: dict[str, Any],
    now: float,
    s: Settings,
) -> Transition | None:
    if bad or len(healthy_vantages) < quorum:
        cluster.healthy_since = None
        return None
    if cluster.status == "healthy":
        return None
    needs_hold = cluster.status in ("failed", "degraded") or cluster.last_known in ("failed", "degraded")
    if not needs_hold:
        return _move(
            cluster, "healthy", f"{len(healthy_vantages)} vantage(s) see every probe passing", evidence, now
        )
    if cluster.healthy_since is None:
        cluster.healthy_since = now
    if now - cluster.healthy_since < s.recovery_hold_s:
        return None
    evidence = {**evidence, "healthy_vantages": sorted(healthy_vantages), "held_s": s.recovery_hold_s}
    return _move(
        cluster,
        "healthy",
        f"{len(healthy_vantages)} vantage(s) see every probe passing for {s.recovery_hold_s:g}s",
        evidence,
        now,
        recovered=True,
    )


def _move(
    cluster: ClusterState,
    to: ClusterStatus,
    reason: str,
    evidence: dict[str, Any],
    now: float,
    recovered: bool = False,
) -> Transition | None:
    if cluster.status == to:
        return None
    from_ = cluster.status
    cluster.status = to
    cluster.since = now
    if to != "unknown":
        cluster.last_known = to
    if to == "healthy":
        cluster.healthy_since = None
    kind: str | None
    kind = ("cluster.recovered" if recovered else None) if to == "healthy" else f"cluster.{to}"
    return Transition(cluster.name, from_, to, kind, reason, evidence, now)


def _evidence(track: Track) -> dict[str, Any]:
    return {
        "consecutive_fail": track.consecutive_fail,
        "ok": track.ok,
        "detail": track.detail,
        "latency_ms": track.latency_ms,
        "seq": track.seq,
    }
