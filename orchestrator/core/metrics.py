"""Prometheus metrics (`failover_` prefix), held in one registry per daemon: no module-level globals,
so tests can run several daemons in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STATES = ("unknown", "healthy", "degraded", "failed")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.reports = Counter(
            "failover_probe_reports", "Health reports ingested by the detector", ["result"], registry=r
        )
        self.reports_ignored = Counter(
            "failover_probe_reports_ignored",
            "Valid reports dropped: unknown cluster/probe, duplicate, superseded boot",
            registry=r,
        )
        self.reports_dropped = Counter(
            "failover_reports_dropped",
            "Valid reports dropped before the detector: unknown_vantage (not in detection.vantages), "
            "unknown_cluster, unknown_probe (not configured), stale (made longer than stale_after ago, "
            "e.g. buffered through a NATS outage), future (stamped more than stale_after ahead)",
            ["reason"],
            registry=r,
        )
        self.bad_records = Counter(
            "failover_bad_records",
            "KV values that failed their schema when read back, quarantined (quarantine.<bucket>.<key>)",
            ["bucket"],
            registry=r,
        )
        self.malformed = Counter(
            "failover_malformed_messages",
            "Messages that did not parse, dropped",
            ["subject_kind"],
            registry=r,
        )
        self.cluster_state = Gauge(
            "failover_cluster_state", "1 for the state each cluster is in", ["cluster", "state"], registry=r
        )
        self.transitions = Counter(
            "failover_cluster_transitions", "Cluster state changes", ["cluster", "to"], registry=r
        )
        self.runs = Counter("failover_runs", "Playbook runs finished", ["playbook", "outcome"], registry=r)
        self.run_events = Counter("failover_run_events", "Run events by type", ["type"], registry=r)
        self.guard_refusals = Counter(
            "failover_guard_refusals", "Actions stopped by a guard", ["rule"], registry=r
        )
        self.detection_to_action = Histogram(
            "failover_detection_to_first_action_seconds",
            "From the transition that started a run to its first step succeeding",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.recovery = Histogram(
            "failover_recovery_seconds",
            "Stages of the recovery timeline of runs a detected failure started (DESIGN §15): detect "
            "(first failure -> quorum), decide (-> event), start (-> run start), act (-> first effect), "
            "moved (first failure -> balancer read back drained), total (first failure -> run finished)",
            ["stage"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60, 120, 300),
            registry=r,
        )
        self.observer_frozen = Gauge(
            "failover_observer_frozen", "1 while the observer guard holds automation frozen", registry=r
        )
        self.suspect_vantages = Gauge(
            "failover_suspect_vantages",
            "Vantages whose reports count as stale because they disagree",
            registry=r,
        )
        self.leader = Gauge("failover_leader", "1 while this replica holds the leader lease", registry=r)
        self.leader_term = Gauge(
            "failover_leader_term", "The term (lease revision) this replica last led with", registry=r
        )
        self.step_duration = Histogram(
            "failover_step_duration_seconds",
            "Playbook step durations",
            ["playbook", "action", "outcome"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300),
            registry=r,
        )
        self.balancer_readable = Gauge(
            "failover_balancer_readable",
            "1 when the leader's last read of this balancer answered, 0 when it could not be read",
            ["balancer"],
            registry=r,
        )
        self.failed_cluster_weighted = Gauge(
            "failover_failed_cluster_weighted",
            "1 while a failed cluster still carries traffic in some balancer (page on it)",
            ["cluster"],
            registry=r,
        )
        self.task_restarts = Counter(
            "failover_task_restarts", "Daemon tasks that died and were restarted", ["task"], registry=r
        )
        self.up = Gauge("failover_up", "1 while the daemon runs", registry=r)

    def set_cluster_state(self, cluster: str, state: str) -> None:
        for s in STATES:
            self.cluster_state.labels(cluster=cluster, state=s).set(1 if s == state else 0)
