"""`failover ctl` (DESIGN §3): steer a running daemon through its HTTP API.

Reads are GETs (`/api/v1/status`, `/clusters`, `/runs`, `/runs/{id}`, `/incidents`); everything that
changes something is a `POST /api/v1/commands`, so the daemon authorizes and audits it exactly like a
command from the API, NATS or chatops. Exit codes: 0 done, 1 the daemon refused or failed (the error is
printed), 2 usage. The token comes from `--token` or `FAILOVER_TOKEN` and is never printed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_API = "http://127.0.0.1:8080"
TIMEOUT_S = 30.0
RUNS_PAGE_MAX = 500
"""The daemon's page limit (`playbooks.journal.PAGE_MAX`), checked here so that a bad --limit is a usage
error (exit 2); not imported, so that `failover ctl` starts without loading the NATS client."""

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Steer a running daemon through its HTTP API (--api, --token; FAILOVER_API, FAILOVER_TOKEN).",
)


class CtlError(Exception):
    """The daemon refused or failed, or could not be reached: exit 1 with this message."""


@dataclass(frozen=True)
class Target:
    api: str
    token: str | None
    json_out: bool


async def request(target: Target, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One API call; the answer's JSON, or CtlError with the daemon's own error message."""
    import aiohttp

    headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    url = target.api.rstrip("/") + path
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session,
            session.request(method, url, json=body, headers=headers) as resp,
        ):
            text = await resp.text()
            try:
                answer = json.loads(text)
            except ValueError:
                raise CtlError(f"unexpected answer from {url} (HTTP {resp.status})") from None
            if resp.status >= 400 or (isinstance(answer, dict) and answer.get("ok") is False):
                error = answer.get("error") if isinstance(answer, dict) else None
                raise CtlError(f"{error or 'request failed'} (HTTP {resp.status})")
            return answer
    except aiohttp.ClientError as e:
        raise CtlError(f"cannot reach the API at {target.api}: {e}") from None
    except TimeoutError:
        raise CtlError(f"no answer from the API at {target.api} within {TIMEOUT_S:.0f}s") from None


async def command(target: Target, name: str, args: dict[str, Any]) -> Any:
    answer = await request(target, "POST", "/api/v1/commands", {"command": name, "args": args})
    return answer.get("result") if isinstance(answer, dict) else answer


# rendering -------------------------------------------------------------------------------------------


def _console() -> Console:
    from rich.console import Console

    # not a terminal: wide enough that tables are never cut (run ids, errors), and no colours
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _table(*columns: str) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _short_time(value: Any) -> str:
    if not value:
        return ""
    text = str(value).replace("T", " ")
    head, dot, _rest = text.partition(".")
    return f"{head}Z" if dot and text.endswith("Z") else text


def _steps(run: dict[str, Any]) -> str:
    return ", ".join(f"{s['id']}:{s['status']}" for s in run.get("steps", []))


def show_status(status: dict[str, Any]) -> None:
    console = _console()
    pauses = [
        f"{p['scope']} by {p.get('by') or '?'} until {_short_time(p.get('until')) or 'resumed'}"
        for p in status.get("paused", [])
    ]
    active = [f"{key}: {run_id}" for key, run_id in sorted(status.get("active_runs", {}).items())]
    lines = [
        ("ready", "yes" if status.get("ready") else "NO"),
        ("frozen", "YES (observer guard; `failover ctl resume` lifts it)" if status.get("frozen") else "no"),
        ("paused", "; ".join(pauses) or "no"),
        ("suspect vantages", ", ".join(status.get("suspect_vantages", [])) or "none"),
        ("active runs", ", ".join(active) or "none"),
        ("waiting approval", ", ".join(status.get("waiting_approval", [])) or "none"),
        ("playbooks", ", ".join(sorted(status.get("playbooks", {}))) or "none"),
    ]
    for label, value in lines:
        console.print(f"{label + ':':<18} {value}")
    table = _table("CLUSTER", "STATE")
    for name, state in status.get("clusters", {}).items():
        table.add_row(name, state)
    console.print(table)


def show_clusters(view: dict[str, Any]) -> None:
    clusters = view.get("clusters", [])
    balancers = sorted({lb for c in clusters for lb in c.get("weights", {})})
    table = _table("CLUSTER", "STATE", "NOMINAL", *(lb.upper() for lb in balancers), "LABELS")
    for c in clusters:
        weights = [str(c["weights"].get(lb, "-")) for lb in balancers]
        labels = ",".join(f"{k}={v}" for k, v in sorted(c.get("labels", {}).items()))
        table.add_row(c["name"], c["state"], str(c["weight"]), *weights, labels)
    console = _console()
    console.print(table)
    if view.get("unreadable_balancers"):
        console.print(f"current weights unreadable: {', '.join(view['unreadable_balancers'])}")


