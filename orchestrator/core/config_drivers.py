"""The `load_balancers` and `notifiers` sections: each entry picks a driver and carries its settings.

Split from `config` so the per-driver models sit together; which drivers this build implements is
checked by `config.load_config`, not here.
"""

from __future__ import annotations

import re
from email.utils import parseaddr
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from orchestrator.core.config_dns import DNS_DRIVERS, PowerDnsLb, Rfc2136Lb, split_dns_members
from orchestrator.core.config_edge import split_target_members
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


class EmissaryLb(Model):
    """Emissary-ingress / Edge Stack: one `Mapping` per cluster (the members name them), all in one
    namespace and sharing a prefix, whose `weight` is the share of that prefix's traffic."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str


class ExternalDnsLb(Model):
    """external-dns's `DNSEndpoint` CRD: the members' addresses are added to and removed from the
    targets of the endpoint(s) named `dns_name` (A and AAAA alike); external-dns publishes the change."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str
    dns_endpoint: str
    """The DNSEndpoint object's name."""
    dns_name: str = Field(min_length=1)
    """The `spec.endpoints[].dnsName` whose targets the members are (`www.example.com`)."""
    set_identifier: str | None = None
    """Only the endpoints with this `setIdentifier` (weighted or geo records of some providers)."""


class ConsulLb(Model):
    """A Consul `service-splitter` config entry, written through the HTTP API with check-and-set."""

    address: HttpUrlStr = "http://127.0.0.1:8500"
    """The HTTP API of a Consul agent or server (`https://consul.service:8501`)."""
    token: SecretStr | None = None
    """An ACL token with `service:read` and `service:write` on the splitter's service."""
    service: str = Field(min_length=1)
    """The splitter's name, which is the service whose traffic it splits."""
    datacenter: str | None = None
    namespace: str | None = None
    """Consul Enterprise namespace of the entry (`?ns=`)."""
    partition: str | None = None
    """Consul Enterprise admin partition of the entry (`?partition=`)."""
    ca: str | None = None
    """CA bundle that signed an https `address`'s certificate (default: the system's)."""
    timeout_s: Seconds = Field(default=5.0, alias="timeout", gt=0)


LB_DRIVERS: tuple[str, ...] = ("haproxy", "gateway_api", "istio", "smi", "webhook")
LB_DRIVERS += ("emissary", "external_dns", "consul")
LB_DRIVERS += DNS_DRIVERS


class LoadBalancerConfig(Model):
    name: Name
    driver: Literal[
        "haproxy",
        "gateway_api",
        "istio",
        "smi",
        "webhook",
        "emissary",
        "external_dns",
        "consul",
        "rfc2136",
        "powerdns",
    ]
    haproxy: HaproxyLb | None = None
    gateway_api: GatewayApiLb | None = None
    istio: IstioLb | None = None
    smi: SmiLb | None = None
    webhook: WebhookTarget | None = None
    emissary: EmissaryLb | None = None
    external_dns: ExternalDnsLb | None = None
    consul: ConsulLb | None = None
    rfc2136: Rfc2136Lb | None = None
    powerdns: PowerDnsLb | None = None
    members: dict[str, str] = Field(min_length=1)
    """cluster name -> the balancer's name for it (HAProxy server, backendRef, destination host)."""
    addresses: dict[str, list[str]] = {}
    """DNS drivers: cluster -> its addresses, moved here from `members` (`config_dns.split_dns_members`)."""

    @model_validator(mode="before")
    @classmethod
    def _dns_members(cls, data: Any) -> Any:
        return split_dns_members(data)

    @model_validator(mode="before")
    @classmethod
    def _external_dns_members(cls, data: Any) -> Any:
        return split_target_members(data)

    @model_validator(mode="after")
    def _driver_section(self) -> LoadBalancerConfig:
        if getattr(self, self.driver) is None:
            raise ValueError(f"driver {self.driver!r} needs a '{self.driver}:' section")
        others = [d for d in LB_DRIVERS if d != self.driver and getattr(self, d) is not None]
        if others:
            raise ValueError(f"section(s) {', '.join(others)} do not apply to driver {self.driver!r}")
        return self


