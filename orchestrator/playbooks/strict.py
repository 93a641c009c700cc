"""Strict rendering for `failover validate`: every template of a playbook, rendered against a sample
event, with the names each place really has at run time.

Syntax alone passes `{{ event.clustr }}`, which then fails in the middle of a failover, after the drain
and before the page. Here each template is rendered where the run would render it: `vars` in order,
`concurrency` with the event alone, `when`, `for_each` and `with` with the plan's context plus
`steps` (the ids of the steps before this one), `item` only inside a `for_each`, `before` only in a
`compensate`, `failed_step` and `error` only in `on_failure`, and a `wait_for` expression with what its
polls see. Values nobody has before the run (a step's result, the value a step replaced) are `Unknown`:
any attribute of them is again unknown, so a template is checked for its names, not for data.

Rendered parameters are then checked like literal ones: the action's model (a `replicas` that renders
to a cluster name is refused) and the names of balancers, notifiers and clusters.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from orchestrator.core.config import Config
from orchestrator.core.errors import Problem
from orchestrator.core.yamlsource import Loc, Source, format_loc
from orchestrator.playbooks import templates
from orchestrator.playbooks.actions import REGISTRY
from orchestrator.playbooks.model import Playbook, Step

MAX_ITEMS = 20
"""Items of a `for_each` rendered one by one: enough to meet every shape, bounded at 1,000 clusters."""


class Unknown(dict[str, Any]):
    """A value known only while a run executes. Every attribute and item of it is unknown too; it
    iterates as empty, is true, compares as neither smaller nor greater, and prints as `<what>`.

    A dict, so that Jinja2 looks its attributes up as items (`__missing__`) and `tojson` works."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self._what = what

    def __missing__(self, key: str) -> Unknown:
        return Unknown(f"{self._what}.{key}")

    def __str__(self) -> str:
        return f"<{self._what}>"

    __repr__ = __str__

    def __bool__(self) -> bool:
        return True

    def __int__(self) -> int:
        return 0

    def __float__(self) -> float:
        return 0.0

    def __lt__(self, other: object) -> bool:
        return False

    __le__ = __gt__ = __ge__ = __lt__

    def __add__(self, other: object) -> Unknown:
        return Unknown(self._what)

    __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __add__

    def __call__(self, *args: Any, **kwargs: Any) -> Unknown:
        return Unknown(f"{self._what}()")

    def __hash__(self) -> int:  # type: ignore[override]
        return id(self)


