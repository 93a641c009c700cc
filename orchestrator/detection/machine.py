"""The detector: a pure state machine from health reports to cluster state changes.

`transition(state, input, now) -> (state, outputs)` does no I/O and reads no clock: the time is an
argument, which is what makes replay tests, property tests and dry-runs possible (DESIGN §2.2, §6).
`state` is owned by the caller and updated in place; it is also returned for convenience. Outputs are
cluster `Transition`s and system `Signal`s (observer guard, suspect vantages, flapping).

Rules (DESIGN §6):
- per (cluster, probe, vantage) consecutive failure/success counts within one prober boot; a newer boot
  of a vantage supersedes the older one and its counts do not carry over;
- a vantage is fresh while its last report is younger than `stale_after`; silence counts neither up nor
  down, and no fresh vantage makes a cluster `unknown`, never `failed`;
- `failed` needs `quorum` fresh vantages seeing a `fail`-impact probe failing for `failure_threshold`
  rounds (`majority`: of the vantages seen in the last hour, at least 2 once 2 are known); fewer, a
  failing `degrade`-impact probe, or a latency limit exceeded give `degraded`;
- `failed` is sticky, through silence too: it ends only by recovering (quorum of fresh vantages past
  `success_threshold`, none failing, held for `recovery_hold`), which emits `cluster.recovered`;
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
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.core.config import Config
from orchestrator.core.models import ClusterStatus, HealthReport

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
            max_failed_fraction=d.max_failed_fraction,
            flap_max_transitions=d.flap.max_transitions,
            flap_window_s=d.flap.window_s,
        )

    @property
    def replay_window_s(self) -> float:
        """How much health history a restarted detector needs to rebuild its counts (DESIGN §6)."""
        return max(self.stale_after_s, self.failure_threshold * self.interval_s, self.recovery_hold_s)


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
    fail_started_at: float | None = None
    """Receipt time of the first report of the current failing streak."""
    ok_since: float | None = None
    """Receipt time of the first report of the current passing streak."""
    crossed_at: float | None = None
    """Receipt time of the report that took the failing streak to `failure_threshold`."""
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
    onset: float | None = None
    """When a quorum of vantages first saw the current failure: the observer guard groups by it."""
    suppressed: bool = False
    """A failure held back by the observer guard."""
    history: list[float] = field(default_factory=list)
    """Times of recent state changes, for flap damping."""
    flapping: bool = False
    tracks: dict[tuple[str, str], Track] = field(default_factory=dict)
    """(probe, vantage) -> Track"""


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


def transition(
    state: DetectorState, item: HealthReport | Tick | Resume, now: float
) -> tuple[DetectorState, list[Output]]:
    out: list[Output] = []
    if isinstance(item, HealthReport):
        recorded = _record(state, item, now)
        if recorded is None:
            return state, out
        # suspects depend on failing counts (changed here) and freshness (re-checked on every tick)
        if (recorded or state.suspects) and _update_suspects(state, now, out):
            _evaluate_all(state, now, out)
        elif not _steady(state, item):
            _evaluate(state, state.clusters[item.cluster], now, out)
    elif isinstance(item, Resume):
        if state.frozen:
            state.frozen = False
            state.accepted_before = now
            out.append(
                Signal(
                    "automation.resumed",
                    f"{item.actor} resumed automation; suppressed failures are accepted",
                    {"actor": item.actor, "suppressed": _suppressed(state)},
                    now,
                )
            )
        _evaluate_all(state, now, out)
    else:
        _update_suspects(state, now, out)
        _evaluate_all(state, now, out)
    if state.frozen:
        _maybe_clear(state, now, out)
    return state, out


def accepts(state: DetectorState, report: HealthReport) -> bool:
    """Whether a report names a configured cluster and probe."""
    return report.probe in state.probes.get(report.cluster, {})


def required_quorum(settings: Settings, known_vantages: int) -> int:
    """`majority` of known vantages (at least 2 once two are known), or the configured integer."""
    if settings.quorum != "majority":
        return int(settings.quorum)
    if known_vantages <= 1:
        return 1
    return max(2, known_vantages // 2 + 1)


# recording -------------------------------------------------------------------------------------------


def _steady(state: DetectorState, report: HealthReport) -> bool:
    """A passing report that cannot change anything: the cluster is healthy and this track was already
    past its success threshold with no latency limit in question. Skipping the evaluation here is what
    keeps a large healthy fleet cheap."""
    cluster = state.clusters[report.cluster]
    if not report.ok or cluster.status != "healthy" or state.frozen:
        return False
    track = cluster.tracks[(report.probe, report.vantage)]
    return (
        track.consecutive_ok > state.settings.success_threshold
        and state.probes[report.cluster][report.probe].latency_limit_ms is None
    )


def _record(state: DetectorState, report: HealthReport, now: float) -> bool | None:
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
    if counts_for_guard and was_failing == report.ok:  # started or stopped failing
        _count_failing(state, vantage, report.cluster, -1 if report.ok else 1)
        return True
    return False


def _count_failing(state: DetectorState, vantage: str, cluster: str, delta: int) -> None:
    """Keep `failing_at` in step with the tracks: +1 when a probe starts failing, -1 when it stops."""
    per_cluster = state.failing_at.setdefault(vantage, {})
    count = per_cluster.get(cluster, 0) + delta
    if count > 0:
        per_cluster[cluster] = count
    else:
        per_cluster.pop(cluster, None)


# suspect vantages ------------------------------------------------------------------------------------


def _is_fresh_vantage(state: DetectorState, vantage: str, now: float) -> bool:
    return now - state.vantages.get(vantage, float("-inf")) <= state.settings.stale_after_s


def _update_suspects(state: DetectorState, now: float, out: list[Output]) -> bool:
    """Recompute suspect vantages; True (and signals) when the set changed.

    A vantage is suspect when it sees more than `max_failed_fraction` of all clusters failing and another
    fresh vantage contradicts it: that one reported most of those clusters passing *after* the suspect's
    failures began. Comparing times, not just counts, keeps the verdict independent of the order in
    which the vantages' reports of one round arrive.
    """
    total = len(state.clusters)
    limit = state.settings.max_failed_fraction * total
    fresh = [v for v in state.vantages if _is_fresh_vantage(state, v, now)]
    over = [v for v in fresh if len(state.failing_at.get(v, ())) > limit]
    suspects = set()
    if over and len(over) < len(fresh):
        for v in over:
            if any(_contradicts(state, w, v) for w in fresh if w not in over):
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


def _contradicts(state: DetectorState, witness: str, suspect: str) -> bool:
    """Whether `witness` has been seeing most of the clusters `suspect` sees failing pass *during* the
    suspect's failing streaks. Overlapping streaks are a disagreement; reports of one round still in
    flight (everyone failing, or everyone recovering, in turn) never overlap that way."""
    failing = state.failing_at.get(suspect, {})
    contradicted = 0
    for name in failing:
        tracks = state.clusters[name].tracks
        for (probe, vantage), track in tracks.items():
            if vantage != suspect or track.fail_started_at is None:
                continue
            seen = tracks.get((probe, witness))
            if (
                seen is not None
                and seen.ok
                and seen.ok_since is not None
                and seen.ok_since <= track.received_at
                and seen.received_at >= track.fail_started_at
            ):
                contradicted += 1
                break
    return contradicted * 2 > len(failing)


# evaluation ------------------------------------------------------------------------------------------


def _evaluate_all(state: DetectorState, now: float, out: list[Output]) -> None:
    for cluster in state.clusters.values():
        _evaluate(state, cluster, now, out)


def _known_vantages(state: DetectorState, now: float) -> int:
    window = state.settings.known_vantage_window_s
    return sum(1 for seen in state.vantages.values() if now - seen <= window)


def _evaluate(state: DetectorState, cluster: ClusterState, now: float, out: list[Output]) -> None:
    s = state.settings
    specs = state.probes[cluster.name]
    fresh: dict[str, list[tuple[str, Track]]] = {}
    for (probe, vantage), track in cluster.tracks.items():
        if state.boots.get(vantage) != track.boot_id or vantage in state.suspects:
            continue
        if now - track.received_at <= s.stale_after_s:
            fresh.setdefault(vantage, []).append((probe, track))
    quorum = required_quorum(s, _known_vantages(state, now))

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
        if _guard_holds(state, cluster, now, out):
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
        _move(state, cluster, "failed", reason, evidence, now, out)
        return
    cluster.suppressed = False

    if not fresh:
        cluster.healthy_since = None
        if cluster.status in ("unknown", "failed"):
            # failed was decided on evidence: silence neither confirms nor clears it, so the drain stays
            return
        _move(
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
        _maybe_recover(
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
        _move(state, cluster, "degraded", "; ".join(parts), evidence, now, out)
        return

    _maybe_recover(state, cluster, healthy_vantages, False, quorum, evidence, now, out)


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


def _guard_holds(state: DetectorState, cluster: ClusterState, now: float, out: list[Output]) -> bool:
    """The observer guard: True when this failure must be held back (and says so once)."""
    s = state.settings
    onset = cluster.onset if cluster.onset is not None else now
    if onset <= state.accepted_before:
        return False
    window = 2 * s.interval_s
    together = sorted(
        c.name for c in state.clusters.values() if c.onset is not None and abs(c.onset - onset) <= window
    )
    total = len(state.clusters)
    too_many = len(together) > s.max_failed_fraction * total
    if not (state.frozen or too_many):
        return False
    if not cluster.suppressed:
        cluster.suppressed = True
    if not state.frozen:
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


def _maybe_clear(state: DetectorState, now: float, out: list[Output]) -> None:
    """Unfreeze when few enough clusters are failing; suppressed failures are then evaluated again."""
    failing = [
        c.name for c in state.clusters.values() if c.onset is not None and c.onset > state.accepted_before
    ]
    if len(failing) > state.settings.max_failed_fraction * len(state.clusters):
        return
    state.frozen = False
    state.cleared_at = now
    suppressed = _suppressed(state)
    out.append(
        Signal(
            "observer.clear",
            f"{len(failing)} of {len(state.clusters)} clusters failing: within "
            "limits again; suppressed failures are evaluated again",
            {"failing": failing, "suppressed": suppressed},
            now,
        )
    )
    _evaluate_all(state, now, out)


def _suppressed(state: DetectorState) -> list[str]:
    return sorted(c.name for c in state.clusters.values() if c.suppressed)


def _maybe_recover(
    state: DetectorState,
    cluster: ClusterState,
    healthy_vantages: list[str],
    bad: bool,
    quorum: int,
    evidence: dict[str, Any],
    now: float,
    out: list[Output],
) -> None:
    s = state.settings
    if bad or len(healthy_vantages) < quorum:
        cluster.healthy_since = None
        return
    if cluster.status == "healthy":
        return
    needs_hold = cluster.status in ("failed", "degraded") or cluster.last_known in ("failed", "degraded")
    if not needs_hold:
        _move(
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
    if now - cluster.healthy_since < hold:
        return
    evidence = {**evidence, "healthy_vantages": sorted(healthy_vantages), "held_s": hold}
    reason = f"{len(healthy_vantages)} vantage(s) see every probe passing for {hold:g}s"
    if cluster.flapping:
        reason += " (doubled hold: the cluster was flapping)"
        cluster.flapping = False
    _move(state, cluster, "healthy", reason, evidence, now, out, recovered=True)


def _move(
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
    cluster.since = now
    if to != "unknown":
        cluster.last_known = to
    if to == "healthy":
        cluster.healthy_since = None
        cluster.onset = None
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


def _evidence(track: Track) -> dict[str, Any]:
    return {
        "consecutive_fail": track.consecutive_fail,
        "ok": track.ok,
        "detail": track.detail,
        "latency_ms": track.latency_ms,
        "seq": track.seq,
    }


# persistence -----------------------------------------------------------------------------------------


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
        "suppressed": _suppressed(state),
    }


def restore(state: DetectorState, clusters: dict[str, dict[str, Any]], guard: dict[str, Any] | None) -> None:
    """Load persisted cluster states (counts are rebuilt by replaying recent health, not persisted)."""
    for name, data in clusters.items():
        c = state.clusters.get(name)
        if c is None:
            continue  # a cluster removed from the config
        c.status = data.get("status", "unknown")
        c.since = float(data.get("since", 0.0))
        c.last_known = data.get("last_known", c.status)
        c.flapping = bool(data.get("flapping", False))
        c.history = [float(t) for t in data.get("history", [])]
        c.suppressed = bool(data.get("suppressed", False))
    if guard:
        state.frozen = bool(guard.get("frozen", False))
        accepted = guard.get("accepted_before")
        state.accepted_before = float(accepted) if accepted is not None else float("-inf")