def show_runs(view: dict[str, Any]) -> None:
    runs = view.get("runs", [])
    console = _console()
    if not runs:
        console.print("no runs")
        return
    table = _table("RUN", "PLAYBOOK", "CLUSTER", "STATUS", "STARTED", "STEPS")
    for r in runs:
        table.add_row(
            r["id"],
            r["playbook"],
            r.get("cluster") or "",
            r["status"],
            _short_time(r.get("created_at")),
            _steps(r),
        )
    console.print(table)
    if view.get("next"):
        console.print(f"older runs: failover ctl runs --before {view['next']}")


def show_incidents(view: dict[str, Any]) -> None:
    incidents = view.get("incidents", [])
    console = _console()
    if not incidents:
        console.print("no incidents")
        return
    table = _table("INCIDENT", "CLUSTER", "STATE", "OPENED", "RESOLVED", "RUNS", "SUMMARY")
    for i in incidents:
        table.add_row(
            str(i.get("id")),
            str(i.get("cluster")),
            str(i.get("state")),
            _short_time(i.get("opened_at")),
            _short_time(i.get("resolved_at")),
            str(len(i.get("runs") or [])),
            str(i.get("summary") or ""),
        )
    console.print(table)


def show_run(record: dict[str, Any]) -> None:
    console = _console()
    event = record.get("event") or {}
    for label, value in [
        ("run", record.get("id")),
        ("playbook", record.get("playbook")),
        ("status", record.get("status")),
        ("event", f"{event.get('type', '')} {event.get('cluster', '')}".strip()),
        ("actor", record.get("actor") or ""),
        ("started", _short_time(record.get("created_at"))),
        ("finished", _short_time(record.get("finished_at"))),
        ("error", record.get("error") or ""),
    ]:
        if value:
            console.print(f"{label + ':':<10} {value}")
    entries = record.get("steps", {})
    planned = [str(s.get("id")) for s in (record.get("plan") or {}).get("steps", [])]
    table = _table("STEP", "ACTION", "STATUS", "ATTEMPTS", "DETAIL")
    for step_id in [*planned, *(s for s in entries if s not in planned)]:
        entry = entries.get(step_id, {})
        result = entry.get("result")
        detail = entry.get("error") or (result.get("change") if isinstance(result, dict) else "") or ""
        table.add_row(
            step_id,
            str(entry.get("action", "")),
            str(entry.get("status", "pending")),
            str(entry.get("attempts", "")),
            str(detail),
        )
    console.print(table)
    marks = record.get("timeline")
    if isinstance(marks, dict) and marks:
        show_timeline(marks)


def show_timeline(marks: dict[str, Any]) -> None:
    """The recovery timeline (DESIGN §15): each mark, its offset from the first failure, and the stage
    that ends there."""
    from orchestrator.playbooks.timeline import table as timeline_rows

    table = _table("TIMELINE", "AT", "OFFSET", "STAGE")
    for row in timeline_rows(marks):
        table.add_row(*row)
    console = _console()
    console.print()
    console.print(table)


def _say(text: str) -> Callable[[Any], None]:
    return lambda _result: _console().print(text)


# commands --------------------------------------------------------------------------------------------

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")]


def _run(ctx: typer.Context, json_here: bool, call: Any, show: Callable[[Any], None]) -> None:
    target: Target = ctx.obj
    try:
        result = asyncio.run(call(target))
    except CtlError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    if target.json_out or json_here:
        typer.echo(json.dumps(result, indent=2))
    else:
        show(result)