def holds_unknown(value: Any) -> bool:
    if isinstance(value, Unknown):
        return True
    if isinstance(value, dict):
        return any(holds_unknown(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(holds_unknown(v) for v in value)
    return False


@dataclass(frozen=True)
class Sample:
    """One event a playbook may receive, and the fleet its templates see with it."""

    label: str
    """How problems name it: `a sample cluster.failed event on eu-west`."""
    event: dict[str, Any]
    clusters: list[dict[str, Any]]


def check_rendering(
    source: Source,
    playbook: Playbook,
    sample: Sample,
    config: Config | None,
    steps_set_aside: frozenset[str] = frozenset(),
) -> list[Problem]:
    """Every template of `playbook` rendered for `sample`; one problem per place that fails.
    `steps_set_aside`: ids of steps that did not validate (reported already): naming them is no error."""
    checker = _Checker(source, sample, config)
    return checker.run(playbook, sorted(steps_set_aside))


class _Checker:
    def __init__(self, source: Source, sample: Sample, config: Config | None) -> None:
        self.source = source
        self.sample = sample
        self.config = config
        self.problems: list[Problem] = []
        self.seen: set[tuple[str, str]] = set()

    def fail(self, loc: Loc, message: str) -> None:
        key = (format_loc(loc), message)
        if key not in self.seen:  # the same typo in a step's every item is one problem
            self.seen.add(key)
            self.problems.append(self.source.problem(loc, f"{message} (rendered for {self.sample.label})"))

    def render(self, loc: Loc, value: Any, context: Mapping[str, Any]) -> tuple[bool, Any]:
        """Render every string inside `value`, reporting each that fails at its own location."""
        ok = True
        for sub, text in templates.strings(value, loc):
            try:
                templates.render_string(text, context)
            except templates.TemplateError as e:
                self.fail(sub, str(e))
                ok = False
        if not ok:
            return False, None
        try:
            return True, templates.render(value, context)
        except templates.TemplateError as e:  # not expected after every leaf rendered
            self.fail(loc, str(e))
            return False, None

    def run(self, playbook: Playbook, set_aside: list[str]) -> list[Problem]:
        event = self.sample.event
        if playbook.concurrency:
            self.render(("concurrency",), playbook.concurrency, {"event": event})
        context: dict[str, Any] = {"event": event, "clusters": self.sample.clusters}
        variables: dict[str, Any] = {}
        for name, value in playbook.vars.items():
            ok, rendered = self.render(("vars", name), value, {**context, **variables, "vars": variables})
            variables[name] = rendered if ok else Unknown(f"vars.{name}")
        context.update(variables)
        context["vars"] = variables
        done: list[str] = list(set_aside)
        for i, step in enumerate(playbook.steps):
            self.step(("steps", i), step, context, done)
            done.append(playbook.step_id(i, step))
        if playbook.on_failure is not None:
            failing = {**context, "failed_step": "<failed step>", "error": "<its error>"}
            for i, step in enumerate(playbook.on_failure.steps):
                self.step(("on_failure", "steps", i), step, failing, done)
                done.append(playbook.step_id(i, step, "on_failure-"))
        return self.problems

    def step(self, loc: Loc, step: Step, context: dict[str, Any], done: list[str]) -> None:
        here = {**context, "steps": {d: Unknown(f"steps.{d}") for d in done}}
        if isinstance(step.when, str):
            try:
                templates.evaluate(step.when, here)
            except templates.TemplateError as e:
                self.fail((*loc, "when"), str(e))
        items: list[Any] | None = None
        if step.for_each is not None:
            ok, rendered = self.render((*loc, "for_each"), step.for_each, here)
            if ok and not isinstance(rendered, list | tuple) and not isinstance(rendered, Unknown):
                self.fail((*loc, "for_each"), f"must render to a list, got {type(rendered).__name__}")
            elif ok and rendered and not holds_unknown(rendered):
                items = list(rendered)[:MAX_ITEMS]
            else:
                items = [Unknown("item")]
        for item_context in _per_item(here, items):
            self.action((*loc,), step.action, step.with_, item_context)
        if step.compensate is not None:
            self.action(
                (*loc, "compensate"),
                step.compensate.action,
                step.compensate.with_,
                {**here, "before": Unknown("before")},
            )

    def action(self, loc: Loc, name: str, with_: dict[str, Any], context: Mapping[str, Any]) -> None:
        action = REGISTRY.get(name)
        if action is None:
            return  # the loader reports the unknown action
        with_loc: Loc = (*loc, "with")
        ok, rendered = self.render(with_loc, with_, context)
        expression = with_.get("expression") if name == "wait_for" else None
        if isinstance(expression, str) and not templates.is_template(expression):
            try:  # evaluated by the action on every poll, with the same names
                templates.evaluate(expression, context)
            except templates.TemplateError as e:
                self.fail((*with_loc, "expression"), str(e))
        if not ok or holds_unknown(rendered):
            return
        templated = {
            k for k, v in with_.items() if any(templates.is_template(t) for _l, t in templates.strings(v))
        }
        if not templated:
            return  # literal parameters: the loader has checked them already
        try:
            action.params.model_validate(rendered)
        except ValidationError as e:
            for err in e.errors(include_url=False):
                key = err["loc"][0] if err["loc"] else ""
                if key in templated:
                    self.fail((*with_loc, *err["loc"]), f"renders to {rendered.get(key)!r}: {err['msg']}")
        if self.config is None:
            return
        for key, kind in action.refs.items():
            value = rendered.get(key)
            if key not in templated or not isinstance(value, str):
                continue
            names = _names(self.config, kind)
            if value not in names:
                self.fail(
                    (*with_loc, key),
                    f"renders to unknown {kind} {value!r} (configured: {', '.join(names) or 'none'})",
                )


def _per_item(context: dict[str, Any], items: list[Any] | None) -> Iterator[dict[str, Any]]:
    if items is None:
        yield context
        return
    for item in items:
        yield {**context, "item": item}


def _names(config: Config, kind: str) -> list[str]:
    if kind == "balancer":
        return [b.name for b in config.load_balancers]
    if kind == "notifier":
        return [n.name for n in config.notifiers]
    return [c.name for c in config.clusters]
