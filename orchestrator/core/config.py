"""The configuration file (DESIGN §4, a contract): typed models, defaults with reasons, cross-checks.

Durations are parsed into seconds and stored in fields whose names carry the unit (`interval_s`), while
the YAML keeps the contract's names (`interval`) through aliases. Secrets are `SecretStr` so they never
reach a log line or an API response by accident.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from orchestrator.core.durations import parse_duration
from orchestrator.core.errors import Problem, ValidationFailed
from orchestrator.core.yamlsource import Source, load_yaml, validate_model

DURATION_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$", "examples": ["800ms", "5s", "10m"]},
        {"type": "number", "minimum": 0, "description": "seconds"},
    ]
}
Seconds = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(DURATION_SCHEMA)]
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _dns_label(value: str) -> str:
    if not NAME_RE.match(value) or len(value) > 63:
        raise ValueError(f"{value!r} must match [a-z0-9-]+ (lower case, digits, dashes; at most 63)")
    return value


Name = Annotated[str, BeforeValidator(lambda v: _dns_label(v) if isinstance(v, str) else v)]


def http_url(value: str) -> str:
    """Validator shared by every URL field that must be http(s)."""
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


HttpUrlStr = Annotated[str, AfterValidator(http_url)]


class TlsConfig(Model):
    ca: str | None = None
    cert: str | None = None
    key: str | None = None


class NatsConfig(Model):
    url: str | None = None
    """None starts an embedded nats-server under state_dir (single replica only)."""
    creds: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    tls: TlsConfig | None = None
    connect_timeout_s: Seconds = Field(default=5.0, alias="connect_timeout")


class ApiToken(Model):
    token: SecretStr
    role: Literal["viewer", "operator", "admin"] = "viewer"
    name: str | None = None
    """Who this token is, in the audit trail and for `approval: {approvers: [...]}`."""


class ApiConfig(Model):
    listen: str = "127.0.0.1:8080"
    """Loopback by default: the API can drain clusters, so exposing it is a deliberate choice."""
    tokens: list[ApiToken] = []

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected host:port, got {value!r}")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class ProbingConfig(Model):
    interval_s: Seconds = Field(default=1.0, alias="interval", gt=0)
    """1 s rounds with a 3-round threshold move traffic in ~3-4 s, well ahead of DNS-based failover."""
    timeout_s: Seconds = Field(default=0.8, alias="timeout", gt=0)
    """Below the interval so a black-holed endpoint cannot make rounds overlap."""
    jitter_s: Seconds = Field(default=0.05, alias="jitter", ge=0)
    """Spreads probes inside a round so a fleet does not hit NATS in one burst; kept under 100 ms."""
    concurrency: int = Field(default=64, ge=1)
    """Probes in flight at once per prober: bounds sockets and CPU on a large fleet."""
    vantage: str = Field(default_factory=socket.gethostname)

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> ProbingConfig:
        if self.timeout_s > self.interval_s:
            raise ValueError("probing.timeout must not exceed probing.interval (rounds would overlap)")
        return self


class FlapConfig(Model):
    max_transitions: int = Field(default=4, ge=1)
    window_s: Seconds = Field(default=600.0, alias="window", gt=0)


class DetectionConfig(Model):
    failure_threshold: int = Field(default=3, ge=1)
    """Three consecutive failed rounds: one lost packet or GC pause never fails a cluster."""
    success_threshold: int = Field(default=3, ge=1)
    quorum: Literal["majority"] | Annotated[int, Field(ge=1)] = "majority"
    stale_after_s: Seconds = Field(default=5.0, alias="stale_after", gt=0)
    recovery_hold_s: Seconds = Field(default=30.0, alias="recovery_hold", ge=0)
    """Healthy this long before failback, so a cluster that bounces is not handed traffic twice."""
    max_failed_fraction: float = Field(default=0.5, gt=0, le=1)
    flap: FlapConfig = FlapConfig()


class KubernetesRef(Model):
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False


class HttpProbe(Model):
    url: HttpUrlStr
    expect_status: list[int] = [200]
    body_regex: str | None = None
    latency_limit_s: Seconds | None = Field(default=None, alias="latency_limit")
    method: Literal["GET", "HEAD"] = "GET"
    headers: dict[str, str] = {}
    verify_tls: bool = True

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"invalid regular expression: {e}") from e
        return value


class TcpProbe(Model):
    host: str
    port: int = Field(ge=1, le=65535)


class KubeApiProbe(Model):
    pass


class KubeWorkloadProbe(Model):
    namespace: str
    deployment: str
    min_available_ratio: float = Field(default=0.5, gt=0, le=1)


PROBE_KINDS = ("http", "tcp", "kube_api", "kube_workload")


class ProbeConfig(Model):
    name: Name
    http: HttpProbe | None = None
    tcp: TcpProbe | None = None
    kube_api: KubeApiProbe | None = None
    kube_workload: KubeWorkloadProbe | None = None
    impact: Literal["fail", "degrade"] | None = None
    """Default: `fail` for http/tcp; `degrade` for kube probes, so a control-plane upgrade never drains
    a cluster that still serves."""
    timeout_s: Seconds | None = Field(default=None, alias="timeout", gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> ProbeConfig:
        kinds = [k for k in PROBE_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a probe needs exactly one of {', '.join(PROBE_KINDS)}; got {kinds or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in PROBE_KINDS if getattr(self, k) is not None)

    @property
    def effective_impact(self) -> Literal["fail", "degrade"]:
        if self.impact is not None:
            return self.impact
        return "fail" if self.kind in ("http", "tcp") else "degrade"


class ClusterConfig(Model):
    name: Name
    labels: dict[str, str] = {}
    weight: int = Field(default=100, ge=0)
    """Nominal traffic share; each balancer driver maps it onto its native range."""
    kubernetes: KubernetesRef | None = None
    probes: list[ProbeConfig] = []


class HaproxyLb(Model):
    admin: list[str] = Field(min_length=1)
    """Every instance of this balancer; a change counts only when all of them have it."""
    backend: str
    timeout_s: Seconds = Field(default=2.0, alias="timeout", gt=0)

    @field_validator("admin")
    @classmethod
    def _admin(cls, value: list[str]) -> list[str]:
        for address in value:
            if not address.startswith(("tcp://", "unix://")):
                raise ValueError(f"expected tcp://host:port or unix:///path, got {address!r}")
        return value


class GatewayApiLb(Model):
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str
    route: str
    rule: int = Field(default=0, ge=0)


class IstioLb(Model):
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str
    virtual_service: str
    route: int = Field(default=0, ge=0)


class SmiLb(Model):
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str
    traffic_split: str


class WebhookTarget(Model):
    url: HttpUrlStr
    secret: SecretStr | None = None
    timeout_s: Seconds = Field(default=5.0, alias="timeout", gt=0)
    headers: dict[str, str] = {}


LB_DRIVERS = ("haproxy", "gateway_api", "istio", "smi", "webhook")


class LoadBalancerConfig(Model):
    name: Name
    driver: Literal["haproxy", "gateway_api", "istio", "smi", "webhook"]
    haproxy: HaproxyLb | None = None
    gateway_api: GatewayApiLb | None = None
    istio: IstioLb | None = None
    smi: SmiLb | None = None
    webhook: WebhookTarget | None = None
    members: dict[str, str] = Field(min_length=1)
    """cluster name -> the balancer's name for it (HAProxy server, backendRef, destination host)."""

    @model_validator(mode="after")
    def _driver_section(self) -> LoadBalancerConfig:
        if getattr(self, self.driver) is None:
            raise ValueError(f"driver {self.driver!r} needs a '{self.driver}:' section")
        others = [d for d in LB_DRIVERS if d != self.driver and getattr(self, d) is not None]
        if others:
            raise ValueError(f"section(s) {', '.join(others)} do not apply to driver {self.driver!r}")
        return self