@app.callback()
def _ctl(
    ctx: typer.Context,
    api: Annotated[
        str, typer.Option("--api", envvar="FAILOVER_API", help="The daemon's API URL.")
    ] = DEFAULT_API,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="FAILOVER_TOKEN", show_default=False, help="An api.tokens token."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    if not api.startswith(("http://", "https://")):
        raise typer.BadParameter("must be an http:// or https:// URL", param_hint="--api")
    ctx.obj = Target(api, token or None, json_out)


@app.command()
def status(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Readiness, freeze and pauses, active runs, waiting approvals, cluster states."""
    _run(ctx, json_out, lambda t: request(t, "GET", "/api/v1/status"), show_status)


@app.command()
def clusters(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Clusters with state, nominal weight and current weight per balancer."""
    _run(ctx, json_out, lambda t: request(t, "GET", "/api/v1/clusters"), show_clusters)


@app.command()
def runs(
    ctx: typer.Context,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=RUNS_PAGE_MAX, help="How many, newest first.")
    ] = 20,
    before: Annotated[
        str | None,
        typer.Option("--before", metavar="ID", show_default=False, help="Runs older than run ID (paging)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Recent runs, newest first, with each step's status; `--before` the last one shown for older ones."""
    query = f"limit={limit}" + (f"&before={quote(before, safe='')}" if before else "")
    _run(ctx, json_out, lambda t: request(t, "GET", f"/api/v1/runs?{query}"), show_runs)


@app.command()
def incidents(
    ctx: typer.Context,
    open_only: Annotated[bool, typer.Option("--open", help="Only the open incidents.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Incidents (one per cluster failure, DESIGN §13), newest first: state, runs, last message."""
    path = "/api/v1/incidents" + ("?open=true" if open_only else "")
    _run(ctx, json_out, lambda t: request(t, "GET", path), show_incidents)


@app.command("run")
def run_(
    ctx: typer.Context, run_id: Annotated[str, typer.Argument(metavar="ID")], json_out: JsonOpt = False
) -> None:
    """One run's journal: plan, steps, results."""
    _run(ctx, json_out, lambda t: request(t, "GET", f"/api/v1/runs/{quote(run_id, safe='')}"), show_run)


def _started(what: str) -> Callable[[Any], None]:
    def show(result: Any) -> None:
        started = result.get("runs", []) if isinstance(result, dict) else []
        if started:
            _console().print(f"{what}: started run {', '.join(started)} (`failover ctl run ID` follows it)")
        else:
            _console().print(f"{what}: no new run (one for this cluster is already active)")

    return show


@app.command()
def failover(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Argument(help="The cluster to drain.")],
    force: Annotated[
        bool, typer.Option("--force", help="Admin: skip the approval, override guards.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Drain CLUSTER (runs the manual-drain playbook; waits for an approval unless --force)."""
    args: dict[str, Any] = {"cluster": cluster, **({"force": True} if force else {})}
    _run(ctx, json_out, lambda t: command(t, "failover", args), _started(f"failover of {cluster}"))


@app.command()
def failback(
    ctx: typer.Context, cluster: Annotated[str, typer.Argument()], json_out: JsonOpt = False
) -> None:
    """Give CLUSTER its traffic back (runs the manual-restore playbook)."""
    _run(
        ctx,
        json_out,
        lambda t: command(t, "failback", {"cluster": cluster}),
        _started(f"failback of {cluster}"),
    )


@app.command()
def pause(
    ctx: typer.Context,
    cluster: Annotated[str | None, typer.Argument(help="Omit: all automation.")] = None,
    for_: Annotated[
        str | None, typer.Option("--for", help="How long, e.g. 30m or 1h; omit: until resumed.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Pause automation (for one cluster, or all); runs that would start are blocked and say why."""
    args = {k: v for k, v in (("cluster", cluster), ("for", for_)) if v}
    scope = f"automation for {cluster}" if cluster else "all automation"

    def show(result: Any) -> None:
        until = result.get("until") if isinstance(result, dict) else None
        _console().print(f"paused {scope} until {_short_time(until) if until else 'resumed'}")

    _run(ctx, json_out, lambda t: command(t, "pause", args), show)


@app.command()
def resume(
    ctx: typer.Context,
    cluster: Annotated[str | None, typer.Argument(help="Omit: all automation (also lifts a freeze).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Resume automation paused with `pause` (without CLUSTER: also lifts an observer-guard freeze)."""
    args = {"cluster": cluster} if cluster else {}
    scope = f"automation for {cluster}" if cluster else "all automation"
    _run(ctx, json_out, lambda t: command(t, "resume", args), _say(f"resumed {scope}"))


@app.command()
def approve(
    ctx: typer.Context, run_id: Annotated[str, typer.Argument(metavar="RUN")], json_out: JsonOpt = False
) -> None:
    """Approve RUN, which waits at an approval step."""
    _run(ctx, json_out, lambda t: command(t, "approve", {"run": run_id}), _say(f"run {run_id} approved"))


@app.command()
def deny(
    ctx: typer.Context, run_id: Annotated[str, typer.Argument(metavar="RUN")], json_out: JsonOpt = False
) -> None:
    """Deny RUN, which waits at an approval step (the run is aborted)."""
    _run(ctx, json_out, lambda t: command(t, "deny", {"run": run_id}), _say(f"run {run_id} denied"))
