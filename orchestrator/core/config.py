"""The configuration file (DESIGN §4, a contract): typed models, defaults with reasons, cross-checks.

Durations are parsed into seconds and stored in fields whose names carry the unit (`interval_s`), while
the YAML keeps the contract's names (`interval`) through aliases. Secrets are `SecretStr` so they never
reach a log line or an API response by accident.

This module holds the root `Config` and the loader with its cross-checks; the sections' models live in
`config_daemon` (nats, api, leadership...), `config_clusters` (probing, detection, clusters) and
`config_drivers` (load balancers, notifiers), their shared field types in `config_fields`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, PrivateAttr

from orchestrator.core.config_clusters import ClusterConfig, DetectionConfig, ProbingConfig
from orchestrator.core.config_daemon import (
    ApiConfig,
    ChatopsConfig,
    DrillScheduleConfig,
    LeadershipConfig,
    NatsConfig,
    PlaybooksConfig,
    ReadinessConfig,
    ReconcileConfig,
    RunsConfig,
)
from orchestrator.core.config_drivers import LoadBalancerConfig, NotifierConfig
from orchestrator.core.config_fields import Model
from orchestrator.core.errors import Problem, ValidationFailed
from orchestrator.core.yamlsource import MAX_CONFIG_BYTES, Source, load_yaml, validate_model


class Config(Model):
    nats: NatsConfig = NatsConfig()
    state_dir: str = ".failover"
    api: ApiConfig = ApiConfig()
    probing: ProbingConfig = Field(default_factory=ProbingConfig)
    detection: DetectionConfig = DetectionConfig()
    clusters: list[ClusterConfig] = Field(min_length=1)
    load_balancers: list[LoadBalancerConfig] = []
    notifiers: list[NotifierConfig] = []
    playbooks: PlaybooksConfig = PlaybooksConfig()
    reconcile: ReconcileConfig = ReconcileConfig()
    leadership: LeadershipConfig = LeadershipConfig()
    chatops: ChatopsConfig = ChatopsConfig()
    runs: RunsConfig = RunsConfig()
    drills: list[DrillScheduleConfig] = []
    readiness: ReadinessConfig = ReadinessConfig()

    base_dir: str = Field(default=".", exclude=True)
    """Directory of the config file: relative paths in it (state_dir, playbooks) resolve from here."""
    _by_name: tuple[list[ClusterConfig], dict[str, ClusterConfig]] | None = PrivateAttr(default=None)

    @property
    def daemon_vantage(self) -> str:
        """The one vantage the management cluster's probing counts as, whatever the replicas are called."""
        return self.detection.daemon_vantage or self.probing.vantage

    @property
    def counted_vantages(self) -> list[str]:
        """`detection.vantages`, or the daemon's own vantage alone."""
        return list(self.detection.vantages or [self.daemon_vantage])

    def cluster(self, name: str) -> ClusterConfig:
        """The cluster called `name` (KeyError if none): a dict lookup, asked per event, run, workload
        and readiness pair; a scan of 10,000 clusters each time made those quadratic."""
        index = self._by_name
        if index is None or index[0] is not self.clusters:
            index = self._by_name = (self.clusters, {c.name: c for c in self.clusters})
        return index[1][name]

    def balancer(self, name: str) -> LoadBalancerConfig:
        for b in self.load_balancers:
            if b.name == name:
                return b
        raise KeyError(name)

    def notifier(self, name: str) -> NotifierConfig:
        for n in self.notifiers:
            if n.name == name:
                return n
        raise KeyError(name)

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def state_path(self) -> Path:
        return self.resolve(self.state_dir)

    def playbook_paths(self) -> list[Path]:
        return [self.resolve(p) for p in self.playbooks.paths]


# Drivers that this build can actually drive; the rest are refused by validate with a clear message
# rather than accepted and failing at the first failover.
IMPLEMENTED_LB_DRIVERS = {"haproxy", "gateway_api", "istio", "smi", "webhook"}
IMPLEMENTED_LB_DRIVERS |= {"emissary", "external_dns", "consul"}
IMPLEMENTED_LB_DRIVERS |= {"rfc2136", "powerdns"}
IMPLEMENTED_NOTIFIERS = {"webhook", "slack", "email", "nats", "teams", "pagerduty", "alertmanager"}
IMPLEMENTED_PROBES = {"http", "tcp", "kube_api", "kube_workload"}


