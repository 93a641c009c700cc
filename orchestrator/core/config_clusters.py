"""The `probing`, `detection` and `clusters` sections: what is probed, how, and when a cluster fails.

Split from `config` so the models that drive probing and detection read on their own; `config.Config`
assembles them with the other sections.
"""

from __future__ import annotations

import re
import socket
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from orchestrator.core.config_fields import HttpUrlStr, Model, Name, Seconds


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
