"""Event-driven failover orchestrator for multi-cluster Kubernetes.

The package reads as layers, bottom first; a module imports only from its own layer or lower ones
(`make lint` checks it with import-linter, see `[tool.importlinter]` in pyproject.toml):

1. `core/`       config, models, durations, errors, YAML source, logs, metrics, signing, subjects
2. `bus/`, `kube/`, `notifiers/`   the only importers of nats-py and kubernetes-asyncio; notifier drivers
3. `detection/`, `probes/`, `actuators/`   the detector; health checks; balancer and scale drivers
4. `playbooks/`, `sandbox/`   playbook format, runner, journal and actions; local stand-in clusters
5. `api/`        HTTP server, route table, dashboard, commands
6. `runtime/`    daemon wiring, stand-alone prober, reconciler, dry-run
7. `cli/`        `failover`, `failover ctl`, `failover demo`
"""

__version__ = "0.1.0"
