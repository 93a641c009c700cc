"""Load playbooks from `playbooks.paths` and refuse anything wrong with `file:line: path: message`.

Checks beyond the model: unknown actions and parameters (statically, for every literal value),
template syntax, references to balancers, notifiers and clusters the config does not define, duplicate
step ids and duplicate playbook names. A set with any problem is refused whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator.core.config import Config
from orchestrator.core.config_dns import DNS_DRIVERS
from orchestrator.core.errors import Problem, ValidationFailed
from orchestrator.core.partial import validate_partial
from orchestrator.core.yamlsource import Loc, Source, load_yaml, pydantic_problems
from orchestrator.playbooks import templates
from orchestrator.playbooks.actions import REGISTRY
from orchestrator.playbooks.model import Playbook, Step
from orchestrator.playbooks.strict import Sample, check_rendering

Samples = Callable[[Playbook], list[Sample]]
"""The events a playbook may receive (`failover validate` renders every template against each)."""
Defined = Mapping[str, set[str]]
"""kind (balancer, notifier, cluster) -> names of config items that failed validation: referring to
them is not also an "unknown" error."""


@dataclass(frozen=True)
class LoadedPlaybook:
    playbook: Playbook
    file: str
    sha256: str
    """Hash of the file's bytes: journalled with each run, so a resumed run knows what it executes."""


def playbook_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            files.append(path)
    return files


def load_playbooks(
    paths: Iterable[Path],
    config: Config | None,
    samples: Samples | None = None,
    defined: Defined | None = None,
) -> dict[str, LoadedPlaybook]:
    problems: list[Problem] = []
    loaded: dict[str, LoadedPlaybook] = {}
    for file in playbook_files(paths):
        try:
            item = load_playbook(file, config, samples, defined)
        except ValidationFailed as e:
            problems.extend(e.problems)
            continue
        name = item.playbook.name
        if name in loaded:
            problems.append(
                Problem(
                    str(file), 1, "name", f"playbook name {name!r} is already used by {loaded[name].file}"
                )
            )
            continue
        loaded[name] = item
    if problems:
        raise ValidationFailed(problems)
    return loaded


def load_playbook(
    file: Path, config: Config | None, samples: Samples | None = None, defined: Defined | None = None
) -> LoadedPlaybook:
    """One playbook, or ValidationFailed with every problem: the steps that do not validate are set
    aside and the rest checked on (references, syntax; with `samples`, strict rendering), so fixing a
    file takes one run of `failover validate`, not one per stage."""
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise ValidationFailed([Problem(str(file), 0, "", f"cannot read: {e.strerror or e}")]) from e
    # ${VAR} is config syntax; playbooks use {{ }} templates, so no environment expansion here
    source = load_yaml(file, text=raw.decode("utf-8", "replace"), expand=False)
    partial = validate_partial(source, Playbook)
    problems = list(partial.problems)
    playbook = partial.model
    if playbook is not None:
        problems.extend(check_playbook(partial.source, playbook, config, defined))
        reported = {p.path for p in problems}  # a syntax error does not also fail to render
        set_aside = frozenset(
            str(step["id"])
            for path in (("steps",), ("on_failure", "steps"), ("on_failure",))
            for step in partial.set_aside.get(path, [])
            if isinstance(step, dict) and isinstance(step.get("id"), str)
        )
        for sample in samples(playbook) if samples is not None else []:
            for problem in check_rendering(partial.source, playbook, sample, config, set_aside):
                if problem.path not in reported:
                    reported.add(problem.path)
                    problems.append(problem)
    if problems or playbook is None:
        raise ValidationFailed(problems)
    return LoadedPlaybook(playbook, str(file), hashlib.sha256(raw).hexdigest())


def check_playbook(
    source: Source, playbook: Playbook, config: Config | None, defined: Defined | None = None
) -> list[Problem]:
    problems: list[Problem] = []
    for loc, text in templates.strings(source.data.get("vars", {}), ("vars",)):
        _syntax(source, loc, text, problems)
    if playbook.concurrency:
        _syntax(source, ("concurrency",), playbook.concurrency, problems)
    if config is not None and playbook.on.clusters is not None:
        known = {c.name for c in config.clusters}
        for i, name in enumerate(playbook.on.clusters.names):
            if name not in known:
                problems.append(source.problem(("on", "clusters", "names", i), f"unknown cluster {name!r}"))
    _check_steps(source, ("steps",), playbook.steps, config, problems, defined or {})
    if playbook.on_failure is not None:
        _check_steps(
            source, ("on_failure", "steps"), playbook.on_failure.steps, config, problems, defined or {}
        )
    return problems


