"""`failover check --config F`: the readiness checks (DESIGN §17), run here, now, without a daemon.

Like `failover plan`, it reads and never writes: the balancers' weights, the workloads, the Kubernetes
permissions (SelfSubjectAccessReview, as the identities in the config's kubeconfigs), the notifiers'
reachability (nothing is sent). Recorded baselines come from NATS KV when `nats.url` is configured;
otherwise the workloads' current replicas are the baseline. Exit codes: 0 every failover playbook would
work for every cluster, 1 something would not (or there is no failover playbook at all), 2 a usage or
configuration error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import typer

from orchestrator.core.errors import OrchestratorError, ValidationFailed

USAGE = 2


def command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Configuration file (YAML).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="List the checks that passed too.")
    ] = False,
) -> None:
    """Would each failover playbook work now, for each cluster? Balancers, workloads, capacity,
    Kubernetes permissions, notifiers; read-only. Exit 1 when something is not ready."""
    from orchestrator.core.config import load_config
    from orchestrator.playbooks.loader import load_playbooks

    try:
        cfg = load_config(config)
        playbooks = load_playbooks(cfg.playbook_paths(), cfg)
    except ValidationFailed as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(USAGE) from None
    try:
        report = asyncio.run(run(cfg, playbooks))
    except OrchestratorError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(USAGE) from None
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        for line in table(report, verbose):
            typer.echo(line)
    raise typer.Exit(0 if report["results"] and report["ready"] else 1)


async def run(config: Any, playbooks: Any) -> dict[str, Any]:
    """One pass, as the daemon's leader makes it; the report as `GET /api/v1/readiness` shows it (with
    every check listed)."""
    from orchestrator.actuators.registry import build_balancer
    from orchestrator.bus.client import Bus
    from orchestrator.bus.state import MemoryStateStore, StateStore
    from orchestrator.core import redact
    from orchestrator.kube.client import KubeClients
    from orchestrator.runtime.readiness import ReadinessChecker, build_notifiers

    redact.register_config(config)
    bus: Bus | None = None
    store: StateStore = MemoryStateStore()
    notes: list[str] = []
    if config.nats.url:
        try:
            bus = await Bus.connect(config.nats, config.state_path, name="failover-check")
            store = StateStore(bus)
        except OrchestratorError as e:
            notes.append(f"NATS not reachable ({e}): recorded baselines are not known")
    else:
        notes.append("no nats.url: workloads' current replicas are taken as their baseline")
    session = aiohttp.ClientSession()
    kube = KubeClients()
    drivers = {}
    try:
        drivers = {lb.name: build_balancer(lb) for lb in config.load_balancers}
        notifiers, skipped = build_notifiers(config, session, bus)
        checker = ReadinessChecker(
            config, lambda: playbooks, drivers, kube, store, notifiers, skipped_notifiers=skipped
        )
        report = await checker.run_once()
    finally:
        for driver in drivers.values():
            with contextlib.suppress(Exception):
                await driver.close()
        await kube.close()
        await session.close()
        if bus is not None:
            await bus.close()
    out: dict[str, Any] = {"enabled": config.readiness.enabled, "interval_s": config.readiness.interval_s}
    out |= report.as_dict(with_checks=True)
    out["notes"] = notes
    return out


def table(report: dict[str, Any], verbose: bool = False) -> list[str]:
    """PLAYBOOK / CLUSTER / READY / what is wrong, one problem a line; `verbose` adds what passed."""
    results = report["results"]
    if not results:
        return ["nothing to check: no playbook is triggered by cluster.failed or is a manual-drain*"]
    wide_pb = max(len("PLAYBOOK"), *(len(r["playbook"]) for r in results))
    wide_cl = max(len("CLUSTER"), *(len(r["cluster"]) for r in results))
    lines = [f"{'PLAYBOOK':<{wide_pb}}  {'CLUSTER':<{wide_cl}}  READY  CHECKS"]
    pad = " " * (wide_pb + wide_cl + 11)
    for r in results:
        shown = [f"{p['kind']}: {p['message']}" for p in r["problems"]]
        shown += [f"skipped {s['kind']}: {s['message']}" for s in r["skipped"]]
        if verbose:
            shown += [f"ok {c['kind']}: {c['message']}" for c in r.get("checks", []) if c["status"] == "ok"]
        first = shown[0] if shown else f"{r['passed']} passed"
        ready = "yes" if r["ready"] else "NO"
        lines.append(f"{r['playbook']:<{wide_pb}}  {r['cluster']:<{wide_cl}}  {ready:<5}  {first}")
        lines += [pad + line for line in shown[1:]]
    not_ready = report["not_ready"]
    verdict = "every failover plan is ready" if not not_ready else f"{not_ready} of {len(results)} NOT ready"
    lines.append(f"{verdict} (checked in {report['duration_s']:g}s; nothing was changed)")
    lines += [f"note: {n}" for n in report.get("notes", [])]
    return lines
