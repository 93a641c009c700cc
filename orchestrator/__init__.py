"""Event-driven failover orchestrator for multi-cluster Kubernetes."""

__version__ = "0.1.0"