class SlackNotifier(Model):
    """Either an incoming webhook (`webhook_url`: one message per notification) or a bot token and a
    channel (`chat.postMessage`: one thread per incident, its first message updated in place)."""

    webhook_url: SecretStr | None = None
    """The incoming-webhook URL embeds its own secret, so it is a SecretStr too."""
    bot_token: SecretStr | None = None
    """A bot token (`xoxb-...`) with the `chat:write` scope; the bot must be a member of `channel`."""
    channel: str | None = Field(default=None, min_length=1)
    """The channel ID (`C0123ABC`): an ID survives a rename, a name does not."""
    api_url: HttpUrlStr = "https://slack.com/api"
    """The Web API base; configurable so tests can point it at a local receiver."""
    timeout_s: Seconds = Field(default=5.0, alias="timeout", gt=0)

    @model_validator(mode="after")
    def _one_mode(self) -> SlackNotifier:
        bot = self.bot_token is not None or self.channel is not None
        if (self.webhook_url is not None) == bot:
            raise ValueError("set either 'webhook_url' or 'bot_token' and 'channel', not both")
        if bot and (self.bot_token is None or self.channel is None):
            raise ValueError("a bot needs both 'bot_token' and 'channel'")
        return self


class TeamsNotifier(Model):
    webhook_url: SecretStr
    """A Workflows ("When a Teams webhook request is received") URL: its `sig=` parameter is the secret."""
    timeout_s: Seconds = Field(default=5.0, alias="timeout", gt=0)


def _mailbox(value: str) -> str:
    """One address, optionally with a display name; never a line break (header injection)."""
    if "\r" in value or "\n" in value or "@" not in parseaddr(value)[1]:
        raise ValueError(f"expected an e-mail address, got {value!r}")
    return value


Mailbox = Annotated[str, AfterValidator(_mailbox)]


class EmailConfig(Model):
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    """Upgrade the connection with STARTTLS before AUTH and the message (refused if the relay lacks it)."""
    username: str | None = None
    password: SecretStr | None = None
    from_: Mailbox = Field(alias="from")
    to: list[Mailbox] = Field(min_length=1)
    timeout_s: Seconds = Field(default=10.0, alias="timeout", gt=0)
    ca: str | None = None
    """CA bundle that signed the relay's certificate (default: the system's)."""

    @model_validator(mode="after")
    def _auth(self) -> EmailConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.password is not None and not self.starttls:
            raise ValueError("a password is never sent over plain text: set starttls: true")
        return self


class NatsNotifierConfig(Model):
    subject: str
    """Where the notification's JSON goes: a concrete subject outside `failover.*`, which is ours."""

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        # the same rule as the `nats.publish` action's: nothing may look like our own events
        if not value or value.startswith("failover.") or any(c in value for c in " \t\r\n*>"):
            raise ValueError("a concrete subject outside failover.* (our own subjects cannot be spoofed)")
        if "" in value.split("."):
            raise ValueError(f"{value!r} has an empty token")
        return value


class PagerDutyConfig(Model):
    routing_key: SecretStr
    """The Events API v2 integration key of the PagerDuty service (32 characters): it is the secret."""
    url: HttpUrlStr = "https://events.pagerduty.com/v2/enqueue"
    """Configurable for the EU endpoint (`events.eu.pagerduty.com`) and for tests."""
    source: str | None = Field(default=None, min_length=1)
    """`payload.source`; default: the failed cluster's name."""
    timeout_s: Seconds = Field(default=5.0, alias="timeout", gt=0)


class AlertmanagerConfig(Model):
    url: HttpUrlStr
    """Alertmanager's base URL (`http://alertmanager:9093`); alerts go to `<url>/api/v2/alerts`."""
    labels: dict[str, str] = {}
    """Extra labels on every alert (`team: sre`), for Alertmanager's routing; ours win on a clash."""
    repost_interval_s: Seconds = Field(default=120.0, alias="repost_interval", gt=0)
    """How often an open incident's alert should be posted again: keep it below Alertmanager's
    `resolve_timeout` (default 5m), after which an alert without `endsAt` expires on its own."""
    timeout_s: Seconds = Field(default=5.0, alias="timeout", gt=0)

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:  # Alertmanager refuses the whole post (400) for one bad name
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
                raise ValueError(f"label name {name!r} must match [a-zA-Z_][a-zA-Z0-9_]*")
        return value


class NotifierConfig(Model):
    name: Name
    driver: Literal["slack", "webhook", "pagerduty", "teams", "email", "nats", "alertmanager"]
    slack: SlackNotifier | None = None
    teams: TeamsNotifier | None = None
    webhook: WebhookTarget | None = None
    email: EmailConfig | None = None
    nats: NatsNotifierConfig | None = None
    pagerduty: PagerDutyConfig | None = None
    alertmanager: AlertmanagerConfig | None = None

    @model_validator(mode="after")
    def _driver_section(self) -> NotifierConfig:
        if getattr(self, self.driver) is None:  # every driver has its section now
            raise ValueError(f"driver {self.driver!r} needs a '{self.driver}:' section")
        return self
