"""Bus (layer 2): NATS and JetStream, the only package that imports nats-py.

The connection and its KV/stream helpers, the embedded nats-server, the KV state store (pause, freeze,
recorded originals) and leader election with fencing.
May import: `orchestrator.core`.
"""
