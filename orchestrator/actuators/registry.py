"""Balancer drivers by name: adding a driver is one module plus one line here."""

from __future__ import annotations

from orchestrator.actuators.base import Balancer
from orchestrator.actuators.haproxy import HAProxyBalancer
from orchestrator.config import LoadBalancerConfig
from orchestrator.errors import PermanentError

DRIVERS: dict[str, type[Balancer]] = {"haproxy": HAProxyBalancer}


def build_balancer(config: LoadBalancerConfig) -> Balancer:
    try:
        return DRIVERS[config.driver](config)
    except KeyError:
        raise PermanentError(f"balancer driver {config.driver!r} is not available in this version") from None