class SlackNotifier(Model):
    webhook_url: SecretStr
    """The incoming-webhook URL embeds its own secret, so it is a SecretStr too."""


class NotifierConfig(Model):
    name: Name
    driver: Literal["slack", "webhook", "pagerduty", "teams", "email", "nats"]
    slack: SlackNotifier | None = None
    webhook: WebhookTarget | None = None
    options: dict[str, Any] = {}
    """Driver sections not modelled yet (pagerduty, teams, email, nats) are refused by validate."""

    @model_validator(mode="after")
    def _driver_section(self) -> NotifierConfig:
        if self.driver in ("slack", "webhook") and getattr(self, self.driver) is None:
            raise ValueError(f"driver {self.driver!r} needs a '{self.driver}:' section")
        return self


class ReconcileConfig(Model):
    interval_s: Seconds = Field(default=5.0, alias="interval", gt=0)
    """How often the leader re-reads what it holds (drains, scale-outs) and re-asserts reverted values:
    an HAProxy reload or a GitOps self-heal is undone within this."""


class LeadershipConfig(Model):
    lease_ttl_s: Seconds = Field(default=10.0, alias="lease_ttl", gt=0)
    """A follower takes over within lease_ttl + renew_interval of the leader's death."""
    renew_interval_s: Seconds = Field(default=2.0, alias="renew_interval", gt=0)
    margin_s: Seconds = Field(default=2.0, alias="margin", ge=0)
    """The leader stops acting this long before its lease could expire, by its own clock."""

    @model_validator(mode="after")
    def _order(self) -> LeadershipConfig:
        if self.renew_interval_s >= self.lease_ttl_s - self.margin_s:
            raise ValueError("renew_interval must be shorter than lease_ttl - margin")
        return self


class PlaybooksConfig(Model):
    paths: list[str] = ["playbooks/"]


class SlackChatops(Model):
    signing_secret: SecretStr
    users: dict[str, Literal["viewer", "operator", "admin"]] = {}
    channels: list[str] = []


class ChatopsConfig(Model):
    slack: SlackChatops | None = None


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

    base_dir: str = Field(default=".", exclude=True)
    """Directory of the config file: relative paths in it (state_dir, playbooks) resolve from here."""

    def cluster(self, name: str) -> ClusterConfig:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(name)

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
IMPLEMENTED_NOTIFIERS = {"webhook", "slack"}
IMPLEMENTED_PROBES = {"http", "tcp", "kube_api", "kube_workload"}


def _cross_checks(source: Source, config: Config) -> list[Problem]:
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
            if member not in cluster_names:
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
    if isinstance(config.detection.quorum, int):
        probers = config.detection.quorum
        if probers < 1:
            problems.append(source.problem(("detection", "quorum"), "must be at least 1"))
    return problems


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    """Load and check a config file; raise ValidationFailed listing every problem with its line."""
    source = load_yaml(path, env=env)
    config = validate_model(source, Config)
    problems = _cross_checks(source, config)
    if problems:
        raise ValidationFailed(problems)
    base = str(Path(path).resolve().parent)
    return config.model_copy(update={"base_dir": base})
