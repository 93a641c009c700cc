"""Balancer drivers by name: adding a driver is one module plus one line here."""

from __future__ import annotations

from orchestrator.actuators.base import Balancer, Term
from orchestrator.actuators.consul import ConsulBalancer
from orchestrator.actuators.emissary import EmissaryBalancer
from orchestrator.actuators.external_dns import ExternalDnsBalancer
from orchestrator.actuators.gateway_api import GatewayApiBalancer
from orchestrator.actuators.haproxy import HAProxyBalancer
from orchestrator.actuators.istio import IstioBalancer
from orchestrator.actuators.powerdns import PowerDnsBalancer
from orchestrator.actuators.rfc2136 import Rfc2136Balancer
from orchestrator.actuators.smi import SmiBalancer
from orchestrator.actuators.webhook import WebhookBalancer
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError

DRIVERS: dict[str, type[Balancer]] = {
    "haproxy": HAProxyBalancer,
    "gateway_api": GatewayApiBalancer,
    "istio": IstioBalancer,
    "smi": SmiBalancer,
    "webhook": WebhookBalancer,
    "emissary": EmissaryBalancer,
    "external_dns": ExternalDnsBalancer,
    "consul": ConsulBalancer,
    "rfc2136": Rfc2136Balancer,
    "powerdns": PowerDnsBalancer,
}


def build_balancer(config: LoadBalancerConfig, term: Term | None = None) -> Balancer:
    """The driver for `config`; `term` (the leader's fencing term, read at each write) goes to every
    driver that takes it (the webhook sends it; Kubernetes writes are fenced by resourceVersion)."""
    try:
        driver = DRIVERS[config.driver]
    except KeyError:
        raise PermanentError(f"balancer driver {config.driver!r} is not available in this version") from None
    return driver(config, term=term)
