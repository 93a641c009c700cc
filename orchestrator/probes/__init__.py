"""Probes (layer 3): each checks one thing about one cluster and returns a ProbeResult; never raises.

May import: `orchestrator.core`, `orchestrator.bus`, `orchestrator.kube`.
"""

from orchestrator.probes.base import ProbeResult

__all__ = ["ProbeResult"]
