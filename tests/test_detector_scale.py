"""The detector's cost at fleet size (issue 19): a cut-off vantage and the 0.25 s tick must not cost in
proportion to the number of clusters, and the cheaper evaluation must decide exactly as before.

Costs are operation counts under `sys.setprofile` (every Python and builtin call the detector makes),
never times: the same figure on a loaded CI machine as on an idle one.
"""

from __future__ import annotations

import asyncio
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st

from orchestrator.core.models import HealthReport
from orchestrator.detection.evaluation import evaluate, evaluate_all
from orchestrator.detection.machine import (
    ClusterState,
    DetectorState,
    ProbeSpec,
    Resume,
    Settings,
    Tick,
    transition,
)
from orchestrator.detection.observer import is_fresh_vantage, suppressed_clusters
from orchestrator.detection.outputs import Output, Signal
from orchestrator.detection.tracks import record, steady

T0 = 1_700_000_000.0
VANTAGES = ("a", "b", "c")
TS = datetime.now(UTC)


def fleet(n: int, **settings: Any) -> DetectorState:
    specs = {"p": ProbeSpec("fail")}
    state = DetectorState(
        Settings(vantages=VANTAGES, **settings), {f"c{i:05d}": dict(specs) for i in range(n)}
    )
    for name in state.probes:
        state.clusters[name] = ClusterState(name)
    return state


class Fleet:
    """Three vantages probing every cluster once a second, like the probers of bench/fleet.py."""

    def __init__(self, n: int) -> None:
        self.state = fleet(n)
        self.now = T0
        self.seq = dict.fromkeys(VANTAGES, 0)
        self.tick_calls = 0
        """Calls made by the ticks of the rounds so far."""

    def report(self, cluster: str, vantage: str, ok: bool) -> HealthReport:
        self.seq[vantage] += 1
        return HealthReport(
            cluster=cluster, probe="p", vantage=vantage, boot_id=f"boot-{vantage}",
            seq=self.seq[vantage], ok=ok, latency_ms=1.0, detail="", ts=TS,
        )  # fmt: skip

    def round(self, cut_off: str | None = None) -> list[Output]:
        """One second: every vantage reports every cluster (`cut_off` sees them all failing), with the
        4 ticks of the service in between."""
        out: list[Output] = []
        names = list(self.state.clusters)
        step = 1.0 / (len(names) * len(VANTAGES))
        for i, name in enumerate(names):
            for vantage in VANTAGES:
                self.now += step
                out += transition(self.state, self.report(name, vantage, vantage != cut_off), self.now)[1]
            if i % max(1, len(names) // 4) == 0:
                self.tick_calls += calls(lambda: out.extend(transition(self.state, Tick(), self.now)[1]))  # noqa: B023
        return out


def calls(action: Callable[[], object]) -> int:
    """How many Python and builtin calls `action` makes: an operation count, not a time."""
    count = 0

    def profiler(_frame: FrameType, event: str, _arg: object) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profiler)
    try:
        action()
    finally:
        sys.setprofile(None)
    return count


def calls_per_report_with_vantage_cut_off(n: int) -> float:
    f = Fleet(n)
    for _ in range(4):
        f.round()
    out: list[Output] = []
    for _ in range(4):
        out += f.round(cut_off="c")
    assert f.state.suspects == {"c"}, "the cut-off vantage is suspect, as before"
    assert not [o for o in out if not isinstance(o, Signal)], "no cluster changed state"
    names = list(f.state.clusters)[:50]
    reports = [f.report(name, v, v != "c") for name in names for v in VANTAGES]

    def feed() -> None:
        for r in reports:
            f.now += 0.001
            transition(f.state, r, f.now)

    return calls(feed) / len(reports)


def test_a_cut_off_vantage_costs_the_same_per_report_at_ten_times_the_fleet() -> None:
    """Before: every report re-checked every failing cluster (`_contradicts`), so the cost per report
    grew with the fleet: one cut-off vantage made the detector quadratic (issue 19)."""
    small = calls_per_report_with_vantage_cut_off(100)
    large = calls_per_report_with_vantage_cut_off(1000)
    assert large < 1.5 * small, f"{small:.0f} calls per report at 100 clusters, {large:.0f} at 1,000"


