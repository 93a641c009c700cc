"""The daemon's own sections: `nats`, `api`, `reconcile`, `leadership`, `playbooks`, `chatops` and `runs`.

Split from `config` so the settings of the orchestrator itself (how it connects, listens, elects a
leader and finds its playbooks) sit apart from the fleet it manages.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from orchestrator.core.config_fields import Model, Seconds


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
    replicas: int = Field(default=1, ge=1, le=5)
    """JetStream replicas of the streams and KV buckets; 3 on a 3-node NATS cluster. Existing streams
    are scaled up to it, never down (a prober or a dry run with the default never shrinks them)."""

    @model_validator(mode="after")
    def _replicas(self) -> NatsConfig:
        if self.replicas > 1 and self.url is None:
            raise ValueError("nats.replicas > 1 needs nats.url: the embedded nats-server is a single node")
        return self


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
