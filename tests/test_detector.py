"""The pure detector with a controlled clock: thresholds, quorum, staleness, recovery hold, ordering,
suspect vantages, the observer guard, flapping and restart; tables plus Hypothesis properties."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.core.models import HealthReport
from orchestrator.detection.machine import (
    ClusterState,
    DetectorState,
    ProbeSpec,
    Resume,
    Settings,
    Tick,
    transition,
)
from orchestrator.detection.outputs import Output, Signal, Transition
from orchestrator.detection.snapshots import guard_snapshot, restore, snapshot

T0 = 1_700_000_000.0
CLUSTERS = ("a", "b", "c")
ALL_OK = dict.fromkeys(CLUSTERS, True)
V3 = ("v1", "v2", "v3")


class Feed:
    """Drives a DetectorState like probers would, one round per second of fake time."""

    def __init__(
        self,
        clusters: tuple[str, ...] = CLUSTERS,
        specs: dict[str, ProbeSpec] | None = None,
        **settings: object,
    ) -> None:
        settings.setdefault("max_failed_fraction", 1.0)  # tests of the guard itself lower it
        specs = specs or {"ingress": ProbeSpec("fail")}
        self.state = DetectorState(Settings(**settings), {c: dict(specs) for c in clusters})  # type: ignore[arg-type]
        for c in clusters:
            self.state.clusters[c] = ClusterState(c)
        self.now = T0
        self.seq: dict[tuple[str, str], int] = {}
        self.outputs: list[Output] = []
        self.reports: list[tuple[HealthReport, float]] = []

    def report(
        self,
        cluster: str,
        ok: bool,
        vantage: str = "v1",
        boot: str = "boot1",
        probe: str = "ingress",
        seq: int | None = None,
        latency_ms: float = 1.0,
    ) -> list[Output]:
        key = (vantage, boot)
        self.seq[key] = self.seq.get(key, 0) + 1 if seq is None else seq
        r = HealthReport(
            cluster=cluster,
            probe=probe,
            vantage=vantage,
            boot_id=boot,
            seq=self.seq[key],
            ok=ok,
            latency_ms=latency_ms,
            ts=datetime.fromtimestamp(self.now, UTC),
        )
        self.reports.append((r, self.now))
        return self.feed(r)

    def feed(self, item: HealthReport | Tick | Resume) -> list[Output]:
        _, out = transition(self.state, item, self.now)
        self.outputs += out
        return out

    def round(
        self, results: dict[str, bool], vantages: tuple[str, ...] = ("v1",), advance: float = 1.0
    ) -> list[Output]:
        out = []
        for v in vantages:
            for cluster, ok in results.items():
                out += self.report(cluster, ok, vantage=v)
        return out + self.tick(advance)

    def tick(self, advance: float = 0.0) -> list[Output]:
        self.now += advance
        return self.feed(Tick())

    def status(self, cluster: str) -> str:
        return self.state.clusters[cluster].status

    @property
    def transitions(self) -> list[Transition]:
        return [o for o in self.outputs if isinstance(o, Transition)]

    @property
    def signals(self) -> list[Signal]:
        return [o for o in self.outputs if isinstance(o, Signal)]

    def events(self, cluster: str | None = None) -> list[str]:
        """Emitted event types (silent changes such as unknown -> healthy left out)."""
        return [t.type for t in self.transitions if t.type and (cluster is None or t.cluster == cluster)]


def healthy_feed(vantages: tuple[str, ...] = ("v1",), **settings: object) -> Feed:
    feed = Feed(**settings)
    for _ in range(3):
        feed.round(ALL_OK, vantages)
    assert [feed.status(c) for c in CLUSTERS] == ["healthy"] * 3
    return feed


# single vantage ------------------------------------------------------------------------------------


def test_first_sight_is_unknown_then_healthy_without_a_recovered_event() -> None:
    feed = Feed()
    assert feed.status("a") == "unknown"
    feed.round(ALL_OK)
    feed.round(ALL_OK)
    assert feed.status("a") == "unknown"  # success_threshold not reached yet
    feed.round(ALL_OK)
    assert feed.status("a") == "healthy"
    assert feed.events() == [] and len(feed.transitions) == 3  # unknown -> healthy is silent


def test_fails_exactly_on_the_threshold_round() -> None:
    feed = healthy_feed(failure_threshold=3)
    assert feed.round({"a": False}) == []
    assert feed.round({"a": False}) == []
    out = feed.report("a", False)
    assert [(t.type, t.from_, t.to) for t in out if isinstance(t, Transition)] == [
        ("cluster.failed", "healthy", "failed")
    ]
    evidence = feed.transitions[-1].evidence
    assert evidence["failing"]["v1"]["ingress"]["consecutive_fail"] == 3
    assert "quorum 1" in feed.transitions[-1].reason


def test_a_success_resets_the_consecutive_count() -> None:
    feed = healthy_feed(failure_ratio=None)  # the count alone: 2 of 3 rounds failing trips the ratio rule
    for _ in range(10):
        feed.round({"a": False})
        feed.round({"a": False})
        feed.round({"a": True})
    assert feed.status("a") == "healthy"
    assert "cluster.failed" not in feed.events()


def test_recovery_needs_the_hold_and_emits_recovered_once() -> None:
    feed = healthy_feed(recovery_hold_s=30.0, success_threshold=3)
    for _ in range(3):
        feed.round({"a": False, "b": True, "c": True})
    assert feed.status("a") == "failed"
    for _ in range(20):  # healthy, but not for 30 s yet
        feed.round(ALL_OK)
    assert feed.status("a") == "failed"
    for _ in range(15):
        feed.round(ALL_OK)
    assert feed.status("a") == "healthy"
    recovered = [e for e in feed.transitions if e.type == "cluster.recovered"]
    assert len(recovered) == 1
    failed_at = next(e.at for e in feed.transitions if e.type == "cluster.failed")
    assert recovered[0].at - failed_at >= 30 + 2  # success threshold after 3 rounds, then the hold


def test_a_failure_during_the_hold_restarts_it() -> None:
    feed = healthy_feed(recovery_hold_s=10.0)
    for _ in range(3):
        feed.round({"a": False})
    for _ in range(8):
        feed.round(ALL_OK)
    feed.round({"a": False})  # one blip: not a failure, but the hold starts over
    for _ in range(9):
        feed.round(ALL_OK)
    assert feed.status("a") == "failed"
    for _ in range(6):
        feed.round(ALL_OK)
    assert feed.status("a") == "healthy"


def test_degrade_impact_and_latency_limit_give_degraded_never_failed() -> None:
    specs = {"ingress": ProbeSpec("fail", latency_limit_ms=100), "api": ProbeSpec("degrade")}
    feed = Feed(specs=specs)
    for _ in range(3):
        for c in CLUSTERS:
            feed.report(c, True)
            feed.report(c, True, probe="api")
        feed.tick(1)
    for _ in range(5):
        feed.report("a", True)
        feed.report("a", False, probe="api")  # kube API down: the cluster still serves
        feed.report("b", True, latency_ms=250)  # over the latency limit
        feed.report("b", True, probe="api")
        feed.report("c", True)
        feed.report("c", True, probe="api")
        feed.tick(1)
    assert (feed.status("a"), feed.status("b"), feed.status("c")) == ("degraded", "degraded", "healthy")
    assert feed.events() == ["cluster.degraded", "cluster.degraded"]
    for t in feed.transitions[-2:]:
        assert t.evidence["degraded"]["v1"]


# staleness and silence -----------------------------------------------------------------------------


def test_silence_is_unknown_never_failed() -> None:
    feed = healthy_feed(stale_after_s=5.0)
    out = feed.tick(5.5)
    assert {(t.cluster, t.type) for t in out if isinstance(t, Transition)} == {
        (c, "cluster.unknown") for c in CLUSTERS
    }
    for _ in range(100):
        feed.tick(10)
    assert "cluster.failed" not in feed.events()
    for _ in range(3):  # silence ending: healthy again with no recovered event (nothing was drained)
        feed.round(ALL_OK)
    assert feed.status("a") == "healthy"
    assert "cluster.recovered" not in feed.events()


def test_a_failed_cluster_that_goes_silent_stays_failed_until_a_real_recovery() -> None:
    feed = healthy_feed(recovery_hold_s=5.0)
    for _ in range(3):
        feed.round({"a": False, "b": True, "c": True})
    feed.tick(10)
    assert feed.status("a") == "failed"  # silence neither confirms nor clears a failure
    assert feed.status("b") == "unknown"
    for _ in range(3):
        feed.round({"a": False, "b": True, "c": True})
    assert feed.events("a").count("cluster.failed") == 1  # no second page for the same failure
    for _ in range(9):
        feed.round(ALL_OK)
    assert feed.status("a") == "healthy"
    assert feed.events("a").count("cluster.recovered") == 1


# ordering ------------------------------------------------------------------------------------------


def test_duplicates_and_old_reports_are_ignored() -> None:
    feed = healthy_feed()
    feed.report("a", False, seq=100)
    feed.report("a", False, seq=100)  # duplicate
    feed.report("a", False, seq=99)  # out of order
    assert feed.state.clusters["a"].tracks[("ingress", "v1")].consecutive_fail == 1


def test_a_new_boot_supersedes_and_does_not_inherit_counts() -> None:
    feed = healthy_feed()
    feed.report("a", False, boot="boot1")
    feed.report("a", False, boot="boot1")
    feed.report("a", False, boot="boot2", seq=1)  # the prober restarted: counting starts again
    assert feed.status("a") == "healthy"
    feed.report("a", False, boot="boot1")  # a straggler from the old boot is dropped
    assert feed.state.clusters["a"].tracks[("ingress", "v1")].boot_id == "boot2"
    feed.report("a", False, boot="boot2", seq=2)
    feed.report("a", False, boot="boot2", seq=3)
    assert feed.status("a") == "failed"


def test_unknown_clusters_and_probes_are_ignored() -> None:
    feed = healthy_feed()
    assert feed.report("zz", False) == []
    assert feed.report("a", False, probe="nope") == []


# quorum --------------------------------------------------------------------------------------------


def test_a_real_failure_seen_by_every_vantage_is_failed_without_a_degraded_blip() -> None:
    feed = healthy_feed(V3)
    for _ in range(3):
        feed.round({"a": False, "b": True, "c": True}, V3)
    assert feed.events("a") == ["cluster.failed"]


def test_one_vantage_of_three_never_fails_a_cluster_two_do_on_the_threshold_round() -> None:
    feed = healthy_feed(V3, failure_threshold=3)
    for _ in range(10):  # v1 alone sees a failing: degraded at most
        for v in V3:
            feed.report("a", v != "v1", vantage=v)
        feed.tick(1)
    assert feed.status("a") == "degraded" and "cluster.failed" not in feed.events()
    for _ in range(3):  # v1 and v2 see it; v3 does not
        feed.report("a", False, vantage="v1")
        feed.report("a", False, vantage="v2")
        feed.report("a", True, vantage="v3")
        feed.tick(1)
    # v1 has been failing for 13 rounds, v2 crosses its threshold on its 3rd failed round: failed then
    fails = [t for t in feed.transitions if t.type == "cluster.failed"]
    assert len(fails) == 1 and fails[0].at == T0 + 3 + 10 + 2
    assert set(fails[0].evidence["failing"]) == {"v1", "v2"} and fails[0].evidence["quorum"] == 2


def test_two_stale_vantages_never_let_the_third_fail_a_cluster_alone() -> None:
    feed = healthy_feed(V3, stale_after_s=5.0)
    for _ in range(30):  # v2 and v3 fall silent; v1 keeps reporting a failure
        feed.report("a", False, vantage="v1")
        for c in ("b", "c"):
            feed.report(c, True, vantage="v1")
        feed.tick(1)
    assert "cluster.failed" not in feed.events()
    assert feed.status("a") == "degraded"


def test_an_integer_quorum_of_one_lets_a_single_prober_decide() -> None:
    feed = healthy_feed(V3, quorum=1)
    for _ in range(3):
        feed.report("a", False, vantage="v2")
        feed.tick(1)
    assert feed.status("a") == "failed"


# suspect vantage and observer guard ----------------------------------------------------------------


def test_a_vantage_that_sees_everything_failing_while_others_do_not_is_cut_off() -> None:
    feed = healthy_feed(V3, max_failed_fraction=0.5)
    for _ in range(10):
        for c in CLUSTERS:
            feed.report(c, False, vantage="v1")
            feed.report(c, True, vantage="v2")
            feed.report(c, True, vantage="v3")
        feed.tick(1)
    assert [s.type for s in feed.signals] == ["vantage.suspect"]
    assert feed.signals[0].detail["vantage"] == "v1"
    assert all(feed.status(c) == "healthy" for c in CLUSTERS)  # its reports count as stale: not degraded
    for _ in range(2):
        feed.round(ALL_OK, V3)
    assert [s.type for s in feed.signals] == ["vantage.suspect", "vantage.clear"]


def test_all_clusters_failing_at_once_is_one_observer_suspect_and_no_drain() -> None:
    feed = healthy_feed(V3, max_failed_fraction=0.5)
    for _ in range(10):
        feed.round(dict.fromkeys(CLUSTERS, False), V3)
    assert [s.type for s in feed.signals] == ["observer.suspect"]
    assert sorted(feed.signals[0].detail["clusters"]) == list(CLUSTERS)
    assert "cluster.failed" not in feed.events()
    assert feed.state.frozen and guard_snapshot(feed.state)["suppressed"] == list(CLUSTERS)


def test_when_the_picture_clears_suppressed_failures_are_evaluated_again() -> None:
    feed = healthy_feed(V3, max_failed_fraction=0.5)
    for _ in range(4):
        feed.round(dict.fromkeys(CLUSTERS, False), V3)
    assert feed.state.frozen
    for _ in range(3):  # b and c come back, a stays down: one of three is within limits
        feed.round({"a": False, "b": True, "c": True}, V3)
    assert [s.type for s in feed.signals] == ["observer.suspect", "observer.clear"]
    assert feed.events("a") == ["cluster.failed"]  # never degraded on the way: the round was in flight
    assert "cluster.failed" not in feed.events("b") + feed.events("c")


def test_a_human_resume_accepts_the_suppressed_failures() -> None:
    feed = healthy_feed(V3, max_failed_fraction=0.5)
    for _ in range(4):
        feed.round({"a": False, "b": False, "c": True}, V3)
    assert feed.state.frozen and "cluster.failed" not in feed.events()
    feed.feed(Resume("alice"))
    assert [s.type for s in feed.signals] == ["observer.suspect", "automation.resumed"]
    assert feed.signals[-1].detail == {"actor": "alice", "suppressed": ["a", "b"]}
    assert sorted(t.cluster for t in feed.transitions if t.type == "cluster.failed") == ["a", "b"]


def test_failures_far_apart_are_not_grouped() -> None:
    feed = healthy_feed(V3, max_failed_fraction=0.5)
    for _ in range(5):
        feed.round({"a": False, "b": True, "c": True}, V3)
    for _ in range(5):  # b fails 5 s later: a separate failure, not the observer
        feed.round({"a": False, "b": False, "c": True}, V3)
    assert not feed.signals
    assert sorted(t.cluster for t in feed.transitions if t.type == "cluster.failed") == ["a", "b"]


# flapping ------------------------------------------------------------------------------------------


def test_flapping_pages_once_and_doubles_the_hold() -> None:
    feed = healthy_feed(recovery_hold_s=4.0, flap_max_transitions=3, flap_window_s=600.0)
    for _ in range(2):
        for _ in range(3):
            feed.round({"a": False})
        for _ in range(8):
            feed.round(ALL_OK)
    assert feed.events("a") == ["cluster.failed", "cluster.recovered"] * 2
    for _ in range(3):
        feed.round({"a": False})
    assert [s.type for s in feed.signals] == ["cluster.flapping"]
    feed.round(ALL_OK)
    healthy_from = feed.now
    for _ in range(20):
        feed.round(ALL_OK)
        if feed.status("a") == "healthy":
            break
    recovered = feed.transitions[-1]
    assert recovered.type == "cluster.recovered" and recovered.evidence["held_s"] == 8.0
    assert recovered.at - healthy_from >= 8.0 - 1


# restart -------------------------------------------------------------------------------------------


def test_restart_from_snapshot_plus_replay_does_not_emit_again() -> None:
    feed = healthy_feed(recovery_hold_s=5.0)
    for _ in range(4):
        feed.round({"a": False, "b": True, "c": True})
    assert feed.events("a") == ["cluster.failed"]
    saved = {c: snapshot(feed.state, c) for c in CLUSTERS}
    guard = guard_snapshot(feed.state)

    again = Feed(recovery_hold_s=5.0)
    again.seq = dict(feed.seq)  # the same prober boot goes on reporting
    restore(again.state, saved, guard)
    window = again.state.settings.replay_window_s
    for report, at in feed.reports:
        if at >= feed.now - window:
            again.now = at
            again.feed(report)
    again.now = feed.now
    again.tick()
    assert again.status("a") == "failed" and not again.transitions
    for _ in range(9):  # and it still recovers normally afterwards
        again.round(ALL_OK)
    assert again.events("a") == ["cluster.recovered"]


# properties ----------------------------------------------------------------------------------------

steps_strategy = st.lists(
    st.tuples(st.sampled_from(CLUSTERS), st.sampled_from(V3), st.booleans(), st.floats(0, 3)), max_size=300
)


@given(
    st.lists(st.tuples(st.sampled_from(CLUSTERS), st.booleans(), st.floats(0, 3)), max_size=300),
    st.sampled_from(["majority", 2, 3]),
)
def test_one_vantage_never_fails_a_cluster_when_quorum_is_two_or_more(
    steps: list[tuple[str, bool, float]], quorum: object
) -> None:
    feed = Feed(quorum=quorum)
    for _ in range(3):  # three vantages are known, then only v1 keeps talking
        feed.round(ALL_OK, V3)
    for cluster, ok, advance in steps:
        feed.report(cluster, ok)
        feed.tick(advance)
    assert "cluster.failed" not in feed.events()


@given(steps_strategy)
def test_no_cluster_failed_while_the_observer_guard_holds(steps: list[tuple[str, str, bool, float]]) -> None:
    feed = Feed(max_failed_fraction=0.5, quorum=1)
    for cluster, vantage, ok, advance in steps:
        frozen_before = feed.state.frozen
        out = feed.report(cluster, ok, vantage=vantage) + feed.tick(advance)
        failed = [o for o in out if isinstance(o, Transition) and o.type == "cluster.failed"]
        cleared = any(isinstance(o, Signal) and o.type == "observer.clear" for o in out)
        if failed and frozen_before:
            assert cleared, out
            assert out.index(
                next(o for o in out if isinstance(o, Signal) and o.type == "observer.clear")
            ) < out.index(failed[0])


@given(st.lists(st.tuples(st.sampled_from(CLUSTERS), st.booleans(), st.floats(0, 3)), max_size=300))
def test_recovered_only_after_failed_and_after_the_hold(steps: list[tuple[str, bool, float]]) -> None:
    hold = 5.0
    feed = Feed(recovery_hold_s=hold)
    for cluster, ok, advance in steps:
        feed.report(cluster, ok)
        feed.tick(advance)
    for cluster in CLUSTERS:
        changes = [
            t
            for t in feed.transitions
            if t.cluster == cluster and t.type in ("cluster.failed", "cluster.recovered")
        ]
        for prev, nxt in itertools.pairwise(changes):
            assert prev.type != nxt.type
            if nxt.type == "cluster.recovered":
                assert nxt.at - prev.at >= hold
        if changes:
            assert changes[0].type == "cluster.failed"


@pytest.mark.parametrize("hold", [2.0, 10.0])
@given(flips=st.lists(st.booleans(), min_size=1, max_size=400))
def test_transitions_stay_bounded_under_arbitrary_flapping(hold: float, flips: list[bool]) -> None:
    window = 60.0
    feed = Feed(
        recovery_hold_s=hold,
        failure_threshold=1,
        success_threshold=1,
        flap_max_transitions=4,
        flap_window_s=window,
    )
    for ok in flips:
        feed.round({"a": ok, "b": True, "c": True})
    times = [t.at for t in feed.transitions if t.cluster == "a" and t.type is not None]
    # each return to healthy needs a hold (doubled once flapping), so a window can hold only so many
    per_window = max(sum(1 for t in times if start <= t < start + window) for start in times) if times else 0
    assert per_window <= 2 * (window / hold + 1)