def _cross_checks(source: Source, config: Config, set_aside: frozenset[str] = frozenset()) -> list[Problem]:
    """Checks across sections. `set_aside`: names of clusters that failed validation (reported already),
    which references may name without a second, misleading "unknown cluster"."""
    problems: list[Problem] = []
    cluster_names = [c.name for c in config.clusters]

    def unique(items: list[str], section: str) -> None:
        seen: set[str] = set()
        for i, name in enumerate(items):
            if name in seen:
                problems.append(source.problem((section, i, "name"), f"duplicate name {name!r}"))
            seen.add(name)

    unique(cluster_names, "clusters")
    unique([b.name for b in config.load_balancers], "load_balancers")
    unique([n.name for n in config.notifiers], "notifiers")
    for ci, cluster in enumerate(config.clusters):
        seen: set[str] = set()
        for pi, probe in enumerate(cluster.probes):
            if probe.name in seen:
                problems.append(
                    source.problem(
                        ("clusters", ci, "probes", pi, "name"), f"duplicate probe name {probe.name!r}"
                    )
                )
            seen.add(probe.name)
            if probe.kind not in IMPLEMENTED_PROBES:
                problems.append(
                    source.problem(
                        ("clusters", ci, "probes", pi, probe.kind),
                        f"probe kind {probe.kind!r} is not available in this version "
                        f"(available: {', '.join(sorted(IMPLEMENTED_PROBES))})",
                    )
                )
            elif probe.kind.startswith("kube") and cluster.kubernetes is None:
                problems.append(
                    source.problem(
                        ("clusters", ci, "probes", pi, probe.kind),
                        "needs the cluster's 'kubernetes:' section",
                    )
                )
    for bi, lb in enumerate(config.load_balancers):
        if lb.driver not in IMPLEMENTED_LB_DRIVERS:
            problems.append(
                source.problem(
                    ("load_balancers", bi, "driver"),
                    f"driver {lb.driver!r} is not available in this version "
                    f"(available: {', '.join(sorted(IMPLEMENTED_LB_DRIVERS))})",
                )
            )
        for member in lb.members:
            if member not in cluster_names and member not in set_aside:
                problems.append(
                    source.problem(("load_balancers", bi, "members", member), f"unknown cluster {member!r}")
                )
        servers = list(lb.members.values())
        for server in {s for s in servers if servers.count(s) > 1}:
            problems.append(
                source.problem(
                    ("load_balancers", bi, "members"), f"{server!r} is mapped from more than one cluster"
                )
            )
    for ni, notifier in enumerate(config.notifiers):
        if notifier.driver not in IMPLEMENTED_NOTIFIERS:
            problems.append(
                source.problem(
                    ("notifiers", ni, "driver"),
                    f"driver {notifier.driver!r} is not available in this version "
                    f"(available: {', '.join(sorted(IMPLEMENTED_NOTIFIERS))})",
                )
            )
    ratio = config.detection.failure_ratio
    explicit = "failure_ratio" in config.detection.model_fields_set  # the defaults fit 1 s rounds
    if explicit and ratio is not None and ratio.min_rounds > ratio.window_s / config.probing.interval_s:
        fits = ratio.window_s / config.probing.interval_s
        problems.append(
            source.problem(
                ("detection", "failure_ratio", "min_rounds"),
                f"{ratio.min_rounds} rounds never fit in the {ratio.window_s:g}s window at "
                f"probing.interval {config.probing.interval_s:g}s (at most {fits:g}): the rule would never "
                "fire; lower min_rounds or widen the window",
            )
        )
    unique([d.name for d in config.drills], "drills")
    for di, drill in enumerate(config.drills):
        for ci, name in enumerate(drill.clusters):
            found = next((c for c in config.clusters if c.name == name), None)
            if found is None and name in set_aside:
                continue
            if found is None or found.kubernetes is None:
                why = "unknown cluster" if found is None else "a cluster without `kubernetes:`"
                problems.append(source.problem(("drills", di, "clusters", ci), f"{why} {name!r}"))
            elif drill.deployment is None and not any(p.kube_workload for p in found.probes):
                problems.append(
                    source.problem(
                        ("drills", di, "clusters", ci),
                        f"{name!r} has no kube_workload probe: give the drill namespace and deployment",
                    )
                )
    vantages = config.detection.vantages or []
    for vantage in {v for v in vantages if vantages.count(v) > 1}:
        problems.append(source.problem(("detection", "vantages"), f"{vantage!r} is listed twice"))
    if isinstance(config.detection.quorum, int):
        probers = config.detection.quorum
        if probers < 1:
            problems.append(source.problem(("detection", "quorum"), "must be at least 1"))
        elif probers > len(config.counted_vantages):
            problems.append(
                source.problem(
                    ("detection", "quorum"),
                    f"{probers} vantages can never agree: detection.vantages counts "
                    f"{len(config.counted_vantages)} ({', '.join(config.counted_vantages)})",
                )
            )
    api = config.api
    if api.anonymous and not api.loopback and not api.allow_anonymous:
        problems.append(
            source.problem(
                ("api", "listen"),
                f"{api.listen} is not loopback and api.tokens is empty: anyone who can reach it would be "
                "admin; configure api.tokens (or api.allow_anonymous: true to accept that)",
            )
        )
    return problems


def anonymous_exposure(config: Config) -> str | None:
    """The warning `validate` and the daemon's start give when `api.allow_anonymous` opens the API."""
    api = config.api
    if not api.anonymous or api.loopback:
        return None
    return (
        f"WARNING: api.allow_anonymous: the API on {api.listen} has no tokens: anyone who can reach it "
        "is anonymous admin and can drain every cluster"
    )


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    """Load and check a config file; raise ValidationFailed listing every problem with its line."""
    source = load_yaml(path, env=env, max_bytes=MAX_CONFIG_BYTES)
    config = validate_model(source, Config)
    problems = _cross_checks(source, config)
    if problems:
        raise ValidationFailed(problems)
    base = str(Path(path).resolve().parent)
    return config.model_copy(update={"base_dir": base})
