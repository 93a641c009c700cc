"""Rendering a playbook into a plan: pure, no I/O (DESIGN §6b).

A run renders its playbook at start and journals the plan with the playbook's hash, so a resumed run
executes exactly what was decided even if the playbooks were reloaded since. Values that refer to
earlier steps' results (`steps`) or to the value a step replaced (`before`) cannot be known at start:
they stay templates in the plan (the plan lists where, `late`) and are rendered when their step starts,
then journalled before the effect. Nothing is rendered twice: event data that contains `{{ }}` stays text.

Secrets: a plan value that holds one (a configured secret, a value under a secret-looking name, a
secret URL parameter) is sealed (`core.redact.Sealed`): the journal holds `***`, this process the value.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2
from jinja2 import meta

from orchestrator.core import redact
from orchestrator.playbooks import templates
from orchestrator.playbooks.model import Playbook, Step

LATE_NAMES = frozenset({"steps", "before", "failed_step", "error"})
_ENV = jinja2.Environment()


@cache
def _names(text: str) -> frozenset[str]:
    try:
        return frozenset(meta.find_undeclared_variables(_ENV.parse(text)))
    except jinja2.TemplateSyntaxError:
        return frozenset()


def is_late(value: Any, late: frozenset[str] = LATE_NAMES) -> bool:
    """Whether a value's templates refer to anything only known when its step starts."""
    return any(templates.is_template(text) and _names(text) & late for _loc, text in templates.strings(value))


def render_early(value: Any, context: dict[str, Any], late: frozenset[str] = LATE_NAMES) -> Any:
    """Render what can be rendered now; leave late templates (whole strings) for step start."""
    if isinstance(value, str):
        return value if is_late(value, late) else templates.render_string(value, context)
    if isinstance(value, dict):
        return {k: render_early(v, context, late) for k, v in value.items()}
    if isinstance(value, list):
        return [render_early(v, context, late) for v in value]
    return value


Path = list[str | int]


def _render_marking(
    value: Any, context: dict[str, Any], late: frozenset[str], path: Path, out: list[Path]
) -> Any:
    """`render_early`, also listing where the late templates are (`out`)."""
    if isinstance(value, str):
        if is_late(value, late):
            out.append(list(path))
            return value
        return templates.render_string(value, context)
    if isinstance(value, dict):
        return {k: _render_marking(v, context, late, [*path, k], out) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_marking(v, context, late, [*path, i], out) for i, v in enumerate(value)]
    return value


def _seal(value: Any, templates_at: set[tuple[str | int, ...]], path: tuple[str | int, ...] = ()) -> Any:
    """Seal the data leaves that hold a secret (`core.redact.Sealed`); the late templates stay as they
    are (they hold no value yet: what they render to is redacted when journalled)."""
    if path in templates_at:
        return value
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if redact.looks_secret(str(k)) and (*path, k) not in templates_at:
                out[k] = redact.seal(v, secret_name=True)
            else:
                out[k] = _seal(v, templates_at, (*path, k))
        return out
    if isinstance(value, list):
        return [_seal(v, templates_at, (*path, i)) for i, v in enumerate(value)]
    return redact.seal(value)


def render_late(value: Any, late: list[Path] | None, context: dict[str, Any]) -> Any:
    """A step's parameters at step start: the late templates (`late`, the plan's list of where they
    are) rendered, everything else taken as it is, as data, and unsealed. What was rendered when the plan
    was made is never rendered again, so `{{ }}` inside event data stays text (DESIGN §6b). A plan
    without `late` (journalled by an older version, or a compensation's source) renders whole."""
    value = redact.unseal(value)  # a fresh copy: the plan itself is never modified
    if late is None:
        return templates.render(value, context)
    if not isinstance(late, list):
        raise templates.TemplateError("the plan's list of late templates is not a list")
    for path in late:
        if not isinstance(path, list) or not path:
            if path == [] and isinstance(value, str):
                return templates.render_string(value, context)
            raise templates.TemplateError(f"the plan names no template at {path!r}")
        parent = value
        try:
            for key in path[:-1]:
                parent = parent[key]
            text = parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            raise templates.TemplateError(f"the plan names no template at {path!r}") from None
        if not isinstance(text, str):
            raise templates.TemplateError(f"the plan names no template at {path!r}")
        parent[path[-1]] = templates.render_string(text, context)
    return value


