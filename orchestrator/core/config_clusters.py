"""The `probing`, `detection` and `clusters` sections: what is probed, how, and when a cluster fails.

Split from `config` so the models that drive probing and detection read on their own; `config.Config`
assembles them with the other sections.
"""

from __future__ import annotations

import re
import socket
from typing import Annotated, Any, Literal

import re2  # type: ignore[import-untyped]
from pydantic import BeforeValidator, Field, field_validator, model_validator

from orchestrator.core.config_fields import HttpUrlStr, Model, Name, Seconds

VANTAGE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _vantage(value: object) -> object:
    """A vantage name is one NATS subject token (`failover.health.<vantage>.<cluster>.<probe>`)."""
    if isinstance(value, str) and not VANTAGE_RE.match(value):
        raise ValueError(
            f"{value!r} is not a vantage name: letters, digits, '-' and '_' only (it is one NATS subject "
            "token), at most 64"
        )
    return value


Vantage = Annotated[str, BeforeValidator(_vantage)]


def default_vantage() -> str:
    """The host name (the pod name in Kubernetes), made a valid subject token."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "local"


class ProbingConfig(Model):
    interval_s: Seconds = Field(default=1.0, alias="interval", gt=0)
    """1 s rounds with a 3-round threshold move traffic in ~3-4 s, well ahead of DNS-based failover."""
    timeout_s: Seconds = Field(default=0.8, alias="timeout", gt=0)
    """Below the interval so a black-holed endpoint cannot make rounds overlap. When not set it follows
    the interval: min(800ms, 0.8 x interval), so `interval: 500ms` alone is a valid config."""
    jitter_s: Seconds = Field(default=0.05, alias="jitter", ge=0)
    """Spreads probes inside a round so a fleet does not hit NATS in one burst; kept under 100 ms."""
    concurrency: int = Field(default=64, ge=1)
    """Probes in flight at once per prober: bounds sockets and CPU on a large fleet."""
    vantage: Vantage = Field(default_factory=default_vantage)
    """This process's vantage name. The daemon's in-process prober reports under
    `detection.daemon_vantage` when that is set, else under this name."""

    @model_validator(mode="after")
    def _timeout_below_interval(self) -> ProbingConfig:
        if "timeout_s" not in self.model_fields_set:
            object.__setattr__(self, "timeout_s", min(0.8, 0.8 * self.interval_s))
        if self.timeout_s > self.interval_s:
            raise ValueError("probing.timeout must not exceed probing.interval (rounds would overlap)")
        return self


class FlapConfig(Model):
    max_transitions: int = Field(default=4, ge=1)
    window_s: Seconds = Field(default=600.0, alias="window", gt=0)


class FailureRatioConfig(Model):
    """`detection.failure_ratio` (DESIGN §6, intermittent failure): consecutive counts never see an app
    that is down half the time in short bursts (measured: down 2 s of every 4 s for 40 s gave no
    transition at all), so a vantage also sees a probe failing when at least `threshold` of its rounds
    in `window` failed."""

    threshold: float = Field(default=0.5, gt=0, le=1)
    """At 0.5 a healthy probe that drops a round now and then is far below it; a cluster failing half
    of its requests is at it."""
    window_s: Seconds = Field(default=20.0, alias="window", gt=0)
    min_rounds: int = Field(default=10, ge=1)
    """Rounds the window must hold before the ratio counts: a prober that has just started (a new
    boot's window starts empty) is judged by consecutive counts alone. Keep it at most window /
    interval, or the rule never fires."""


def _no_ratio(value: object) -> object:
    """`failure_ratio: false` reads as `null`: the rule is off."""
    return None if value is False else value


MAX_VANTAGES = 100
"""Quorum over more observers than this adds no confidence, only cost on the event loop."""


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
    failure_ratio: Annotated[FailureRatioConfig | None, BeforeValidator(_no_ratio)] = FailureRatioConfig()
    """Intermittent failure, on by default; `null` (or `false`) turns it off. A cluster it fails then
    recovers like a flapping one (twice `recovery_hold`, and the ratio back under the threshold)."""
    vantages: list[Vantage] | None = Field(default=None, min_length=1, max_length=MAX_VANTAGES)
    """The vantages whose reports count (DESIGN §12); `quorum: majority` is the majority of this list,
    so vantages that went silent can never lower the quorum. Reports from any other vantage are counted
    and dropped. Default: the daemon's own vantage only. At most 100: while a cluster starts failing,
    each report is weighed against every vantage's view of it (bench/vantages.py: ~0.1 ms a report at
    100 vantages, ~1.7 ms at 1,000, on the event loop)."""
    ingest: Literal["loop", "process"] = "loop"
    """Where health reports are received and validated: `loop`, the daemon's event loop; `process`, a
    child process with its own NATS connection handing the daemon validated batches (the detector
    stays in the daemon). `process` frees ~10 µs a report on the daemon's loop: for fleets of several
    thousand clusters (README, Sizing)."""
    daemon_vantage: Vantage | None = None
    """The name the management cluster's own probing (the in-process prober of whichever replica
    leads) reports and counts under. Default: `probing.vantage`. Set it when replicas have per-pod
    vantage names and `vantages` lists several: every replica then reports as this one vantage."""


class KubernetesRef(Model):
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the refusal is ours to report, with its file:line


def body_pattern(pattern: str) -> Any:
    """`body_regex` compiled by RE2, which matches in time linear in the body: the body comes from the
    probed service, and a backtracking engine can spend hours on one 64 KiB body with a pattern like
    `(a+)+$`, on the event loop. RE2 refuses backreferences and lookaround; ValueError says why."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except (re2.error, UnicodeError, TypeError) as e:
        why = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ValueError(
            f"invalid regular expression for RE2 (linear-time; no backreferences or lookaround): {why}"
        ) from None


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
            body_pattern(value)
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