def test_the_ticks_of_a_healthy_fleet_cost_less_than_one_sweep_a_second() -> None:
    """Before: each of the 4 ticks a second evaluated every cluster (34 ms at 10,000 clusters), whether
    or not anything could have changed. Now a healthy cluster is evaluated about once per
    `stale_after`, when its oldest track would otherwise go stale."""
    f = Fleet(1000)
    for _ in range(5):
        f.round()
    f.tick_calls = 0
    rounds = 4
    for _ in range(rounds):
        assert not f.round()
    sweep = calls(lambda: evaluate_all(f.state, f.now, []))
    per_second = f.tick_calls / rounds
    assert per_second < 0.5 * sweep, f"ticks: {per_second:.0f} calls a second; one sweep: {sweep}"


def test_a_tick_with_nothing_due_costs_the_same_at_any_fleet_size() -> None:
    def idle_tick(n: int) -> int:
        f = Fleet(n)
        for _ in range(5):
            f.round()
        transition(f.state, Tick(), f.now)
        return calls(lambda: transition(f.state, Tick(), f.now))

    small, large = idle_tick(100), idle_tick(2000)
    assert large < small + 20, f"an idle tick: {small} calls at 100 clusters, {large} at 2,000"


def test_time_alone_still_moves_every_due_cluster() -> None:
    """Deadlines are kept, not skipped: silence makes every cluster unknown, a hold still runs out."""
    f = Fleet(300)
    for _ in range(5):
        f.round()
    f.now += 10
    out = transition(f.state, Tick(), f.now)[1]
    assert len(out) == 300
    assert all(c.status == "unknown" for c in f.state.clusters.values())


# equivalence with the evaluate-everything detector ----------------------------------------------------


def _scan_contradicts(state: DetectorState, witness: str, suspect: str) -> bool:
    """The suspect check as it was: a scan of every cluster the suspect sees failing."""
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


def _scan_update_suspects(state: DetectorState, now: float, out: list[Output]) -> bool:
    total = len(state.clusters)
    limit = state.settings.max_failed_fraction * total
    fresh = [v for v in state.vantages if is_fresh_vantage(state, v, now)]
    over = [v for v in fresh if len(state.failing_at.get(v, ())) > limit]
    suspects = set()
    if over and len(over) < len(fresh):
        for v in over:
            if any(_scan_contradicts(state, w, v) for w in fresh if w not in over):
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


def _reference(state: DetectorState, item: HealthReport | Tick | Resume, now: float) -> list[Output]:
    """`transition` as it was before issue 19: suspects re-scanned, every cluster evaluated each tick."""
    out: list[Output] = []
    if isinstance(item, HealthReport):
        recorded = record(state, item, now)
        if recorded is None:
            return out
        if (recorded or state.suspects) and _scan_update_suspects(state, now, out):
            evaluate_all(state, now, out)
        elif not steady(state, item):
            evaluate(state, state.clusters[item.cluster], now, out)
    elif isinstance(item, Resume):
        if state.frozen:
            state.frozen = False
            state.accepted_before = now
            out.append(Signal("automation.resumed", "", {}, now))
        evaluate_all(state, now, out)
    else:
        _scan_update_suspects(state, now, out)
        evaluate_all(state, now, out)
    if state.frozen and _scan_maybe_clear(state, now, out):
        evaluate_all(state, now, out)
    return out


def _scan_maybe_clear(state: DetectorState, now: float, out: list[Output]) -> bool:
    """The guard's clear as it was: every cluster scanned on every report while frozen."""
    failing = [
        c.name for c in state.clusters.values() if c.onset is not None and c.onset > state.accepted_before
    ]
    if len(failing) > state.settings.max_failed_fraction * len(state.clusters):
        return False
    state.frozen = False
    state.cleared_at = now
    out.append(
        Signal("observer.clear", "", {"failing": failing, "suppressed": suppressed_clusters(state)}, now)
    )
    return True


def _check_guard_counts(state: DetectorState) -> None:
    """The observer guard's kept counts equal what a scan of every cluster finds."""
    onsets = [c.onset for c in state.clusters.values() if c.onset is not None]
    assert state.onsets == sorted(onsets)
    assert state.failing_count == len([o for o in onsets if o > state.accepted_before])
    window = 2 * state.settings.interval_s
    for onset in onsets:
        near = bisect_right(state.onsets, onset + window) - bisect_left(state.onsets, onset - window)
        assert near == len([o for o in onsets if abs(o - onset) <= window])


