"""The daemon's own sections: `nats`, `api`, `reconcile`, `leadership`, `playbooks`, `chatops`, `runs`
and `drills` (`chatops` is defined in `config_chatops`).

Split from `config` so the settings of the orchestrator itself (how it connects, listens, elects a
leader and finds its playbooks) sit apart from the fleet it manages.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date
from typing import Literal
from urllib.parse import urlsplit

from pydantic import ByteSize, Field, SecretStr, field_validator, model_validator

from orchestrator.core.config_chatops import ChatopsConfig as ChatopsConfig  # noqa: PLC0414 (re-exported)
from orchestrator.core.config_fields import HttpUrlStr, Model, Name, Seconds


class TlsConfig(Model):
    ca: str | None = None
    """CA bundle that signed the server's certificate (default: the system's)."""
    cert: str | None = None
    """Client certificate, for a server that verifies clients (`tls { verify: true }`); needs `key`."""
    key: str | None = None
    server_name: str | None = None
    """The name the server's certificate is checked against, when the URL's host is not in it."""

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if bool(self.cert) != bool(self.key):
            raise ValueError("tls.cert and tls.key go together")
        return self


class StreamLimits(Model):
    """`nats.max_bytes`: what the streams and the run journal may hold. NATS reserves it up front: a
    server or account with less JetStream storage refuses to create them (the daemon then says which)."""

    events: ByteSize = ByteSize(1024**3)
    """Cluster, system and run events and the audit trail: the oldest go first past this."""
    runs: ByteSize = ByteSize(256 * 1024**2)
    """The run journal; `runs.retention` keeps it far below (a finished run is a few KB). A full
    bucket refuses writes rather than drop a record."""


class NatsConfig(Model):
    """How the daemon, a prober or a dry run connects. Secrets come inline (`${VAR}` from the
    environment) or from files (`*_file`, read at connect time), and never appear in logs or errors:
    a URL's `user:password@` is redacted wherever the URL is shown."""

    url: str | None = None
    """None starts an embedded nats-server under state_dir (single replica only), with generated
    credentials (DESIGN §12): the settings below are then not used."""
    creds: str | None = None
    """A `.creds` file (user JWT and NKey seed, operator mode)."""
    nkey: str | None = None
    """A file holding the user's NKey seed (`SU...`)."""
    user: str | None = None
    password: SecretStr | None = None
    password_file: str | None = None
    token: SecretStr | None = None
    token_file: str | None = None
    tls: TlsConfig | None = None
    inbox_prefix: str = Field(default="_INBOX", pattern=r"^_INBOX(\.[A-Za-z0-9_-]+)*$")
    """Reply subjects' prefix: a prober's credential reads only its own (`_INBOX.prober-<vantage>`)."""
    connect_timeout_s: Seconds = Field(default=5.0, alias="connect_timeout")
    max_bytes: StreamLimits = Field(default_factory=StreamLimits)
    """JetStream storage reserved for the events stream and the run journal (`1GiB`, `512MiB`...)."""
    replicas: int = Field(default=1, ge=1, le=5)
    """JetStream replicas of the streams and KV buckets; 3 on a 3-node NATS cluster. Existing streams
    are scaled up to it, never down (a prober or a dry run with the default never shrinks them)."""

    @model_validator(mode="after")
    def _replicas(self) -> NatsConfig:
        if self.replicas > 1 and self.url is None:
            raise ValueError("nats.replicas > 1 needs nats.url: the embedded nats-server is a single node")
        return self

    @model_validator(mode="after")
    def _one_way(self) -> NatsConfig:
        if self.password and self.password_file:
            raise ValueError("nats.password and nats.password_file: give one")
        if self.token and self.token_file:
            raise ValueError("nats.token and nats.token_file: give one")
        if (self.password or self.password_file) and not self.user:
            raise ValueError("nats.password needs nats.user")
        kinds = [
            kind
            for kind, given in (
                ("creds", self.creds),
                ("nkey", self.nkey),
                ("user", self.user),
                ("token", self.token or self.token_file),
            )
            if given
        ]
        if len(kinds) > 1:
            raise ValueError(f"one way to authenticate to NATS, not {' and '.join(kinds)}")
        return self


class ApiToken(Model):
    token: SecretStr
    role: Literal["viewer", "operator", "admin"] = "viewer"
    name: str | None = None
    """Who this token is, in the audit trail and for `approval: {approvers: [...]}`."""

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        # an empty value is what an unfilled Secret template gives: refuse it rather than start a
        # daemon whose only token nobody can present (the value itself is never echoed)
        if not value.get_secret_value().strip():
            raise ValueError("empty token: set it, e.g. from a Secret holding `openssl rand -hex 32`")
        return value


