"""`failover plan`: render a playbook for an event and print the exact changes, touching nothing.

It reads current weights from the balancers (read-only runtime-API calls), and the recorded originals
from NATS KV when `nats.url` is configured, renders the plan the way a run would, and asks each action to
describe its effect. A weight change names the cluster and, in parentheses, the balancer's own member
(`global/us-east (web/us1) weight 100 -> 0`: HAProxy `backend/server`; the backendRef, destination host
or backend service for Gateway API, Istio and SMI; the member value for a webhook), so it can be checked
against the balancer's configuration; run results and notifications keep the short form
(`global/us-east weight 100 -> 0`). Nothing is written anywhere: the fence handed to every actuator
refuses, so a write attempted by mistake fails instead of happening.

A plan that could not read what it would change is not a plan: when a balancer (or a cluster) cannot be
read, every step is still shown, and then `plan` fails naming what it could not read (exit 1), so a
script or a pre-change check never takes "cannot read" for "nothing to do". A playbook asked for an
event its trigger does not take (`--event cluster.recovered` for a `cluster.failed` playbook) is
planned as asked, with a warning: no real event would start it that way.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from orchestrator.actuators.lb import BalancerActuator
from orchestrator.actuators.registry import build_balancer
from orchestrator.actuators.scale import ScaleActuator
from orchestrator.bus.client import Bus
from orchestrator.bus.state import MemoryStateStore, StateStore
from orchestrator.core import redact
from orchestrator.core.config import Config
from orchestrator.core.durations import format_duration
from orchestrator.core.errors import OrchestratorError, PermanentError
from orchestrator.core.models import rfc3339, utc_now
from orchestrator.kube.client import KubeClients
from orchestrator.playbooks import templates
from orchestrator.playbooks.actions import REGISTRY, Services, StepContext
from orchestrator.playbooks.loader import load_playbooks
from orchestrator.playbooks.model import Playbook
from orchestrator.playbooks.plan import LATE_NAMES, is_late, render_early, render_late, render_plan

STATE_AFTER = {
    "cluster.failed": "failed",
    "cluster.degraded": "degraded",
    "cluster.recovered": "healthy",
    "cluster.unknown": "unknown",
    "manual": "healthy",
}


def _refuse_writes() -> None:
    """The fence of a dry run: every write is refused (describing reads only; this is a safety net)."""
    raise PermanentError("failover plan changes nothing: a write was attempted and refused")


def _warn_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def trigger_warnings(pb: Playbook, config: Config, event_type: str, cluster: str) -> list[str]:
    """Why no real event would start `pb` the way it is planned (empty: one would)."""
    out = []
    if pb.on.event != event_type:
        out.append(
            f"warning: playbook {pb.name} runs on {pb.on.event}, not {event_type}: this plan shows what "
            f"it would do if it did; `--event {pb.on.event}` plans what a real event does"
        )
    selector = pb.on.clusters
    if selector is not None and not selector.matches(cluster, dict(config.cluster(cluster).labels)):
        out.append(
            f"warning: playbook {pb.name} does not select cluster {cluster} (on.clusters): no event on "
            f"{cluster} starts it"
        )
    return out


def dry_event(event_type: str, cluster: str, state: str, actor: str) -> dict[str, Any]:
    """The event a dry run (`failover plan`, readiness checks) gives a playbook: the union of the shapes
    real events have (a detector's `from`/`to`/`reason`/`evidence`, a system event's `detail`, a manual
    event's `actor`/`force`: not forced, so approvals show), stamped now."""
    return {
        "type": event_type,
        "cluster": cluster,
        "from": "failed" if event_type == "cluster.recovered" else "healthy",
        "to": state,
        "reason": actor,
        "detail": {"cluster": cluster, "clusters": [cluster]},
        "actor": actor,
        "force": False,
        "evidence": {},
        "id": actor,
        "ts": rfc3339(utc_now()),
    }


async def plan(
    config: Config,
    playbook_name: str,
    event_type: str,
    cluster: str,
    out: Any = print,
    warn: Callable[[str], None] = _warn_stderr,
) -> None:
    """Print the plan through `out` and warnings through `warn`; raise PermanentError (after printing
    the whole plan) when some current state could not be read."""
    playbooks = load_playbooks(config.playbook_paths(), config)
    if playbook_name not in playbooks:
        raise PermanentError(f"no playbook {playbook_name!r} (loaded: {', '.join(sorted(playbooks))})")
    if cluster not in {c.name for c in config.clusters}:
        raise PermanentError(f"unknown cluster {cluster!r}")
    loaded = playbooks[playbook_name]
    pb = loaded.playbook
    for line in trigger_warnings(pb, config, event_type, cluster):
        warn(line)
    states = {c.name: "healthy" for c in config.clusters}
    states[cluster] = STATE_AFTER.get(event_type, "healthy")
    clusters = [
        {"name": c.name, "state": states[c.name], "labels": dict(c.labels), "weight": c.weight}
        for c in config.clusters
    ]
    event = dry_event(event_type, cluster, states[cluster], "dry-run")
    bus: Bus | None = None
    store: StateStore = MemoryStateStore()
    notes = []
    if config.nats.url:
        try:
            bus = await Bus.connect(config.nats, config.state_path, name="failover-plan")
            await bus.ensure_topology()
            store = StateStore(bus)
        except OrchestratorError as e:
            notes.append(f"note: NATS not reachable ({e}); recorded original weights are not known")
    else:
        notes.append("note: no nats.url configured; restores show nominal weights, not recorded originals")
    kube = KubeClients()
    balancers: dict[str, BalancerActuator] = {}
    try:
        balancers = {
            lb.name: BalancerActuator(
                build_balancer(lb),
                {c.name: c.weight for c in config.clusters},
                lambda: states,
                store,
                fence=_refuse_writes,
            )
            for lb in config.load_balancers
        }
        scale = (
            ScaleActuator(kube, config, store, lambda: states, fence=_refuse_writes)
            if any(c.kubernetes for c in config.clusters)
            else None
        )
        services = Services(
            config,
            balancers,
            {n.name: _NoNotifier(n.name) for n in config.notifiers},  # type: ignore[misc]
            lambda: states,
            dry_run=True,
            scale=scale,
            fence=_refuse_writes,
        )
        try:
            rendered = render_plan(pb, event, clusters)
        except templates.TemplateError as e:
            raise PermanentError(f"{pb.name}: the plan does not render for this event: {e}") from e
        out(f"plan: {pb.name} (sha256 {loaded.sha256[:12]}) for {event_type} on {cluster}")
        guards = pb.guards
        parts = [f"min_healthy_clusters {guards.min_healthy_clusters}"]
        if guards.cooldown_s:
            parts.append(f"cooldown {format_duration(guards.cooldown_s)}")
        if guards.budget:
            parts.append(f"budget {guards.budget.runs} per {format_duration(guards.budget.per_s)}")
        out(f"guards: {', '.join(parts)}")
        for name, value in rendered["vars"].items():
            out(f"vars: {name} = {json.dumps(value)}")
        unreadable: dict[str, str] = {}
        await _steps(
            rendered["steps"], event, rendered, services, guards.min_healthy_clusters, out, unreadable
        )
        if rendered["on_failure"]:
            out("on_failure (only if a step fails):")
            await _steps(
                rendered["on_failure"],
                event,
                rendered,
                services,
                guards.min_healthy_clusters,
                out,
                unreadable,
                placeholders={"failed_step": "<failed step>", "error": "<its error>"},
            )
        for note in notes:
            out(note)
        out("nothing was changed (dry-run)")
        if unreadable:
            raise PermanentError(
                "the plan is incomplete: "
                + "; ".join(f"cannot read {what}: {why}" for what, why in unreadable.items())
            )
    finally:
        await kube.close()
        for actuator in balancers.values():
            with contextlib.suppress(Exception):
                await actuator.balancer.close()
        if bus is not None:
            await bus.close()


async def _steps(
    steps: list[dict[str, Any]],
    event: dict[str, Any],
    rendered: dict[str, Any],
    services: Services,
    min_healthy: int,
    out: Any,
    unreadable: dict[str, str],
    placeholders: dict[str, Any] | None = None,
) -> None:
    context = {
        "event": event,
        "clusters": rendered["clusters"],
        **rendered["vars"],
        "vars": rendered["vars"],
        **(placeholders or {}),
    }
    for n, step in enumerate(steps, 1):
        action = REGISTRY[step["action"]]
        extra = []
        if step.get("timeout_s"):
            extra.append(f"timeout {format_duration(step['timeout_s'])}")
        if step.get("retry"):
            extra.append(f"retry {step['retry']['attempts']}")
        if not action.idempotent:
            extra.append("not idempotent")
        out(f"  {n}. {step['id']}: {step['action']}" + (f"  ({', '.join(extra)})" if extra else ""))
        when = step.get("when")
        if when is False:
            out("       skipped: `when` is false")
            continue
        if isinstance(when, str):
            out(f"       only if {when} (decided at step start)")
        items = step.get("for_each")
        if isinstance(items, str):
            out(f"       for each item of {items} (decided at step start)")
            items = None
        for item in items if items is not None else [None]:
            item_context = {**context, "item": item} if item is not None else context
            try:  # fully, when the late names are known here (on_failure's placeholders)
                raw = render_late(step["with"], step.get("late"), item_context)
            except templates.TemplateError:
                raw = render_early(redact.unseal(step["with"]), item_context, LATE_NAMES)
            shown = json.dumps(raw)
            out(
                f"       with {shown}"
                + ("  (templates on earlier steps render at step start)" if is_late(step["with"]) else "")
            )
            try:
                params = action.params.model_validate(raw)
            except ValidationError:
                out("       (parameters depend on earlier steps: exact change known at step start)")
                continue
            except templates.TemplateError as e:
                out(f"       cannot render: {e}")
                continue
            ctx = StepContext(
                services, "dry-run", "dry-run", str(step["id"]), event, min_healthy_clusters=min_healthy
            )
            try:
                for line in await action.describe(ctx, params):
                    out(f"       -> {line}")
            except OrchestratorError as e:
                out(f"       -> cannot read current state: {e}")
                balancer = getattr(params, "balancer", None)
                what = (
                    f"balancer {balancer}"
                    if isinstance(balancer, str)
                    else f"the state step {step['id']} reads"
                )
                unreadable.setdefault(what, str(e))


class _NoNotifier:
    """Stands in for a notifier in a dry-run: it exists (so references resolve) and sends nothing."""

    def __init__(self, name: str) -> None:
        self.name = name