def step_params(step: dict[str, Any], journalled: Any, context: dict[str, Any]) -> Any:
    """A step's parameters when it starts: the ones journalled at its first attempt (an in-flight step
    is issued again identically), unless the journal only has them redacted (a resume in another
    process): then they are rendered again from the plan."""
    if journalled is not None and not redact.is_masked(journalled):
        return redact.unseal(journalled)
    return render_late(step["with"], step.get("late"), context)


def plan_step(step: Step, step_id: str, context: dict[str, Any]) -> dict[str, Any]:
    """One step of the plan: its fields with everything early rendered (for_each items included).

    `late` lists where the templates left for step start are: only those render then, so a value
    rendered now is data from here on, whatever it contains. Data leaves that hold a secret are sealed:
    the journal shows `***`, the step in this process sends the value."""
    # inside for_each, `item` exists only per item at step start
    late = LATE_NAMES | {"item"} if step.for_each is not None else LATE_NAMES
    late_paths: list[Path] = []
    rendered = _render_marking(step.with_, context, late, [], late_paths)
    entry: dict[str, Any] = {
        "id": step_id,
        "action": step.action,
        "with": _seal(rendered, {tuple(p) for p in late_paths}),
        "late": late_paths,
        "timeout_s": step.timeout_s,
        "retry": step.retry.model_dump() if step.retry else None,
        "verify": step.verify,
        "continue_on_error": step.continue_on_error,
        "max_parallel": step.max_parallel,
        "compensate": (
            {"action": step.compensate.action, "with": step.compensate.with_} if step.compensate else None
        ),
    }
    if isinstance(step.when, str) and not is_late(step.when, late):
        entry["when"] = bool(_truthy(templates.evaluate(step.when, context)))
    else:
        entry["when"] = step.when
    if step.for_each is not None:
        if is_late(step.for_each):
            entry["for_each"] = step.for_each
        else:
            items = templates.render(step.for_each, context)
            if not isinstance(items, list | tuple):
                raise templates.TemplateError(f"for_each must render to a list, got {type(items).__name__}")
            entry["for_each"] = list(items)
    return entry


def render_plan(playbook: Playbook, event: dict[str, Any], clusters: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole plan for a run. Raises TemplateError when something cannot render."""
    context: dict[str, Any] = {"event": event, "clusters": clusters}
    variables: dict[str, Any] = {}
    for name, value in playbook.vars.items():
        variables[name] = templates.render(value, {**context, **variables, "vars": variables})
    context.update(variables)
    context["vars"] = variables
    steps = [plan_step(step, playbook.step_id(i, step), context) for i, step in enumerate(playbook.steps)]
    on_failure = []
    if playbook.on_failure is not None:
        on_failure = [
            plan_step(step, playbook.step_id(i, step, "on_failure-"), context)
            for i, step in enumerate(playbook.on_failure.steps)
        ]
    return {
        "vars": _seal(variables, set()),  # a run's templates see them unsealed (`redact.unseal`)
        "steps": steps,
        "on_failure": on_failure,
        "guards": playbook.guards.model_dump(mode="json"),
        "clusters": clusters,
    }


def compact_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan as journalled: the fleet snapshot the templates saw is kept as the states that were not
    `healthy` (`fleet_states`), not the whole cluster list, so a record stays small at 1,000 clusters.
    Names, labels and weights come back from the configuration (`fleet_view`)."""
    out = {k: v for k, v in plan.items() if k != "clusters"}
    out["fleet_states"] = {
        str(c["name"]): c.get("state") for c in plan.get("clusters", []) if c.get("state") != "healthy"
    }
    return out


def fleet_view(plan: dict[str, Any], clusters_now: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cluster list a run's templates see: the snapshot taken at run start (older records embed it
    whole; newer ones keep the states that were not healthy), over the clusters configured now."""
    if "clusters" in plan:
        return list(plan["clusters"])
    states = plan.get("fleet_states") or {}
    out = []
    for c in clusters_now:  # an entry already in the state the snapshot says is shared, not copied
        want = states.get(c["name"], "healthy")
        out.append(c if c.get("state") == want else {**c, "state": want})
    return out


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "no", "0", "none")
    return bool(value)


truthy = _truthy