def is_loopback(host: str) -> bool:
    """`host` (a listen address) reaches loopback only; a name other than localhost may resolve to
    anything, and a wildcard address (0.0.0.0, ::) is every interface."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_HOST_NAME = re.compile(
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?)$"
)


class ApiConfig(Model):
    listen: str = "127.0.0.1:8080"
    """Loopback by default: the API can drain clusters, so exposing it is a deliberate choice."""
    tokens: list[ApiToken] = []
    allow_anonymous: bool = False
    """Accept a non-loopback `listen` without `tokens`: anyone who can reach it is admin. Refused
    unless set (`validate` and the daemon's start warn when it is)."""
    external_url: HttpUrlStr | None = None
    """Where users reach the API (`https://failover.example.com`): the base of links in notifications
    and chat, the origin a mutating request's `Origin` must match, and one of the API's own names."""
    allowed_hosts: list[str] = []
    """More names the API answers to without tokens (DNS-rebinding check), e.g. a Service name."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected host:port, got {value!r}")
        return value

    @field_validator("external_url")
    @classmethod
    def _external_url(cls, value: str | None) -> str | None:
        if value is not None and not urlsplit(value).hostname:
            raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
        return value.rstrip("/") if value else value

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _HOST_NAME.match(name):
                raise ValueError(f"expected a host name or an IP address (no port, no path), got {name!r}")
        return [name.lower().rstrip(".") for name in value]

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def loopback(self) -> bool:
        """Listening on loopback only: nothing but this machine can reach the API."""
        return is_loopback(self.host)

    @property
    def anonymous(self) -> bool:
        """No tokens: every caller is admin."""
        return not self.tokens


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


class RunsRetentionConfig(Model):
    """How long the run journal (KV `failover-runs`) keeps finished runs; unfinished runs are always kept."""

    max_age_s: Seconds = Field(default=7 * 86400.0, alias="max_age", gt=0)
    """A finished run older than this (by its start) is deleted."""
    max_runs: int = Field(default=5000, ge=1, le=100_000)
    """Only the newest this many runs are kept (unfinished ones count, and are never deleted). At most
    100,000: up to that, listing the journal's index is one JetStream answer; beyond, a slow watch."""
    interval_s: Seconds = Field(default=600.0, alias="interval", gt=0)
    """How often the leader applies the two limits."""


class RunsConfig(Model):
    retention: RunsRetentionConfig = RunsRetentionConfig()


class DrillWindowConfig(Model):
    """When practice runs may start: local time of day in `timezone`, on `days` (default every day)."""

    start: str = "10:00"
    end: str = "16:00"
    timezone: str = "UTC"
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = []

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"expected HH:MM (24 h), got {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Paris)") from None
        return value

    @model_validator(mode="after")
    def _order(self) -> DrillWindowConfig:
        if self.start >= self.end:
            raise ValueError("window.start must be before window.end (a window does not span midnight)")
        return self


class DrillScheduleConfig(Model):
    """`drills:` (DESIGN §15): practice runs the leader starts on its own, as AWS ARC schedules them. A
    drill is due once `every` has passed since the schedule's last one, inside `window`, not on a
    `blocked_dates` day; it faults the `clusters` in turn and is skipped (`drill.skipped`, saying why)
    while any cluster is not healthy, a run is active or automation is paused."""

    name: Name
    fault: Literal["scale-to-zero", "deny-ingress"] = "scale-to-zero"
    clusters: list[Name] = Field(min_length=1)
    every_s: Seconds = Field(default=7 * 86400.0, alias="every", gt=0)
    window: DrillWindowConfig = DrillWindowConfig()
    blocked_dates: list[date] = []
    """Days (in the window's time zone) without drills: freezes, holidays, launches."""
    namespace: str | None = None
    """The workload to fault; default: each cluster's `kube_workload` probe."""
    deployment: str | None = None
    timeout_s: Seconds = Field(default=300.0, alias="timeout", gt=0)
    recovery_timeout_s: Seconds = Field(default=600.0, alias="recovery_timeout", gt=0)

    @model_validator(mode="after")
    def _workload(self) -> DrillScheduleConfig:
        if bool(self.namespace) != bool(self.deployment):
            raise ValueError("namespace and deployment go together")
        return self


class ReadinessConfig(Model):
    """`readiness:` (DESIGN §17): the leader dry-runs every failover playbook for every cluster and
    checks it would work (balancers, workloads, capacity, Kubernetes permissions, notifiers)."""

    enabled: bool = True
    interval_s: Seconds = Field(default=300.0, alias="interval", gt=0)
    """5m, like AWS ARC's readiness checks (30 minutes there): a pass is one read per balancer, workload,
    permission and notifier, cheap enough to find a renamed server within minutes, not at 3 a.m."""
    timeout_s: Seconds = Field(default=10.0, alias="timeout", gt=0)
    """Each read, review or notifier check of a pass: a slow answer is a problem, not a hung pass."""
    playbooks: list[Name] = []
    """The playbooks to check; default: those triggered by `cluster.failed`, and `manual-drain*`."""
