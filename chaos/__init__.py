"""The local chaos suite (`make chaos`): real nats-server, HAProxy, sandbox Kubernetes API and daemons as
separate processes, faults injected on purpose, invariants asserted and recovery times recorded in
`chaos/RESULTS.md` (DESIGN §15)."""
