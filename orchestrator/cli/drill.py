"""`failover drill` (DESIGN §15): a reversible fault in a real cluster, the daemon watched through its API.

The drill reaches the cluster with the config's `kubernetes:` credentials and the daemon with its HTTP
API (`--api`, default the config's `api.listen`; `--token` or FAILOVER_TOKEN, an operator's: the drill
is announced and audited as a `drill` command). Ctrl-C and SIGTERM cancel the drill, which removes the
fault before it exits; a second signal while it does is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import Any
from urllib.parse import quote

import typer

from orchestrator.cli import ctl
from orchestrator.core.config import Config
from orchestrator.runtime.drill import STAGES, Drill, DrillRefused, DrillSpec, NotAnnounced, Report, ViewError

RUNS_LISTED = 20


class HttpView:
    """The `DaemonView` of a drill, over the daemon's HTTP API; its errors become `ViewError`."""

    def __init__(self, target: ctl.Target) -> None:
        self.target = target

    async def _get(self, path: str) -> Any:
        try:
            return await ctl.request(self.target, "GET", path)
        except ctl.CtlError as e:
            raise ViewError(str(e)) from None

    async def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self._get("/api/v1/status")
        return answer

    async def weights(self, cluster: str) -> dict[str, int] | None:
        view = await self._get("/api/v1/clusters")
        if view.get("unreadable_balancers"):
            return None
        for c in view.get("clusters", []):
            if c.get("name") == cluster:
                return dict(c.get("weights") or {})
        return None

    async def runs(self) -> list[dict[str, Any]]:
        view = await self._get(f"/api/v1/runs?limit={RUNS_LISTED}")
        return list(view.get("runs") or [])

    async def run(self, run_id: str) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = await ctl.request(
                self.target, "GET", f"/api/v1/runs/{quote(run_id, safe='')}"
            )
        except ctl.CtlError as e:
            if "(HTTP 404)" in str(e):
                return None
            raise ViewError(str(e)) from None
        return record

    async def announce(self, phase: str, detail: dict[str, Any]) -> None:
        try:
            await ctl.command(self.target, "drill", {"phase": phase, **detail})
        except ctl.CtlError as e:
            if "unknown command" in str(e):  # audited all the same, as a refused command
                raise NotAnnounced("not announced: this daemon has no `drill` command") from None
            raise ViewError(f"the daemon refused the drill's announcement: {e}") from None


def workload(config: Config, cluster: str) -> tuple[str, str] | None:
    """(namespace, deployment) of the cluster's first `kube_workload` probe: what the drill faults."""
    try:
        probes = config.cluster(cluster).probes
    except KeyError:
        return None
    for probe in probes:
        if probe.kube_workload is not None:
            return probe.kube_workload.namespace, probe.kube_workload.deployment
    return None


def would(spec: DrillSpec) -> str:
    """What the drill does, said before it does it (the refusal without --yes)."""
    target = f"deployment {spec.namespace}/{spec.deployment} in cluster {spec.cluster}"
    if spec.fault == "scale-to-zero":
        fault = f"scale {target} to 0 replicas (and back to its current count afterwards)"
    else:
        fault = f"create a NetworkPolicy denying all ingress to the pods of {target} (deleted afterwards)"
    return (
        f"this drill would {fault}, so that the orchestrator fails {spec.cluster} over for real "
        f"(traffic moved away, a failover and a failback run); add --yes to go ahead"
    )


def show(report: Report) -> None:
    data = report.as_dict()
    console = ctl._console()
    console.print(
        f"drill: {data['fault']} on {data['cluster']} ({data['workload']}): {data['outcome'].upper()}"
    )
    table = ctl._table("STAGE", "AT", "SINCE FAULT", "DETAIL")
    for row, (_stage, meaning) in zip(data["timeline"], STAGES, strict=True):
        since = row["since_fault_s"]
        table.add_row(
            row["stage"],
            ctl._short_time(row["at"]) or "-",
            f"{since:+.2f}s" if since is not None else "-",
            row["detail"] or (meaning if row["at"] is None else ""),
        )
    console.print(table)
    if data["recovery_s"] is not None:
        console.print(f"traffic moved {data['recovery_s']:.2f}s after the fault")
    for problem in data["problems"]:
        console.print(f"problem: {problem}")
    for note in data["notes"]:
        console.print(f"note: {note}")


async def run_drill(config: Config, spec: DrillSpec, target: ctl.Target) -> Report:
    """The drill as a task that SIGINT/SIGTERM cancel once; the drill removes its fault on the way out."""
    loop = asyncio.get_running_loop()
    drill = Drill(config, spec, HttpView(target))
    task = asyncio.ensure_future(drill.run())
    signalled = False

    def on_signal() -> None:
        nonlocal signalled
        if not signalled:
            signalled = True
            typer.echo("interrupted: removing the fault...", err=True)
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
    try:
        return await task
    except asyncio.CancelledError:
        if not signalled:
            raise
        return drill.report
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)


def main(
    config: Config,
    cluster: str,
    fault: str,
    namespace: str | None,
    deployment: str | None,
    yes: bool,
    timeout_s: float,
    recovery_timeout_s: float,
    target: ctl.Target,
) -> int:
    found = workload(config, cluster)
    namespace = namespace or (found[0] if found else None)
    deployment = deployment or (found[1] if found else None)
    if not namespace or not deployment:
        raise typer.BadParameter(
            "give --namespace and --deployment (the cluster has no kube_workload probe to take them from)"
        )
    spec = DrillSpec(cluster, fault, namespace, deployment, timeout_s, recovery_timeout_s)
    if not yes:
        typer.echo(would(spec), err=True)
        return 2
    try:
        report = asyncio.run(run_drill(config, spec, target))
    except DrillRefused as e:
        typer.echo(f"drill refused: {e}", err=True)
        return 1
    except ViewError as e:
        typer.echo(f"error: {e}", err=True)
        return 1
    if target.json_out:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        show(report)
    return 0 if report.passed else 1


def api_url(config: Config) -> str:
    """The daemon's API as this machine reaches it: `api.listen`, a wildcard address as loopback."""
    host = config.api.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{config.api.port}" if ":" in host else f"http://{host}:{config.api.port}"
