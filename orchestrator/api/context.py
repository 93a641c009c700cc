"""What the HTTP API reads and calls (`ApiContext`), built by the runtime.

A module of its own so that the route handlers, the event stream and the app factory can all take it
without importing one another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.api.commands import Commands
from orchestrator.bus.client import Bus
from orchestrator.core.config import Config
from orchestrator.core.metrics import Metrics
from orchestrator.playbooks.journal import BusJournal

Readiness = Callable[[], dict[str, Any]]


@dataclass
class ApiContext:
    """Everything the HTTP API reads or calls; built by the runtime."""

    config: Config
    metrics: Metrics
    readiness: Readiness
    status: Callable[[], dict[str, Any]]
    """Daemon status: clusters' states, frozen, suspects, active runs, approvals, playbooks, leader."""
    commands: Commands | None = None
    """Authentication (`authenticate(token, via)`) and every command (`handle(command, args, token, via)`)."""
    journal: BusJournal | None = None
    """Runs: `recent(limit)` and `load(run_id)`."""
    bus: Bus | None = None
    """For the live event stream: subscribe to `failover.events.>` and `failover.runs.>`."""
    weights: Callable[[], Awaitable[dict[str, dict[str, int]]]] | None = None
    """balancer -> cluster -> current native weight (read from the balancers)."""