def _abridged(outputs: list[Output]) -> list[Output]:
    return [
        Signal(o.type, "", o.detail if o.type == "observer.clear" else {}, o.at)
        if isinstance(o, Signal) and o.type in ("automation.resumed", "observer.clear")
        else o
        for o in outputs
    ]


def _brief(outputs: list[Output]) -> list[str]:
    return [o.type if isinstance(o, Signal) else f"{o.cluster}->{o.to}" for o in outputs]


CLUSTERS = ("k1", "k2", "k3", "k4", "k5")
step = st.one_of(
    st.tuples(
        st.just("report"),
        st.integers(0, len(CLUSTERS) - 1),
        st.sampled_from(("p", "q", "d")),
        st.sampled_from(VANTAGES),
        st.booleans(),
        st.sampled_from((1.0, 80.0)),  # latency, against p's 50 ms limit
        st.sampled_from((0.0, 0.05, 0.3, 1.0, 3.5)),  # time before it
        st.integers(0, 12),  # 0: a new boot of the vantage; 1: a duplicate (seq not advanced)
    ),
    st.tuples(st.just("tick"), st.sampled_from((0.25, 0.25, 1.0, 4.5))),
    st.tuples(st.just("resume")),
)
rounds = st.tuples(
    st.just("rounds"),
    st.frozensets(st.sampled_from(VANTAGES)),  # the vantages that see failures
    st.frozensets(st.sampled_from(CLUSTERS)),  # the clusters they see failing
    st.sampled_from(("p", "q", "d")),  # the probe they see failing (q: fail impact, no latency limit)
    st.integers(1, 5),
)


@given(
    steps=st.lists(st.one_of(step, step, rounds), max_size=120),
    listed=st.booleans(),
    ratio=st.booleans(),
    limit=st.booleans(),
)
def test_incremental_detector_decides_exactly_as_the_full_scan(
    steps: list[tuple[Any, ...]], listed: bool, ratio: bool, limit: bool
) -> None:
    """The incremental suspect counts and the due-only tick give the same outputs, in the same order, as
    re-scanning every failing cluster and evaluating every cluster on every tick."""
    settings = Settings(
        failure_threshold=2,
        success_threshold=2,
        stale_after_s=3.0,
        recovery_hold_s=4.0,
        max_failed_fraction=0.5,
        flap_max_transitions=3,
        flap_window_s=60.0,
        failure_ratio=0.5 if ratio else None,
        failure_ratio_window_s=6.0,
        failure_ratio_min_rounds=4,
        vantages=VANTAGES if listed else None,
    )
    specs = {
        "p": ProbeSpec("fail", latency_limit_ms=50.0 if limit else None),
        "q": ProbeSpec("fail"),
        "d": ProbeSpec("degrade"),
    }
    states = [DetectorState(settings, {c: dict(specs) for c in CLUSTERS}) for _ in range(2)]
    for s in states:
        for c in CLUSTERS:
            s.clusters[c] = ClusterState(c)
    now = T0
    seq = dict.fromkeys(VANTAGES, 0)
    boot = dict.fromkeys(VANTAGES, 0)

    def both(item: HealthReport | Tick | Resume) -> None:
        new = transition(states[0], item, now)[1]
        old = _reference(states[1], item, now)
        new, old = _abridged(new), _abridged(old)  # the reference's signal texts are abridged
        assert new == old, f"at {now - T0:.2f}: {_brief(new)} != {_brief(old)}"
        assert {n: c.status for n, c in states[0].clusters.items()} == {
            n: c.status for n, c in states[1].clusters.items()
        }
        assert states[0].suspects == states[1].suspects
        _check_guard_counts(states[0])
        for o in new:  # what the run exercised: --hypothesis-show-statistics
            event(o.type if isinstance(o, Signal) else f"-> {o.to}")

    def report(cluster: str, probe: str, vantage: str, ok: bool, latency: float, kind: int) -> HealthReport:
        if kind == 0:
            boot[vantage] += 1
        if kind != 1:
            seq[vantage] += 1
        return HealthReport(
            cluster=cluster, probe=probe, vantage=vantage, boot_id=f"{vantage}-{boot[vantage]}",
            seq=seq[vantage], ok=ok, latency_ms=latency, detail="", ts=TS,
        )  # fmt: skip

    for item in steps:
        if item[0] == "report":
            _, cluster, probe, vantage, ok, latency, dt, kind = item
            now += dt
            both(report(CLUSTERS[cluster], probe, vantage, ok, latency, kind))
        elif item[0] == "tick":
            now += item[1]
            both(Tick())
        elif item[0] == "resume":
            both(Resume())
        else:  # whole rounds: some vantages see some clusters failing (a vantage cut off: all of them)
            _, seeing, failing, probed, count = item
            for _round in range(count):
                for cluster in CLUSTERS:
                    for v in VANTAGES:
                        for probe in ("p", "q", "d"):
                            now += 0.02
                            bad = v in seeing and cluster in failing and probe == probed
                            both(report(cluster, probe, v, not bad, 1.0, 2))
                    now += 0.05
                    both(Tick())


