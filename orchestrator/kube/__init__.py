"""Kubernetes (layer 2): the only package that imports kubernetes-asyncio.

One client per cluster; client exceptions are mapped to `core.errors` at this boundary.
May import: `orchestrator.core`.
"""
