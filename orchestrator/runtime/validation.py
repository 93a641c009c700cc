"""`failover validate`: the config and every playbook, all problems in one pass, templates rendered
strictly against the events each playbook really receives.

The sample events are built by the same code paths that build real ones where those are reachable
(the detector's `ClusterEvent`, the watchdog's catch-up drain, `SystemEvent`) and by the shape of the
`failover ctl` command otherwise, so a template that names a field one of them lacks is caught here: a
`cluster.failed` playbook that uses `{{ event.catch_up }}` works for the watchdog's catch-up drain and
fails for the detector's event, which has no `catch_up` (`event.get('catch_up')` works for both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.config import Config
from orchestrator.core.config_check import WARNING, check_config
from orchestrator.core.errors import Problem, ValidationFailed
from orchestrator.core.models import ClusterEvent, SystemEvent, rfc3339, utc_now
from orchestrator.core.yamlsource import MAX_CONFIG_BYTES, load_yaml
from orchestrator.playbooks.loader import load_playbooks
from orchestrator.playbooks.model import Playbook
from orchestrator.playbooks.strict import Sample, Unknown
from orchestrator.runtime.watchdog import catch_up_event

SAMPLE_CLUSTER = "sample-cluster"
"""The event's cluster when no config is given (playbooks validated alone)."""

TRANSITIONS = {
    "cluster.failed": ("healthy", "failed"),
    "cluster.degraded": ("healthy", "degraded"),
    "cluster.recovered": ("failed", "healthy"),
    "cluster.unknown": ("healthy", "unknown"),
}


def _system_detail(kind: str, cluster: str) -> dict[str, Any]:
    """The `detail` each detector signal carries (`detection.observer`, `machine`, `recovery`)."""
    details: dict[str, dict[str, Any]] = {
        "observer.suspect": {"clusters": [cluster], "fraction": 1.0, "max_failed_fraction": 0.5},
        "observer.clear": {"failing": [], "suppressed": [cluster]},
        "cluster.flapping": {"cluster": cluster, "transitions": 5},
        "vantage.suspect": {"vantage": "sample-vantage", "failing": [cluster]},
    }
    return details.get(kind, {})


def sample_events(playbook: Playbook, cluster: str) -> list[tuple[str, dict[str, Any]]]:
    """(label, event) for every shape of event that can start `playbook`."""
    kind = playbook.on.event
    if kind in TRANSITIONS:
        before, after = TRANSITIONS[kind]
        event = ClusterEvent.model_validate(
            {"type": kind, "cluster": cluster, "from": before, "to": after, "reason": "sample"}
        ).model_dump(mode="json", by_alias=True)
        event["evidence"] = Unknown("event.evidence")  # its keys depend on the probes that failed
        out = [(f"a sample {kind} event on {cluster}", event)]
        if kind == "cluster.failed":
            catch_up = catch_up_event(cluster, ["<balancer>"], 1)
            out.append((f"the catch-up drain's cluster.failed event on {cluster}", catch_up))
        return out
    if kind == "manual":  # as `failover ctl failover|failback` builds it (api.commands)
        command = "restore" if playbook.name.startswith("manual-restore") else "drain"
        event = {
            "type": "manual",
            "command": command,
            "cluster": cluster,
            "actor": "sample-operator",
            "force": False,
            "ts": rfc3339(utc_now()),
            "id": "cmd-0",
        }
        return [(f"a sample manual {command} of {cluster}", event)]
    system = SystemEvent(type=kind, reason="sample", detail=_system_detail(kind, cluster))
    return [(f"a sample {kind} event", system.model_dump(mode="json"))]


def samples_for(config: Config | None) -> Any:
    """The `samples` callback of `load_playbooks`: each playbook's events on the first cluster its
    trigger selects, in a fleet where every other cluster is healthy."""

    def samples(playbook: Playbook) -> list[Sample]:
        # a selector that matches nothing is warned about; its templates are still rendered
        cluster = _first_selected(playbook, config) or (config.clusters[0].name if config else SAMPLE_CLUSTER)
        names = [c.name for c in config.clusters] if config is not None else [cluster]
        out = []
        for label, event in sample_events(playbook, cluster):
            after = event.get("to") if isinstance(event.get("to"), str) else "healthy"
            clusters = [
                {
                    "name": name,
                    "state": after if name == cluster else "healthy",
                    "labels": dict(config.cluster(name).labels) if config is not None else {},
                    "weight": config.cluster(name).weight if config is not None else 100,
                }
                for name in names
            ]
            out.append(Sample(label, event, clusters))
        return out

    return samples


def _first_selected(playbook: Playbook, config: Config | None) -> str | None:
    if config is None:
        return None
    selector = playbook.on.clusters
    for c in config.clusters:
        if selector is None or selector.matches(c.name, dict(c.labels)):
            return c.name
    return None


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    playbooks: int = 0
    config: Config | None = None


def validate(config_path: Path | None, playbook_paths: list[Path]) -> Report:
    """Everything `failover validate` reports: problems (exit 1) and warnings (exit unchanged)."""
    report = Report()
    defined: dict[str, set[str]] = {}
    paths = list(playbook_paths)
    if config_path is not None:
        check = check_config(config_path)
        report.problems.extend(check.problems)
        report.warnings.extend(check.warnings)
        report.config = check.config
        defined = check.set_aside
        if not paths:
            paths = check.playbook_paths
    config = report.config  # None: references to its names are not checked (templates still are)
    try:
        loaded = load_playbooks(paths, config, samples_for(config), defined)
    except ValidationFailed as e:
        report.problems.extend(e.problems)
        return report
    report.playbooks = len(loaded)
    if config is not None:
        for item in loaded.values():
            report.warnings.extend(_trigger_warnings(item.file, item.playbook, config))
        if config_path is not None:
            report.problems.extend(_unknown_readiness_playbooks(config_path, config, set(loaded)))
    return report


def _unknown_readiness_playbooks(config_path: Path, config: Config, loaded: set[str]) -> list[Problem]:
    """`readiness.playbooks` names a playbook that is not loaded: the check would report it at every
    pass of the leader; say it now."""
    missing = [(i, n) for i, n in enumerate(config.readiness.playbooks) if n not in loaded]
    if not missing:
        return []
    source = load_yaml(config_path, expand=False, max_bytes=MAX_CONFIG_BYTES)
    return [
        source.problem(
            ("readiness", "playbooks", i),
            f"no playbook {name!r} is loaded (loaded: {', '.join(sorted(loaded)) or 'none'})",
        )
        for i, name in missing
    ]


def _trigger_warnings(file: str, playbook: Playbook, config: Config) -> list[Problem]:
    selector = playbook.on.clusters
    if selector is None or _first_selected(playbook, config) is not None:
        return []
    source = load_yaml(file, expand=False)
    return [
        source.problem(
            ("on", "clusters"),
            f"{WARNING}selects none of the configured clusters "
            f"({', '.join(c.name for c in config.clusters)}): this playbook never runs",
        )
    ]
