"""Prometheus metrics (`failover_` prefix), held in one registry per daemon: no module-level globals,
so tests can run several daemons in one process."""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from orchestrator import __version__
from orchestrator.core.metrics_fast import LabelledGauge

STATES = ("unknown", "healthy", "degraded", "failed")

# a `_created` series per counter and histogram child doubles the series count for nothing an alert uses
disable_created_metrics()  # type: ignore[no-untyped-call]
ORIGINS_MAX = 10_000
"""Runs whose origin `FirstActions` remembers at once: far above the runs a daemon has going."""


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.reports = ReportCounts()
        """`failover_probe_reports_total{result}`: plain counts (a prometheus_client Counter's locked
        increment was a tenth of the detector's cost per report)."""
        r.register(self.reports)
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
        self.cluster_state = LabelledGauge(
            "failover_cluster_state", "1 for the state each cluster is in", ["cluster", "state"]
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
        self.failed_cluster_weighted = LabelledGauge(
            "failover_failed_cluster_weighted",
            "1 while a failed cluster still carries traffic in some balancer (page on it)",
            ["cluster"],
        )
        self.balancer_drift = LabelledGauge(
            "failover_balancer_drift",
            "1 while a balancer holds another weight than the one we hold for a cluster and it was not "
            "put back (DNS drift of a cluster that is not failed, a re-assertion that did not go "
            "through), 0 once it matches again; no series once nothing is held",
            ["balancer", "cluster"],
        )
        self.task_restarts = Counter(
            "failover_task_restarts", "Daemon tasks that died and were restarted", ["task"], registry=r
        )
        self.up = Gauge("failover_up", "1 while the daemon runs", registry=r)
        self.readiness = LabelledGauge(
            "failover_readiness",
            "1 when the failover playbook would work now for this cluster's loss, 0 when a readiness check "
            "failed (DESIGN §17; set by the leader, cleared on followers)",
            ["playbook", "cluster"],
        )
        self.readiness_checked = Gauge(
            "failover_readiness_last_check_timestamp_seconds",
            "When the leader's last readiness pass finished (alert when it is older than a few intervals)",
            registry=r,
        )

        self.build_info = Gauge(
            "failover_build_info", "1, labelled with the running build", ["version", "python"], registry=r
        )
        self.build_info.labels(version=__version__, python=platform.python_version()).set(1)
        self.balancer_weight = LabelledGauge(
            "failover_balancer_weight",
            "Each cluster's current native weight in each balancer, as the actuator last read or wrote it",
            ["balancer", "cluster"],
        )
        self.probe_result = LabelledGauge(
            "failover_probe_result",
            "The last report of each probe of each cluster from each listed vantage: 1 passed, 0 failed",
            ["cluster", "probe", "vantage"],
        )
        self.probe_reported = LabelledGauge(
            "failover_probe_last_report_timestamp_seconds",
            "When the last report of each probe of each cluster from each vantage was made (its `ts`)",
            ["cluster", "probe", "vantage"],
        )
        self.first_actions = FirstActions(self.detection_to_action)
        self._probe_series: set[tuple[str, str, str]] = set()
        self._weights_seen: dict[str, dict[str, int]] = {}
        self.per_cluster = [
            self.cluster_state,
            self.balancer_weight,
            self.balancer_drift,
            self.failed_cluster_weighted,
            self.readiness,
            self.probe_result,
            self.probe_reported,
        ]
        """The families with a series per cluster (`metrics_fast`): rendered by `render`, not by
        prometheus_client."""

    def families(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Every family `/metrics` can expose: its name -> (type, label names). What the alert rules
        and the Grafana dashboard are checked against."""
        out: dict[str, tuple[str, tuple[str, ...]]] = {}
        for value in vars(self).values():
            if isinstance(value, MetricWrapperBase):
                out[value._name] = (str(value._type), tuple(value._labelnames))
        for family in self.per_cluster:
            out[family.name] = ("gauge", family.labelnames)
        out["failover_probe_reports"] = ("counter", ("result",))
        return out

    def render(self) -> bytes:
        """The whole exposition (`/metrics`): the registry, then the per-cluster families."""
        return generate_latest(self.registry) + "".join(f.render() for f in self.per_cluster).encode()

    def observe_weights(self, balancer: str, weights: Mapping[str, int]) -> None:
        """A balancer's weights as just read or written (the `on_weights` of `BalancerActuator`). Only
        the weights that changed touch the gauge: a read of a 10,000-member balancer, once per drain,
        cost 10,000 label lookups."""
        seen = self._weights_seen.setdefault(balancer, {})
        for cluster, weight in weights.items():
            if seen.get(cluster) != weight:
                self.balancer_weight.labels(balancer=balancer, cluster=cluster).set(weight)
                seen[cluster] = weight

    def observe_probe(self, cluster: str, probe: str, vantage: str, ok: bool, made_at: float) -> None:
        """One admitted health report (unknown vantages, clusters and probes never get this far, so the
        series are bounded by the config)."""
        key = (cluster, probe, vantage)
        if key not in self._probe_series:  # the label text once per series, then plain dict stores
            self.probe_result.labels(*key)
            self.probe_reported.labels(*key)
            self._probe_series.add(key)
        self.probe_result.values[key] = 1.0 if ok else 0.0
        self.probe_reported.values[key] = made_at

    def set_cluster_state(self, cluster: str, state: str) -> None:
        for s in STATES:
            self.cluster_state.labels(cluster=cluster, state=s).set(1 if s == state else 0)


class ReportCounts(Collector):
    def __init__(self) -> None:
        self.ok = 0
        self.fail = 0

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "failover_probe_reports", "Health reports ingested by the detector", labels=["result"]
        )
        family.add_metric(["ok"], self.ok)
        family.add_metric(["fail"], self.fail)
        yield family


class FirstActions:
    """`failover_detection_to_first_action_seconds` for the runs a detected change started, only.

    The executor reports `since_event_s` for every run's first action, but from a human's command (a
    manual run, its event stamped when the command came) or from a drill's injected fault the figure
    says nothing about detection, and mixed in it would hide how fast the automation really is. The run
    events say which is which: `started` carries the event type and the actor; `drill.started` and
    `drill.finished` system events mark the clusters being drilled.
    """

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.automatic: dict[str, bool] = {}
        """run id -> started by a detected change (not a human, not a drill), until it finishes."""
        self.drilled: set[str] = set()

    def drill(self, cluster: str, active: bool) -> None:
        """A drill started (or finished) on `cluster`: its runs meanwhile are practice."""
        if active:
            self.drilled.add(cluster)
        else:
            self.drilled.discard(cluster)

    def run_event(self, run_id: str, kind: str, detail: Mapping[str, Any]) -> None:
        """Every run event, in order: `started` records the origin, the first action is observed once
        (automatic runs only), `finished` forgets the run."""
        if kind == "started" and "guard_bypassed" not in detail:
            event, cluster = str(detail.get("event") or ""), detail.get("cluster")
            if len(self.automatic) >= ORIGINS_MAX:
                self.automatic.pop(next(iter(self.automatic)))
            self.automatic[run_id] = (
                event.startswith("cluster.") and not detail.get("actor") and cluster not in self.drilled
            )
        elif "since_event_s" in detail and self.automatic.get(run_id):
            self.histogram.observe(float(detail["since_event_s"]))
        if kind == "finished":
            self.automatic.pop(run_id, None)
