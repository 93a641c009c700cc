"""Actuators (layer 3): the only code that changes the world (balancers, workloads).

May import: `orchestrator.core`, `orchestrator.bus`, `orchestrator.kube`.
"""