def _check_steps(
    source: Source,
    base: Loc,
    steps: list[Step],
    config: Config | None,
    problems: list[Problem],
    defined: Defined,
) -> None:
    seen: dict[str, int] = {}
    for i, step in enumerate(steps):
        loc: Loc = (*base, i)
        if step.id is not None:
            if step.id in seen:
                problems.append(
                    source.problem(
                        (*loc, "id"), f"duplicate step id {step.id!r} (first at step {seen[step.id] + 1})"
                    )
                )
            seen.setdefault(step.id, i)
        if isinstance(step.when, str):
            message = templates.check_expression(step.when)
            if message:
                problems.append(source.problem((*loc, "when"), message))
        if isinstance(step.for_each, str):
            _syntax(source, (*loc, "for_each"), step.for_each, problems)
        _check_action(
            source, loc, step.action, step.with_, config, problems, step.for_each is not None, defined
        )
        if step.compensate is not None:
            _check_action(
                source,
                (*loc, "compensate"),
                step.compensate.action,
                step.compensate.with_,
                config,
                problems,
                step.for_each is not None,
                defined,
            )


def _check_action(
    source: Source,
    loc: Loc,
    action_name: str,
    with_: dict[str, Any],
    config: Config | None,
    problems: list[Problem],
    for_each: bool,
    defined: Defined,
) -> None:
    action = REGISTRY.get(action_name)
    if action is None:
        problems.append(
            source.problem(
                (*loc, "action"), f"unknown action {action_name!r} (known: {', '.join(sorted(REGISTRY))})"
            )
        )
        return
    with_loc: Loc = (*loc, "with")
    literal: dict[str, Any] = {}
    templated: set[str] = set()
    for key, value in with_.items():
        has_template = any(templates.is_template(text) for _loc, text in templates.strings(value))
        for sub, text in templates.strings(value, (*with_loc, key)):
            _syntax(source, sub, text, problems)
        if has_template:
            templated.add(key)
        else:
            literal[key] = value
    try:
        action.params.model_validate(literal)
    except ValidationError as e:
        for p in pydantic_problems(_Shifted(source, with_loc), e):
            if p.message == "required field is missing" and p.path.rsplit(".", 1)[-1] in templated:
                continue
            problems.append(p)
    if config is None:
        return
    for key, kind in action.refs.items():
        value = literal.get(key)
        if not isinstance(value, str):
            continue
        names = {
            "balancer": [b.name for b in config.load_balancers],
            "notifier": [n.name for n in config.notifiers],
            "cluster": [c.name for c in config.clusters],
        }[kind]
        if value not in names and value not in defined.get(kind, set()):
            problems.append(
                source.problem(
                    (*with_loc, key), f"unknown {kind} {value!r} (configured: {', '.join(names) or 'none'})"
                )
            )
    _check_dns(source, with_loc, action_name, literal, config, problems)


def _check_dns(
    source: Source,
    with_loc: Loc,
    action_name: str,
    literal: dict[str, Any],
    config: Config,
    problems: list[Problem],
) -> None:
    """DNS balancers have no weights (DESIGN §16): a ramp cannot be honoured, and a native weight is 0
    (the cluster's addresses removed) or 1 (put back)."""
    lb = next((b for b in config.load_balancers if b.name == literal.get("balancer")), None)
    if lb is None or lb.driver not in (*DNS_DRIVERS, "external_dns"):  # external_dns: a DNSEndpoint's targets
        return
    ramp = literal.get("ramp")
    if action_name == "lb.restore" and isinstance(ramp, list) and len(ramp) > 1:
        problems.append(
            source.problem(
                (*with_loc, "ramp"),
                f"balancer {lb.name} ({lb.driver}) has no weights: a cluster's addresses come back all at "
                "once, so a ramp cannot be honoured; remove it",
            )
        )
    weights = literal.get("weights")
    if action_name == "lb.set_weights" and isinstance(weights, dict):
        for cluster, weight in weights.items():
            if weight not in (0, 1) or isinstance(weight, bool):
                problems.append(
                    source.problem(
                        (*with_loc, "weights", cluster),
                        f"balancer {lb.name} ({lb.driver}) takes 0 (addresses removed) or 1 (put back), "
                        f"got {weight!r}",
                    )
                )


def _syntax(source: Source, loc: Loc, text: str, problems: list[Problem]) -> None:
    message = templates.check_syntax(text)
    if message:
        problems.append(source.problem(loc, message))


class _Shifted(Source):
    """A view of `source` whose locations are relative to `prefix` (for nested model validation)."""

    def __init__(self, source: Source, prefix: Loc) -> None:
        super().__init__(source.file, source.data, source.lines)
        self.prefix = prefix

    def problem(self, loc: Iterable[str | int], message: str) -> Problem:
        return super().problem((*self.prefix, *loc), message)
