"""The run timeline's DNS marks (issue 18): when a DNS balancer's record changed, and when the TTL served
before the change runs out for resolvers; other balancers get neither."""

from __future__ import annotations

from typing import Any

from orchestrator.playbooks import timeline


def record(result: Any) -> dict[str, Any]:
    return {
        "steps": {"drain": {"action": "lb.drain", "status": "succeeded", "result": result}},
        "timeline": {},
    }


STEP = {"id": "drain", "action": "lb.drain", "with": {}}
WALL = 1_780_000_000.25


def test_a_dns_drain_marks_the_change_and_the_ttl_expiry() -> None:
    run = record({"balancer": "dns", "cluster": "us-east", "after": 0, "ttl_s": 300})
    made = timeline.mark_verified(run, STEP, WALL)
    assert made["dns_changed_at"] == made["traffic_moved_at"] == "2026-05-28T20:26:40.250Z"
    assert made["ttl_expires_at"] == "2026-05-28T20:31:40.250Z"
    later = timeline.mark_verified(run, STEP, WALL + 10)  # set once: the first DNS change of the run
    assert "dns_changed_at" not in later and run["timeline"]["ttl_expires_at"] == made["ttl_expires_at"]
    rows = {label: stage for label, _at, _offset, stage in timeline.table(run["timeline"])}
    assert "DNS record changed" in rows and "DNS TTL expired" in rows


def test_other_balancers_and_drifted_restores_mark_no_dns_times() -> None:
    assert "ttl_expires_at" not in timeline.mark_verified(
        record({"balancer": "global", "after": 0}), STEP, WALL
    )
    drifted = record({"balancer": "dns", "drift": "expected 0, found 1", "ttl_s": 30})
    assert "ttl_expires_at" not in timeline.mark_verified(drifted, STEP, WALL)


def test_for_each_takes_the_longest_ttl_and_resolvers_is_a_stage() -> None:
    run = record([{"ttl_s": 30}, {"ttl_s": 60}])
    made = timeline.mark_verified(run, STEP, WALL)
    assert timeline.parse(made["ttl_expires_at"]) == WALL + 60
    run["timeline"]["first_failure_at"] = "2026-05-28T20:26:39.250Z"
    assert timeline.stages(run["timeline"])["resolvers"] == 61.0
