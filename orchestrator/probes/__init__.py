"""Health probes: each checks one thing about one cluster and returns a ProbeResult; never raises."""

from orchestrator.probes.base import ProbeResult

__all__ = ["ProbeResult"]