# the live handler and the loop ----------------------------------------------------------------------


async def test_a_backlog_of_reports_lets_other_tasks_run() -> None:
    """nats-py awaits the handler once per queued message and never suspends while its queue holds
    more, so a handler that never suspends held the loop for the whole backlog: lease renewals, the API
    and the runner waited (seconds, at 5,000 clusters on a busy machine). Counted in loop turns."""
    from types import SimpleNamespace
    from typing import cast

    from orchestrator.bus.client import Bus
    from orchestrator.core import subjects
    from orchestrator.core.metrics import Metrics
    from orchestrator.detection.service import YIELD_EVERY, DetectionService

    state = fleet(50)

    async def on_event(_event: dict[str, Any]) -> None:
        return None

    service = DetectionService(state, cast(Bus, object()), Metrics(), on_event)
    seq = 0
    messages = []
    for _round in range(20):
        for name in state.clusters:
            for vantage in VANTAGES:
                seq += 1
                report = HealthReport(
                    cluster=name, probe="p", vantage=vantage, boot_id="b", seq=seq, ok=True,
                    latency_ms=1.0, detail="", ts=datetime.now(UTC),
                )  # fmt: skip
                messages.append(
                    SimpleNamespace(subject=subjects.health(vantage, name, "p"), data=report.to_json())
                )
    turns = 0
    done = False

    async def other_task() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.get_running_loop().create_task(other_task())
    await asyncio.sleep(0)
    turns = 0
    for msg in messages:  # as nats-py's `_wait_for_msgs` does with a full queue
        await service._on_live(msg)
    done = True
    await other
    assert turns >= len(messages) // (2 * YIELD_EVERY), f"{turns} turns for the other task in {len(messages)}"


class _CountedCluster(ClusterState):
    """A cluster whose failure onset counts how often it is read."""

    reads = 0

    @property  # type: ignore[override]
    def onset(self) -> float | None:
        _CountedCluster.reads += 1
        return self._onset

    @onset.setter
    def onset(self, value: float | None) -> None:
        self._onset = value


def onset_reads_per_report_while_frozen(n: int) -> float:
    f = Fleet(n)
    for name in f.state.clusters:
        f.state.clusters[name] = _CountedCluster(name)
    for _ in range(4):
        f.round()
    names = list(f.state.clusters)
    failing = set(names[: int(n * 0.6)])  # more than max_failed_fraction: the observer guard freezes
    for _ in range(4):
        for name in names:
            for vantage in VANTAGES:
                f.now += 1.0 / (n * 3)
                transition(f.state, f.report(name, vantage, name not in failing), f.now)
        transition(f.state, Tick(), f.now)
    assert f.state.frozen, "the guard froze"
    reports = [f.report(name, v, name not in failing) for name in names[:50] for v in VANTAGES]
    _CountedCluster.reads = 0
    for r in reports:
        f.now += 0.001
        transition(f.state, r, f.now)
    return _CountedCluster.reads / len(reports)


def test_a_frozen_guard_costs_the_same_per_report_at_ten_times_the_fleet() -> None:
    """Before: while frozen, every report scanned every cluster's onset to see whether the guard could
    clear (`maybe_clear`): at 10,000 clusters, 30,000 reports a second, the stall came exactly when half
    the fleet looked failed."""
    small = onset_reads_per_report_while_frozen(100)
    large = onset_reads_per_report_while_frozen(1000)
    assert large < 1.5 * small + 5, (
        f"{small:.0f} onset reads per report at 100 clusters, {large:.0f} at 1,000"
    )
