"""Rendering a playbook into a plan: pure, no I/O (DESIGN §6b).

A run renders its playbook at start and journals the plan with the playbook's hash, so a resumed run
executes exactly what was decided even if the playbooks were reloaded since. Values that refer to
earlier steps' results (`steps`) or to the value a step replaced (`before`) cannot be known at start:
they stay templates in the plan and are rendered when their step starts, then journalled before the
effect.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2
from jinja2 import meta

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


def plan_step(step: Step, step_id: str, context: dict[str, Any]) -> dict[str, Any]:
    """One step of the plan: its fields with everything early rendered (for_each items included)."""
    # inside for_each, `item` exists only per item at step start
    late = LATE_NAMES | {"item"} if step.for_each is not None else LATE_NAMES
    entry: dict[str, Any] = {
        "id": step_id,
        "action": step.action,
        "with": render_early(step.with_, context, late),
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
        "vars": variables,
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
    return [{**c, "state": states.get(c["name"], "healthy")} for c in clusters_now]


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "no", "0", "none")
    return bool(value)


truthy = _truthy
