"""The pure detector with a controlled clock: thresholds, quorum, staleness, recovery hold, ordering."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.detector import (
    ClusterState,
    DetectorState,
    ProbeSpec,
    Settings,
    Tick,
    Transition,
    transition,
)
from orchestrator.models import HealthReport

T0 = 1_700_000_000.0


class Feed:
    """Drives a DetectorState like the probers would, one round per second of fake time."""

    def __init__(self, clusters: tuple[str, ...] = ("a", "b", "c"), **settings: object) -> None:
        self.state = DetectorState(
            Settings(**settings),  # type: ignore[arg-type]
            {c: {"ingress": ProbeSpec("fail")} for c in clusters},
        )
        for c in clusters:
            self.state.clusters[c] = ClusterState(c)
        self.now = T0
        self.seq: dict[tuple[str, str], int] = {}
        self.events: list[Transition] = []

    def report(
        self,
        cluster: str,
        ok: bool,
        vantage: str = "v1",
        boot: str = "boot1",
        probe: str = "ingress",
        seq: int | None = None,
    ) -> list[Transition]:
        key = (vantage, boot)
        self.seq[key] = self.seq.get(key, 0) + 1 if seq is None else seq
        r = HealthReport(
            cluster=cluster,
            probe=probe,
            vantage=vantage,
            boot_id=boot,
            seq=self.seq[key],
            ok=ok,
            latency_ms=1.0,
            ts=datetime.fromtimestamp(self.now, UTC),
        )
        _, out = transition(self.state, r, self.now)
        self.events += out
        return out

    def round(
        self, results: dict[str, bool], vantages: tuple[str, ...] = ("v1",), advance: float = 1.0
    ) -> list[Transition]:
        out = []
        for v in vantages:
            for cluster, ok in results.items():
                out += self.report(cluster, ok, vantage=v)
        out += self.tick(advance)
        return out

    def tick(self, advance: float = 0.0) -> list[Transition]:
        self.now += advance
        _, out = transition(self.state, Tick(), self.now)
        self.events += out
        return out

    def status(self, cluster: str) -> str:
        return self.state.clusters[cluster].status

    def types(self) -> list[str | None]:
        return [e.type for e in self.events]


ALL_OK = {"a": True, "b": True, "c": True}


def healthy_feed(**settings: object) -> Feed:
    feed = Feed(**settings)
    for _ in range(3):
        feed.round(ALL_OK)
    assert [feed.status(c) for c in "abc"] == ["healthy"] * 3
    return feed


def test_first_sight_is_unknown_then_healthy_without_a_recovered_event() -> None:
    feed = Feed()
    assert feed.status("a") == "unknown"
    feed.round(ALL_OK)
    feed.round(ALL_OK)
    assert feed.status("a") == "unknown"  # success_threshold not reached yet
    feed.round(ALL_OK)
    assert feed.status("a") == "healthy"
    assert set(feed.types()) == {None}  # unknown -> healthy is silent


def test_fails_exactly_on_the_threshold_round() -> None:
    feed = healthy_feed(failure_threshold=3)
    assert feed.round({"a": False}) == []
    assert feed.round({"a": False}) == []
    out = feed.report("a", False)
    assert [(t.type, t.from_, t.to) for t in out] == [("cluster.failed", "healthy", "failed")]
    evidence = out[0].evidence
    assert evidence["failing"]["v1"]["ingress"]["consecutive_fail"] == 3
    assert "quorum 1" in out[0].reason


def test_a_success_resets_the_consecutive_count() -> None:
    feed = healthy_feed()
    for _ in range(10):
        feed.round({"a": False})
        feed.round({"a": False})
        feed.round({"a": True})
    assert feed.status("a") == "healthy"
    assert "cluster.failed" not in feed.types()


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
    recovered = [e for e in feed.events if e.type == "cluster.recovered"]
    assert len(recovered) == 1
    # success threshold reached after 3 rounds, then 30 s of hold
    failed_at = next(e.at for e in feed.events if e.type == "cluster.failed")
    assert recovered[0].at - failed_at >= 30 + 2


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


def test_silence_is_unknown_never_failed() -> None:
    feed = healthy_feed(stale_after_s=5.0)
    out = feed.tick(5.5)
    assert {(t.cluster, t.type) for t in out} == {(c, "cluster.unknown") for c in "abc"}
    for _ in range(100):
        feed.tick(10)
    assert "cluster.failed" not in feed.types()
    # silence ending: back to healthy with no recovered event (nothing was drained)
    for _ in range(3):
        feed.round(ALL_OK)
    assert feed.status("a") == "healthy"
    assert "cluster.recovered" not in feed.types()


def test_a_failed_cluster_that_goes_silent_stays_failed_until_a_real_recovery() -> None:
    feed = healthy_feed(recovery_hold_s=5.0)
    for _ in range(3):
        feed.round({"a": False, "b": True, "c": True})
    feed.tick(10)
    assert feed.status("a") == "failed"  # silence neither confirms nor clears a failure
    assert feed.status("b") == "unknown"
    for _ in range(3):
        feed.round({"a": False, "b": True, "c": True})
    assert feed.types().count("cluster.failed") == 1  # no second page for the same failure
    for _ in range(9):
        feed.round(ALL_OK)
    assert feed.status("a") == "healthy"
    assert feed.types().count("cluster.recovered") == 1


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


def test_quorum_two_of_three_vantages() -> None:
    feed = Feed()
    vantages = ("v1", "v2", "v3")
    for _ in range(3):
        feed.round(ALL_OK, vantages)
    # one vantage sees a failing: degraded at most, never failed
    for _ in range(5):
        for v in vantages:
            feed.report("a", v != "v1", vantage=v)
        feed.tick(1)
    assert feed.status("a") == "degraded"
    assert "cluster.failed" not in feed.types()
    # two vantages see it: failed
    for _ in range(3):
        for v in vantages:
            feed.report("a", v == "v3", vantage=v)
        feed.tick(1)
    assert feed.status("a") == "failed"


@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans(), st.floats(0, 3)), max_size=200))
def test_single_vantage_never_fails_a_cluster_when_quorum_is_two(
    steps: list[tuple[str, bool, float]],
) -> None:
    feed = Feed(quorum=2)
    for cluster, ok, advance in steps:
        feed.report(cluster, ok)
        feed.tick(advance)
    assert "cluster.failed" not in feed.types()


@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans(), st.floats(0, 3)), max_size=200))
def test_recovered_only_after_failed_and_never_twice_in_a_row(steps: list[tuple[str, bool, float]]) -> None:
    feed = Feed(recovery_hold_s=5.0)
    for cluster, ok, advance in steps:
        feed.report(cluster, ok)
        feed.tick(advance)
    for cluster in "abc":
        kinds = [
            e.type
            for e in feed.events
            if e.cluster == cluster and e.type in ("cluster.failed", "cluster.recovered")
        ]
        for prev, nxt in itertools.pairwise(kinds):
            assert prev != nxt, kinds
        if kinds:
            assert kinds[0] == "cluster.failed"
