"""NATS subject, stream and KV names (DESIGN §5, a contract), in one place."""

from __future__ import annotations

HEALTH_PREFIX = "failover.health"
HEALTH_ALL = "failover.health.>"
EVENTS_ALL = "failover.events.>"
SYSTEM_EVENTS = "failover.events.system"
RUNS_ALL = "failover.runs.>"
AUDIT = "failover.audit"
INTERNAL_COMMANDS = "failover.internal.cmd"
"""Commands a follower forwards to the leader, already authorized (`{actor, role}`, never a token);
only daemon credentials may use it (DESIGN §12)."""
COMMANDS = "failover.cmd"

STREAM_HEALTH = "FAILOVER_HEALTH"
STREAM_EVENTS = "FAILOVER_EVENTS"

KV_LEADER = "failover-leader"
KV_RUNS = "failover-runs"
KV_STATE = "failover-state"


def health(vantage: str, cluster: str, probe: str) -> str:
    """`failover.health.<vantage>.<cluster>.<probe>` (DESIGN §12): the vantage leads, so a NATS
    permission can bind a prober's credential to its own vantage (`failover.health.eu-prober.>`)."""
    return f"{HEALTH_PREFIX}.{vantage}.{cluster}.{probe}"


def cluster_events(cluster: str) -> str:
    return f"failover.events.cluster.{cluster}"


def runs(run_id: str) -> str:
    return f"failover.runs.{run_id}"
