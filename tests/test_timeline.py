"""The recovery timeline of every run (DESIGN §15): the detector stamps when the failure was first seen
and when a quorum saw it, the run adds its own marks, and the journal, the run events, the
`failover_recovery_seconds{stage}` histograms and `failover ctl run ID` all carry them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.bus.client import Bus
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core import subjects
from orchestrator.detection.outputs import Transition
from tests.helpers import collect, fleet, hook_receiver, wait_for, write_config
from tests.test_api import TOKENS, VIEWER
from tests.test_ctl import ctl
from tests.test_daemon import all_healthy, metrics_text, running
from tests.test_detector import T0, V3, healthy_feed

pytestmark = pytest.mark.timeout(90)

ORDER = (
    "first_failure_at",
    "quorum_at",
    "event_at",
    "run_started_at",
    "first_effect_at",
    "traffic_moved_at",
)


def _at(value: Any) -> float:
    assert isinstance(value, str), value
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _assert_ordered(marks: dict[str, Any]) -> None:
    times = [_at(marks[key]) for key in ORDER]
    assert times == sorted(times), dict(zip(ORDER, times, strict=True))


def test_the_failed_event_says_when_the_failure_was_first_seen_and_when_a_quorum_saw_it() -> None:
    feed = healthy_feed(V3, failure_threshold=3, quorum=2)
    start = feed.now
    feed.round({"a": False}, ("v1",))  # v1 first: the failing streak the timeline starts from
    feed.round({"a": False}, ("v1", "v2"))
    feed.round({"a": False}, ("v1", "v2"))  # v1 crosses its threshold here; no quorum yet
    feed.report("a", False, vantage="v2")  # v2 crosses: quorum 2 reached now
    failed = [t for t in feed.transitions if t.type == "cluster.failed"]
    assert len(failed) == 1
    evidence = failed[0].evidence
    assert _at(evidence["first_failure_at"]) == pytest.approx(start)
    assert _at(evidence["quorum_at"]) == pytest.approx(feed.now)
    assert _at(evidence["first_failure_at"]) < _at(evidence["quorum_at"]) <= failed[0].at


def test_the_degraded_event_carries_the_first_failure_too() -> None:
    feed = healthy_feed(V3, failure_threshold=2, quorum=2)
    start = feed.now
    for _ in range(2):
        feed.round({"a": False}, ("v1",))
        feed.round({"a": True}, ("v2", "v3"), advance=0.0)
    degraded = [t for t in feed.transitions if isinstance(t, Transition) and t.type == "cluster.degraded"]
    assert degraded, feed.transitions
    evidence = degraded[0].evidence
    assert _at(evidence["first_failure_at"]) == pytest.approx(start)
    assert _at(evidence["first_failure_at"]) <= _at(evidence["quorum_at"]) <= degraded[0].at


def test_a_resumed_run_keeps_the_timeline_it_journalled() -> None:
    """Crash and resume: the marks are in the journal record, and filling in what is missing never moves
    one already there (a resumed run started when it first started)."""
    from orchestrator.playbooks import timeline

    record: dict[str, Any] = {
        "created_at": "2026-01-01T12:00:05.000Z",
        "event": {
            "ts": "2026-01-01T12:00:04.500Z",
            "evidence": {
                "first_failure_at": "2026-01-01T12:00:01.000Z",
                "quorum_at": "2026-01-01T12:00:04.000Z",
            },
        },
        "timeline": {"first_effect_at": "2026-01-01T12:00:05.250Z"},
    }
    marks = timeline.begin(record)
    assert marks["first_failure_at"] == "2026-01-01T12:00:01.000Z"
    assert marks["run_started_at"] == "2026-01-01T12:00:05.000Z"
    timeline.mark_effect(record, "lb.drain", T0)  # a step repeated after the resume
    assert record["timeline"]["first_effect_at"] == "2026-01-01T12:00:05.250Z"
    stages = timeline.stages(record["timeline"])
    assert stages == pytest.approx({"detect": 3.0, "decide": 0.5, "start": 0.5, "act": 0.25})


async def test_every_mark_in_order_in_the_journal_events_metrics_and_ctl(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    async with hook_receiver() as hook, fleet(tmp_path, haproxy_binary) as f:
        path = write_config(tmp_path, f, hook.url, nats_url=nats_server.url, tokens=TOKENS)
        async with running(path) as daemon:
            assert daemon.bus is not None and daemon.api is not None
            runs = await collect(daemon.bus, subjects.RUNS_ALL)
            await wait_for(lambda: all_healthy(daemon), 10, "all clusters healthy")

            await f.apps["us-east"].stop()

            def finished() -> bool:
                return any(r["type"] == "finished" and r["playbook"] == "cluster-failover" for r in runs)

            await wait_for(finished, 15, "the failover run finished")
            done = next(r for r in runs if r["type"] == "finished" and r["playbook"] == "cluster-failover")
            assert done["detail"]["status"] == "succeeded", done
            _assert_ordered(done["detail"]["timeline"])
            drained = next(r for r in runs if r["type"] == "step.succeeded" and r["step"] == "drain")
            assert "traffic_moved_at" in drained["detail"]["timeline"]

            found = await Bus.kv_get(daemon.bus.kv.runs, f"run.{done['run_id']}")
            assert found is not None
            marks = found[0]["timeline"]
            _assert_ordered(marks)
            assert _at(marks["traffic_moved_at"]) <= _at(marks["verified_at"])
            assert marks == done["detail"]["timeline"]

            text = await metrics_text(daemon)
            for stage in ("detect", "decide", "start", "act", "moved", "total"):
                assert f'failover_recovery_seconds_count{{stage="{stage}"}} 1.0' in text, stage

            api = f"http://127.0.0.1:{daemon.api.port}"
            r = await ctl(api, "run", done["run_id"], token=VIEWER)
            assert r.code == 0, r.err
            rows = {line.split("  ")[0].strip(): line for line in r.out.splitlines() if line.strip()}
            for label in ("first failure", "quorum", "event", "run started", "first effect", "traffic moved"):
                assert label in rows, r.out
            assert "+0.000s" in rows["first failure"], r.out
            assert "moved" in rows["traffic moved"] and "total" in r.out, r.out


def test_the_dashboard_run_card_shows_the_recovery_stages() -> None:
    from orchestrator.api import dashboard

    run = {
        "id": "0123456789abcdef",
        "playbook": "cluster-failover",
        "status": "succeeded",
        "cluster": "us-east",
        "event": "cluster.failed",
        "created_at": "2026-01-01T12:00:05.000Z",
        "finished_at": "2026-01-01T12:00:06.000Z",
        "actor": None,
        "force": False,
        "error": None,
        "steps": [],
        "timeline": {
            "first_failure_at": "2026-01-01T12:00:01.000Z",
            "quorum_at": "2026-01-01T12:00:04.000Z",
            "event_at": "2026-01-01T12:00:04.500Z",
            "run_started_at": "2026-01-01T12:00:05.000Z",
            "first_effect_at": "2026-01-01T12:00:05.250Z",
            "traffic_moved_at": "2026-01-01T12:00:05.500Z",
            "finished_at": "2026-01-01T12:00:06.000Z",
        },
    }
    page = dashboard.render(status={}, clusters={}, runs=[run], nonce="n")
    assert (
        "recovery: detect 3.000s · decide 0.500s · start 0.500s · act 0.250s · moved 4.500s · total 5.000s"
    ) in page
    # a run without one (older records, a run blocked before it began) renders as before
    page = dashboard.render(status={}, clusters={}, runs=[{**run, "timeline": None}], nonce="n")
    assert "recovery:" not in page.split("<script")[0]
