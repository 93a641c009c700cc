"""The `load_balancers` and `notifiers` sections: each entry picks a driver and carries its settings.

Split from `config` so the per-driver models sit together; which drivers this build implements is
checked by `config.load_config`, not here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from orchestrator.core.config_fields import HttpUrlStr, Model, Name, Seconds


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
