"""The dashboard's headline and panels, offline: the rules behind each colour (`api.overview`), and the
page they render. The issue's case first: every cluster at weight 0 used to show a large green
"Automation active: nothing frozen or paused."; now it is red and says no cluster serves."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from orchestrator.api import dashboard, overview
from orchestrator.bus.history import StoredEvent

LEADER = {"present": True, "holder": "mgmt-0", "term": 3, "this_replica": True}
READY = {"nats": True, "detector": True, "leader": True}
STATUS: dict[str, Any] = {
    "ready": True,
    "frozen": False,
    "paused": [],
    "suspect_vantages": [],
    "waiting_approval": [],
}


def fleet(weights: dict[str, int], states: dict[str, str] | None = None) -> list[dict[str, Any]]:
    states = states or {}
    return [
        {
            "name": name,
            "state": states.get(name, "healthy"),
            "weights": {"global": w},
            "weight": 100,
            "labels": {},
        }
        for name, w in weights.items()
    ]


def head(clusters: list[dict[str, Any]], **kw: Any) -> overview.Headline:
    args: dict[str, Any] = {
        "clusters": clusters,
        "unreadable": [],
        "min_healthy": 1,
        "leader": LEADER,
        "status": STATUS,
        "active": [],
        "checks": READY,
        **kw,
    }
    return overview.headline(**args)


def test_every_cluster_at_weight_zero_is_red_not_green() -> None:
    clusters = fleet({"eu-west": 0, "us-east": 0, "ap-south": 0})
    h = head(clusters)
    assert (h.level, h.title) == ("bad", "0 of 3 clusters serving")
    assert "No cluster serves traffic" in h.reasons
    seen = {
        "headline": h,
        "clusters": [{**c, "serving": False, "change": None, "probes": []} for c in clusters],
        "timeline": [],
        "approvals": [],
        "leader": LEADER,
        "version": "0.1.0",
        "readiness": None,
        "min_healthy": 1,
    }
    page = dashboard.render(
        status=STATUS,
        clusters={"clusters": clusters, "unreadable_balancers": []},
        runs=[],
        nonce="n",
        seen=seen,
    )
    assert '<section id="headline" class="bad"' in page and "0 of 3 clusters serving" in page
    assert 'class="ok"' not in page


def test_each_rule_and_its_colour() -> None:
    assert head(fleet({"a": 100, "b": 100, "c": 100})) == overview.Headline(
        "ok", "3 of 3 clusters serving", [], 3, 3
    )

    h = head(fleet({"a": 100, "b": 100, "c": 100}, {"b": "failed"}))
    assert h.level == "bad" and h.title == "2 of 3 clusters serving"
    assert h.reasons == ["b failed but still has weight in global"]

    h = head(fleet({"a": 100, "b": 0, "c": 0}), min_healthy=2)
    assert h.level == "bad" and "Fewer clusters serve than min_healthy_clusters (2)" in h.reasons

    h = head(fleet({"a": 100, "b": 100}), leader={"present": False})
    assert h.level == "bad" and h.reasons[0].startswith("No leader")

    h = head(fleet({"a": 100, "b": 100}), checks={**READY, "nats": False})
    assert h.level == "bad" and h.reasons == ["Not ready: not connected to NATS"]

    # unreadable: red, and the count is not made up from nothing
    unknown = [{**c, "weights": {}} for c in fleet({"a": 100, "b": 100})]
    h = head(unknown, unreadable=["global"])
    assert h.level == "bad" and h.title == "Which clusters serve is unknown"
    assert h.reasons == ["Balancer global cannot be read: where traffic goes is unknown"]

    # a failover going on, the failed cluster drained: amber
    run = {"id": "r1", "playbook": "cluster-failover", "cluster": "b", "event": "cluster.failed"}
    h = head(
        fleet({"a": 100, "b": 0, "c": 100}, {"b": "failed"}),
        active=[run],
        status={**STATUS, "waiting_approval": ["r1"]},
    )
    assert h.level == "warn" and h.title == "2 of 3 clusters serving"
    assert h.reasons == [
        "Failover in progress: cluster-failover · b (waiting for approval)",
        "b failed, drained",
    ]

    h = head(fleet({"a": 100}), status={**STATUS, "frozen": True, "paused": [{"scope": "all"}]})
    assert h.level == "warn" and len(h.reasons) == 2
    h = head(fleet({"a": 100}), readiness={"ready": False, "not_ready": 2})
    assert h.level == "warn" and "2 failover plan(s)" in h.reasons[0]


def test_leader_evidence_approvals_and_timeline() -> None:
    assert overview.leader_view(False, {"holder": "mgmt-1", "term": 7}, False)["holder"] == "mgmt-1"
    assert overview.leader_view(True, None, True)["present"] is True
    assert overview.leader_view(False, None, False)["present"] is False

    evidence = {"failing": {"eu": {"ingress": {"consecutive_fail": 3, "detail": "connection refused"}}}}
    assert overview.evidence_lines(evidence) == ["eu/ingress: 3 failures in a row: connection refused"]

    record = {
        "plan": {"steps": [{"id": "ok", "with": {"summary": "drain b?", "approvers": ["role:operator"]}}]},
        "steps": {"ok": {"status": "running", "waiting_approval": True, "until": 1_000_600.0}},
    }
    view = overview.approval_view(record, now=1_000_000.0)
    assert view["summary"] == "drain b?" and view["approvers"] == ["role:operator"]
    assert view["left_s"] == 600.0 and view["deadline"] == "1970-01-12T13:56:40.000Z"

    at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    marks = {"first_failure_at": "2026-01-01T12:00:00.000Z", "quorum_at": "2026-01-01T12:00:00.400Z"}
    failed = {"cluster": "b", "from": "healthy", "to": "failed", "reason": "quorum", "evidence": evidence}
    run = {"run_id": "r1", "playbook": "cluster-failover"}
    finished = {**run, "type": "finished", "detail": {"status": "succeeded", "timeline": marks}}
    events = [
        StoredEvent(1, "failover.events.cluster.b", "cluster", at, failed),
        StoredEvent(2, "failover.runs.r1", "run", at, {**run, "type": "step.succeeded", "detail": {}}),
        StoredEvent(3, "failover.runs.r1", "run", at, finished),
    ]
    entries, last = overview.timeline_view(events, {"r1": {"cluster": "b"}})
    assert [e["kind"] for e in entries] == ["run", "cluster"], "newest first; step successes left out"
    assert entries[0]["text"] == "cluster-failover · b finished succeeded · recovery detect 0.400s"
    assert last["b"]["evidence"] == ["eu/ingress: 3 failures in a row: connection refused"]
