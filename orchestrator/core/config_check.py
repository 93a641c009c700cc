"""`failover validate`'s reading of a config: every problem in one pass, features nothing serves, and
warnings about a fleet that would not fail over well.

`load_config` (what the daemon uses) stops at the first stage that fails: a field error hides the
cross-checks, and a config that does not load hides every playbook reference. Here the parts that fail
are set aside (`core.partial`) and the rest checked on, so one run lists everything. Warnings never
change the exit code; they print as `file:line: path: warning: message`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.config import Config, _cross_checks, anonymous_exposure
from orchestrator.core.config_chatops import chatops_warnings
from orchestrator.core.errors import Problem, ValidationFailed
from orchestrator.core.partial import names_set_aside, validate_partial
from orchestrator.core.yamlsource import MAX_CONFIG_BYTES, Source, load_yaml

UNSERVED: dict[tuple[str, ...], str] = {}
"""Config paths the schema accepts but no code in this build reads, with what to do instead. A
feature here validated silently before and then did nothing; now it is refused. Kept honest by a test
that finds, for every field of the config model, code outside `core/config*` that reads it."""

WARNING = "warning: "


@dataclass
class ConfigCheck:
    config: Config | None
    """The config without the parts that failed (None: nothing usable), its base_dir set."""
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    set_aside: dict[str, set[str]] = field(default_factory=dict)
    """kind (cluster, balancer, notifier) -> names defined by items that failed validation."""
    playbook_paths: list[Path] = field(default_factory=list)


def check_config(
    path: str | Path,
    env: dict[str, str] | None = None,
    unserved: dict[tuple[str, ...], str] | None = None,
) -> ConfigCheck:
    """Every problem of the config file at `path`, and warnings; never raises for a bad file."""
    try:
        source = load_yaml(path, env=env, max_bytes=MAX_CONFIG_BYTES)
    except ValidationFailed as e:
        return ConfigCheck(None, list(e.problems))
    base = Path(path).resolve().parent
    partial = validate_partial(source, Config)
    check = ConfigCheck(None, list(partial.problems))
    check.set_aside = {
        "cluster": names_set_aside(partial, ("clusters",)),
        "balancer": names_set_aside(partial, ("load_balancers",)),
        "notifier": names_set_aside(partial, ("notifiers",)),
    }
    check.problems.extend(_unserved(source, UNSERVED if unserved is None else unserved))
    config = partial.model
    if config is None:
        check.playbook_paths = [base / p for p in _raw_playbook_paths(source)]
        return check
    config = config.model_copy(update={"base_dir": str(base)})
    check.config = config
    check.playbook_paths = config.playbook_paths()
    check.problems.extend(_cross_checks(partial.source, config, frozenset(check.set_aside["cluster"])))
    check.warnings.extend(_warnings(partial.source, config, source.data, check.set_aside))
    return check


def _unserved(source: Source, unserved: dict[tuple[str, ...], str]) -> list[Problem]:
    problems = []
    for path, why in unserved.items():
        node: Any = source.data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node not in (None, {}, []):
            problems.append(source.problem(path, f"configured, but nothing in this version serves it: {why}"))
    return problems


def _raw_playbook_paths(source: Source) -> list[str]:
    """`playbooks.paths` as written, when the config as a whole does not validate."""
    data = source.data if isinstance(source.data, dict) else {}
    section = data.get("playbooks", {})
    paths = section.get("paths") if isinstance(section, dict) else None
    if paths is None and isinstance(source.data, dict):
        return ["playbooks/"]  # the default, as the model has it
    return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []


def _warnings(source: Source, config: Config, raw: Any, set_aside: dict[str, set[str]]) -> list[Problem]:
    out: list[Problem] = []
    balanced = {member for lb in config.load_balancers for member in lb.members}
    for lb in raw.get("load_balancers") or [] if isinstance(raw, dict) else []:
        if isinstance(lb, dict) and lb.get("name") in set_aside.get("balancer", set()):
            members = lb.get("members")
            balanced |= set(members) if isinstance(members, dict) else set()
    for i, cluster in enumerate(config.clusters):
        if not cluster.probes:
            out.append(
                source.problem(
                    ("clusters", i, "name"),
                    f"{WARNING}{cluster.name} has no probes: nothing measures its health, so it is never "
                    "failed over (nor failed back)",
                )
            )
        if cluster.name not in balanced and config.load_balancers:  # none: a prober's config
            lbs = ", ".join(lb.name for lb in config.load_balancers) or "none configured"
            out.append(
                source.problem(
                    ("clusters", i, "name"),
                    f"{WARNING}{cluster.name} is a member of no load balancer ({lbs}): a failover "
                    "cannot move its traffic",
                )
            )
    notifier_channels = {
        n.name: n.slack.channel
        for n in config.notifiers
        if n.driver == "slack" and n.slack is not None and n.slack.channel
    }
    for loc, message in chatops_warnings(config.chatops, notifier_channels):
        out.append(source.problem(loc, WARNING + message))
    exposure = anonymous_exposure(config)
    if exposure:
        out.append(
            source.problem(
                ("api", "allow_anonymous"), WARNING + exposure.removeprefix("WARNING: api.allow_anonymous: ")
            )
        )
    return out
