"""The action registry: importing this package registers every action."""

from orchestrator.playbooks.actions import external, flow, k8s, lb, notify
from orchestrator.playbooks.actions.base import (
    REGISTRY,
    Action,
    Params,
    Preempted,
    Services,
    StepContext,
    register,
)

__all__ = [
    "REGISTRY",
    "Action",
    "Params",
    "Preempted",
    "Services",
    "StepContext",
    "external",
    "flow",
    "k8s",
    "lb",
    "notify",
    "register",
]
