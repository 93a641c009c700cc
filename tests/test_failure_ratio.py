"""`detection.failure_ratio` (DESIGN §6, intermittent failure): an app that is down half the time in short
bursts never trips the consecutive-failure threshold, yet fails half of its cluster's requests.

The pure rule with a controlled clock (tables and Hypothesis properties against a naive oracle), its
configuration, and one test against a real daemon, real NATS and a real HAProxy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core import subjects
from orchestrator.core.config import load_config
from orchestrator.core.config_clusters import DetectionConfig
from orchestrator.core.errors import ValidationFailed
from orchestrator.detection.machine import DetectorState, ProbeSpec, Settings
from tests.helpers import SHORT_PROBING, collect, fleet, hook_receiver, wait_for, write_config
from tests.test_daemon import all_healthy, running
from tests.test_detector import Feed

ONE = ("a", "b")
"""Two clusters, one vantage: `a` misbehaves, `b` keeps the observer guard honest."""


def flaps(
    feed: Feed, down: int, up: int, periods: int, cluster: str = "a", vantages: tuple[str, ...] = ("v1",)
) -> None:
    """`periods` times: `down` failing rounds, then `up` passing ones, one round a second."""
    for _ in range(periods):
        for ok in [False] * down + [True] * up:
            feed.round({cluster: ok, "b": True}, vantages)


def stable(feed: Feed, rounds: int, cluster: str = "a", vantages: tuple[str, ...] = ("v1",)) -> None:
    for _ in range(rounds):
        feed.round({cluster: True, "b": True}, vantages)


def healthy(vantages: tuple[str, ...] = ("v1",), **settings: object) -> Feed:
    feed = Feed(clusters=ONE, **settings)  # type: ignore[arg-type]
    stable(feed, 3, vantages=vantages)
    assert feed.status("a") == "healthy"
    return feed


# the rule ------------------------------------------------------------------------------------------


def test_down_two_of_every_four_seconds_fails_the_cluster_once_at_default_settings() -> None:
    """The measured case of DESIGN §6: 2 s down of every 4 s for 40 s; defaults {0.5, 20s, 10 rounds}."""
    feed = healthy()
    flaps(feed, down=2, up=2, periods=10)
    assert feed.events("a") == ["cluster.failed"]
    failed = feed.transitions[-1]
    assert failed.from_ == "healthy" and "intermittent" in failed.reason
    ratio = failed.evidence["failing"]["v1"]["ingress"]["failure_ratio"]
    assert ratio["failed"] / ratio["rounds"] >= 0.5 and ratio["rounds"] >= 10
    assert feed.events("b") == []


def test_no_traffic_back_while_it_keeps_flapping_even_when_each_up_phase_outlasts_the_hold() -> None:
    """Up 5 rounds at a time: past the success threshold and the (doubled) hold every period. Only the
    ratio, 3 of 8 (and never under 3 of 11 while the window fills), keeps it failed; once stable it
    recovers exactly once."""
    feed = healthy(
        failure_threshold=4,
        recovery_hold_s=1.0,
        failure_ratio=0.25,
        failure_ratio_window_s=16.0,
        failure_ratio_min_rounds=8,
    )
    flaps(feed, down=3, up=5, periods=8)
    assert feed.events("a") == ["cluster.failed"]
    stable_from = feed.now
    stable(feed, 20)
    assert feed.events("a") == ["cluster.failed", "cluster.recovered"]
    recovered = feed.transitions[-1]
    assert recovered.evidence["held_s"] == 2.0  # it recovers like a flapping cluster (DESIGN §6)
    # the hold ran on the passing streaks already: it recovers as soon as 3 of 16 rounds failed (< 0.25)
    assert recovered.at - stable_from <= 2


def test_a_hard_outage_recovers_only_once_the_ratio_is_back_under_the_threshold() -> None:
    feed = healthy(recovery_hold_s=1.0)
    for _ in range(20):
        feed.round({"a": False, "b": True})
    assert feed.events("a") == ["cluster.failed"]
    back_at = feed.now
    stable(feed, 30)
    recovered = feed.transitions[-1]
    assert recovered.type == "cluster.recovered"
    # 20 failed rounds fill the 20 s window: 11 passing rounds before fewer than half of them failed
    assert recovered.at - back_at >= 10
    assert recovered.evidence["held_s"] == 1.0  # failed by consecutive count: the ordinary hold


def test_a_degrade_impact_probe_failing_intermittently_degrades_and_never_fails() -> None:
    feed = Feed(clusters=ONE, specs={"api": ProbeSpec("degrade")})
    for _ in range(3):
        feed.report("a", True, probe="api")
        feed.report("b", True, probe="api")
        feed.tick(1.0)
    for _ in range(10):
        for ok in (False, False, True, True):
            feed.report("a", ok, probe="api")
            feed.report("b", True, probe="api")
            feed.tick(1.0)
    assert feed.events("a") == ["cluster.degraded"]


def test_quorum_applies_one_vantage_of_three_degrades_two_fail() -> None:
    v3 = ("v1", "v2", "v3")
    feed = healthy(v3)
    for _ in range(10):
        for ok in (False, False, True, True):
            for v in v3:
                feed.report("a", ok if v == "v1" else True, vantage=v)
                feed.report("b", True, vantage=v)
            feed.tick(1.0)
    assert feed.events("a") == ["cluster.degraded"]

    feed = healthy(v3)
    for _ in range(10):
        for ok in (False, False, True, True):
            for v in v3:
                feed.report("a", ok if v != "v3" else True, vantage=v)
                feed.report("b", True, vantage=v)
            feed.tick(1.0)
    assert feed.events("a") == ["cluster.failed"]  # no degraded blip while the second vantage's round is due


def test_fewer_rounds_than_min_rounds_in_the_window_never_count() -> None:
    feed = healthy(failure_ratio_window_s=8.0, failure_ratio_min_rounds=10)  # 8 rounds fit in the window
    flaps(feed, down=2, up=2, periods=10)
    assert feed.events("a") == []


def test_disabled_keeps_the_consecutive_rule_alone() -> None:
    feed = healthy(failure_ratio=None)
    flaps(feed, down=2, up=2, periods=10)
    assert feed.events("a") == []


def test_a_new_boot_starts_an_empty_window() -> None:
    feed = healthy()
    for ok in (False, False, True, False, False, True):  # 4 of 9 failed in boot1: under the threshold
        feed.round({"a": ok, "b": True})
    # a restarted prober: 6 of its first 8 rounds fail, which with boot1's rounds would be 10 of 17,
    # but counts never carry across boots and 8 rounds alone are fewer than min_rounds
    for ok in (False, False, True, False, False, True, False, False):
        feed.report("a", ok, boot="boot2")
        feed.report("b", True, boot="boot2")
        feed.tick(1.0)
    assert feed.events("a") == []


def test_the_window_stays_bounded_when_a_vantage_floods() -> None:
    feed = healthy()
    for i in range(5_000):  # one prober boot publishing far faster than the interval
        feed.report("a", i % 2 == 0)
        feed.now += 0.001
    track = feed.state.clusters["a"].tracks[("ingress", "v1")]
    assert len(track.window) <= 4 * 20
    assert track.window_failed == sum(1 for _t, ok in track.window if not ok)


def test_the_replay_after_a_restart_covers_the_window() -> None:
    s = Settings(recovery_hold_s=1.0, failure_ratio_window_s=20.0)
    assert s.replay_window_s == 20.0


# configuration -------------------------------------------------------------------------------------


def test_config_defaults_a_mapping_and_null() -> None:
    assert DetectionConfig().failure_ratio is not None
    d = DetectionConfig().failure_ratio
    assert d is not None and (d.threshold, d.window_s, d.min_rounds) == (0.5, 20.0, 10)
    custom = DetectionConfig.model_validate(
        {"failure_ratio": {"threshold": 0.3, "window": "4s", "min_rounds": 12}}
    )
    assert custom.failure_ratio is not None and custom.failure_ratio.window_s == 4.0
    assert DetectionConfig.model_validate({"failure_ratio": None}).failure_ratio is None
    assert DetectionConfig.model_validate({"failure_ratio": False}).failure_ratio is None
    for bad in ({"threshold": 0}, {"threshold": 1.5}, {"window": "0s"}, {"min_rounds": 0}, {"ratio": 0.3}):
        with pytest.raises(ValidationError):
            DetectionConfig.model_validate({"failure_ratio": bad})


def test_settings_from_config(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(
        "probing: {interval: 200ms}\n"
        "detection: {failure_ratio: {threshold: 0.3, window: 4s, min_rounds: 12}}\n"
        "clusters: [{name: a, probes: [{name: ingress, tcp: {host: 127.0.0.1, port: 1}}]}]\n"
    )
    s = DetectorState.from_config(load_config(path)).settings
    assert (s.failure_ratio, s.failure_ratio_window_s, s.failure_ratio_min_rounds) == (0.3, 4.0, 12)


# properties ----------------------------------------------------------------------------------------

WINDOW = 10
"""Rounds come one a second, so the window holds this many rounds."""


def ratio_oracle(outcomes: list[bool], threshold: float, min_rounds: int) -> int | None:
    """The first round (index) at which the last WINDOW rounds held at least `min_rounds` rounds of which
    at least `threshold` failed, scanning naively."""
    for i in range(len(outcomes)):
        window = outcomes[max(0, i - WINDOW + 1) : i + 1]
        if len(window) >= min_rounds and window.count(False) / len(window) >= threshold:
            return i
    return None


ratio_settings = {
    "failure_threshold": 1_000,  # the consecutive rule out of the way: the ratio alone decides
    "failure_ratio_window_s": float(WINDOW),
    "failure_ratio_min_rounds": 5,
}


@settings(max_examples=200)
@given(st.integers(0, 200), st.sampled_from([0.1, 0.3, 0.5, 1.0]))
def test_a_cluster_whose_reports_all_pass_never_fails(rounds: int, threshold: float) -> None:
    feed = Feed(clusters=ONE, quorum=1, failure_ratio=threshold, **ratio_settings)  # type: ignore[arg-type]
    stable(feed, rounds)
    assert "cluster.failed" not in feed.events()
    assert "cluster.degraded" not in feed.events()


@settings(max_examples=300)
@given(st.lists(st.booleans(), max_size=120), st.sampled_from([0.3, 0.5, 0.8]))
def test_a_cluster_fails_exactly_when_its_ratio_reaches_the_threshold(
    outcomes: list[bool], threshold: float
) -> None:
    feed = Feed(clusters=ONE, quorum=1, failure_ratio=threshold, **ratio_settings)  # type: ignore[arg-type]
    failed_at = None
    for i, ok in enumerate(outcomes):
        feed.round({"a": ok, "b": True})
        if failed_at is None and feed.status("a") == "failed":
            failed_at = i
    assert failed_at == ratio_oracle(outcomes, threshold, 5)
    assert feed.events("a").count("cluster.failed") <= 1


@settings(max_examples=100)
@given(st.sampled_from([2, 3, 4, 6, 12]), st.data())
def test_a_ratio_above_the_threshold_for_a_window_always_fails(period: int, data: st.DataObject) -> None:
    """Any periodic outage failing at least half of each period, at any phase, fails the cluster on the
    round the window first holds min_rounds (= the window: whole periods) rounds, never before."""
    down = data.draw(st.integers((period + 1) // 2, period))
    phase = data.draw(st.integers(0, period - 1))
    pattern = ([False] * down + [True] * (period - down)) * 10
    feed = Feed(
        clusters=ONE,
        quorum=1,
        failure_threshold=1_000,
        failure_ratio=0.5,
        failure_ratio_window_s=12.0,
        failure_ratio_min_rounds=12,
    )
    statuses = []
    for ok in pattern[phase : phase + 30]:
        feed.round({"a": ok, "b": True})
        statuses.append(feed.status("a"))
    assert statuses.index("failed") == 11
    assert feed.events("a") == ["cluster.failed"]


# against a real daemon -----------------------------------------------------------------------------

FLAP_DETECTION = (
    "{failure_threshold: 3, success_threshold: 2, quorum: 1, recovery_hold: 1s, "
    "failure_ratio: {threshold: 0.3, window: 4s, min_rounds: 10}}"
)


@pytest.mark.timeout(90)
async def test_a_flapping_app_is_drained_once_kept_drained_and_restored_once_when_stable(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    """Down 0.4 s of every 0.8 s at 200 ms rounds (2 s of every 4 s at 1 s rounds, scaled down)."""
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(
            tmp_path, f, hook.url, nats_url=nats_server.url, probing=SHORT_PROBING, detection=FLAP_DETECTION
        )
        async with running(path) as daemon:
            assert daemon.bus is not None and daemon.runner is not None
            events = await collect(daemon.bus, subjects.EVENTS_ALL)
            runs = await collect(daemon.bus, subjects.RUNS_ALL)
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")

            app = f.apps["us-east"]
            weights_seen: list[int] = []
            drained_at: int | None = None
            for cycle in range(20):  # 16 s of flapping
                app.fail()
                await asyncio.sleep(0.4)
                app.heal()
                await asyncio.sleep(0.4)
                weights_seen.append((await f.weights())["us-east"])
                if drained_at is None and weights_seen[-1] == 0:
                    drained_at = cycle
            assert drained_at is not None, f"never drained while flapping: {weights_seen}"
            assert drained_at < 10, weights_seen
            assert weights_seen[drained_at:] == [0] * (len(weights_seen) - drained_at), weights_seen
            assert set(await f.traffic(30)) == {"eu-west", "ap-south"}

            async def restored() -> bool:
                assert daemon.runner is not None
                return (await f.weights())["us-east"] == 100 and not daemon.runner.active

            await wait_for(restored, 30, "us-east restored once stable")
            assert set(await f.traffic(30)) == {"eu-west", "us-east", "ap-south"}

        kinds = [e["type"] for e in events if e.get("cluster") == "us-east"]
        assert kinds.count("cluster.failed") == 1 and kinds.count("cluster.recovered") == 1, kinds
        steps = [(r["playbook"], r["type"], r["step"]) for r in runs]
        assert steps.count(("cluster-failover", "step.succeeded", "drain")) == 1, steps
        assert steps.count(("cluster-failback", "step.succeeded", "restore")) == 1, steps


def test_a_failure_ratio_that_can_never_fire_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(
        "probing: {interval: 5s}\n"
        "detection: {failure_ratio: {window: 20s, min_rounds: 10}}\n"
        "clusters: [{name: a, probes: [{name: p, tcp: {host: 127.0.0.1, port: 1}}]}]\n"
        "load_balancers: []\nnotifiers: []\n"
    )
    with pytest.raises(
        ValidationFailed, match=r"f.yaml:2: detection.failure_ratio.min_rounds: 10 rounds never fit"
    ):
        load_config(path)
