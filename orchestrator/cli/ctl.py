"""`failover ctl` (DESIGN §3): steer a running daemon through its HTTP API.

Reads are GETs (`/api/v1/status`, `/clusters`, `/runs`, `/runs/{id}`, `/incidents`); everything that
changes something is a `POST /api/v1/commands`, so the daemon authorizes and audits it exactly like a
command from the API, NATS or chatops. Exit codes: 0 done, 1 the daemon refused or failed (the error is
printed), 2 usage. The token comes from `--token` or `FAILOVER_TOKEN` and is never printed.

`--api` (alias `--url`), `--token` and `--json` go before the command or after it (`failover ctl status
--url X --token T`), the latter winning. A command that starts a run (`failover`, `failback`) looks at
the run until it has begun: a run blocked at once (automation paused, a guard) is an error (exit 1)
that says why, not "started". `run ID --watch` follows a run to its end and exits with its outcome.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

import typer

from orchestrator.cli.ctl_show import (  # _console, _table, _short_time: also `failover drill`'s
    _console,
    _say,
    _short_time,
    _table,
    show_clusters,
    show_incidents,
    show_run,
    show_runs,
    show_status,
)

__all__ = ["CtlError", "Target", "_console", "_short_time", "_table", "app", "command", "request"]

DEFAULT_API = "http://127.0.0.1:8080"
TIMEOUT_S = 30.0
RUNS_PAGE_MAX = 500
SETTLE_S = 5.0
"""How long `failover`/`failback` look at a run they started for it to begin or be blocked."""
POLL_S = 0.25
WATCH_POLL_S = 1.0
FINISHED = {"succeeded", "failed", "blocked", "preempted", "needs_attention"}
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


# commands --------------------------------------------------------------------------------------------

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")]
ApiOpt = Annotated[
    str | None,
    typer.Option("--api", "--url", show_default=False, help="The daemon's API URL (here or before)."),
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", show_default=False, help="An api.tokens token (here or before).")
]


def _check_api(api: str) -> str:
    if not api.startswith(("http://", "https://")):
        raise typer.BadParameter("must be an http:// or https:// URL", param_hint="--api")
    return api


def _target(ctx: typer.Context, json_here: bool, api: str | None, token: str | None) -> Target:
    """The group's target (options before the command, environment, default), overridden by the
    options given after the command."""
    base: Target = ctx.obj
    return Target(_check_api(api) if api else base.api, token or base.token, base.json_out or json_here)


def _run(
    ctx: typer.Context,
    json_here: bool,
    call: Any,
    show: Callable[[Any], None],
    api: str | None = None,
    token: str | None = None,
) -> None:
    target = _target(ctx, json_here, api, token)
    try:
        result = asyncio.run(call(target))
    except CtlError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    if target.json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        show(result)


@app.callback()
def _ctl(
    ctx: typer.Context,
    api: Annotated[
        str, typer.Option("--api", "--url", envvar="FAILOVER_API", help="The daemon's API URL.")
    ] = DEFAULT_API,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="FAILOVER_TOKEN", show_default=False, help="An api.tokens token."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    ctx.obj = Target(_check_api(api), token or None, json_out)


@app.command()
def status(ctx: typer.Context, json_out: JsonOpt = False, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """Leader, readiness, freeze and pauses, active runs, waiting approvals, cluster states."""
    _run(ctx, json_out, lambda t: request(t, "GET", "/api/v1/status"), show_status, api, token)


@app.command()
def clusters(
    ctx: typer.Context, json_out: JsonOpt = False, api: ApiOpt = None, token: TokenOpt = None
) -> None:
    """Clusters with state, nominal weight and current weight per balancer."""
    _run(ctx, json_out, lambda t: request(t, "GET", "/api/v1/clusters"), show_clusters, api, token)


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
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Recent runs, newest first, with each step's status; `--before` the last one shown for older ones."""
    query = f"limit={limit}" + (f"&before={quote(before, safe='')}" if before else "")
    _run(ctx, json_out, lambda t: request(t, "GET", f"/api/v1/runs?{query}"), show_runs, api, token)


@app.command()
def incidents(
    ctx: typer.Context,
    open_only: Annotated[bool, typer.Option("--open", help="Only the open incidents.")] = False,
    json_out: JsonOpt = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Incidents (one per cluster failure, DESIGN §13), newest first: state, runs, last message."""
    path = "/api/v1/incidents" + ("?open=true" if open_only else "")
    _run(ctx, json_out, lambda t: request(t, "GET", path), show_incidents, api, token)


@app.command("run")
def run_(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="ID")],
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Follow the run to its end; exit 0 only if it succeeded.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, max=86400, help="With --watch: give up after (seconds).")
    ] = 3600,
    json_out: JsonOpt = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """One run's journal: plan, steps, results; `--watch` follows it until it finishes."""
    if not watch:
        _run(ctx, json_out, lambda t: request(t, "GET", _run_path(run_id)), show_run, api, token)
        return
    target = _target(ctx, json_out, api, token)
    try:
        record = asyncio.run(follow(target, run_id, timeout, None if target.json_out else _progress))
    except CtlError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo(f"stopped watching run {run_id}; the run goes on", err=True)
        raise typer.Exit(130) from None
    if target.json_out:
        typer.echo(json.dumps(record, indent=2))
    else:
        show_run(record)
    raise typer.Exit(0 if record.get("status") == "succeeded" else 1)


def _run_path(run_id: str) -> str:
    return f"/api/v1/runs/{quote(run_id, safe='')}"


async def follow(
    target: Target, run_id: str, timeout_s: float, progress: Callable[[dict[str, Any]], None] | None
) -> dict[str, Any]:
    """Poll the run until it finishes (CtlError when `timeout_s` passes first); `progress` sees each
    record that differs from the one before."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] | None = None
    while True:
        record = await request(target, "GET", _run_path(run_id))
        if not isinstance(record, dict):
            raise CtlError(f"unexpected answer for run {run_id}")
        if progress is not None:
            progress_lines(last, record, progress)
        last = record
        if record.get("status") in FINISHED:
            return record
        if time.monotonic() + WATCH_POLL_S > deadline:
            raise CtlError(f"run {run_id} still {record.get('status')} after {timeout_s:g}s; it goes on")
        await asyncio.sleep(WATCH_POLL_S)


def progress_lines(
    before: dict[str, Any] | None, record: dict[str, Any], out: Callable[[dict[str, Any]], None]
) -> None:
    """Hand `out` each change between two readings of a run: its status, then each step's."""
    if before is None or before.get("status") != record.get("status"):
        out({"what": "run", "status": record.get("status"), "error": record.get("error")})
    old = (before or {}).get("steps", {})
    for step_id, entry in record.get("steps", {}).items():
        if not isinstance(entry, dict):
            continue
        previous = old.get(step_id) if isinstance(old, dict) else None
        if not isinstance(previous, dict) or previous.get("status") != entry.get("status"):
            out({"what": step_id, "status": entry.get("status"), "error": entry.get("error")})


def _progress(change: dict[str, Any]) -> None:
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    error = f": {change['error']}" if change.get("error") and change["status"] != "running" else ""
    label = "run" if change["what"] == "run" else f"step {change['what']}"
    _console().print(f"{stamp}Z {label} {change['status']}{error}")


async def settle(target: Target, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The runs a command started, read until each has begun (a step started), finished, or is blocked,
    for at most SETTLE_S: a run blocked at once must not be reported as started."""
    deadline = time.monotonic() + SETTLE_S
    seen: dict[str, dict[str, Any]] = {}
    pending = list(run_ids)
    while pending:
        for run_id in list(pending):
            try:
                record = await request(target, "GET", _run_path(run_id))
            except CtlError:
                continue  # not journalled yet: asked again below
            if isinstance(record, dict):
                seen[run_id] = record
                if record.get("status") in FINISHED or record.get("steps"):
                    pending.remove(run_id)
        if not pending or time.monotonic() + POLL_S > deadline:
            break
        await asyncio.sleep(POLL_S)
    return seen


def _start(
    ctx: typer.Context,
    json_here: bool,
    name: str,
    args: dict[str, Any],
    what: str,
    api: str | None,
    token: str | None,
) -> None:
    """Run a command that starts runs; exit 1 naming why when one is blocked or failed at once."""
    target = _target(ctx, json_here, api, token)

    async def call() -> tuple[Any, dict[str, dict[str, Any]]]:
        result = await command(target, name, args)
        started = result.get("runs", []) if isinstance(result, dict) else []
        return result, await settle(target, [str(r) for r in started])

    try:
        result, records = asyncio.run(call())
    except CtlError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    stopped = {i: r for i, r in records.items() if r.get("status") in ("blocked", "failed")}
    if target.json_out:
        statuses = {i: r.get("status") for i, r in records.items()}
        typer.echo(json.dumps({**result, "status": statuses}, indent=2))
    else:
        started = result.get("runs", []) if isinstance(result, dict) else []
        ok = [i for i in started if i not in stopped]
        if ok:
            states = ", ".join(f"{i} ({records.get(i, {}).get('status', 'queued')})" for i in ok)
            _console().print(f"{what}: started run {states} (`failover ctl run ID --watch` follows it)")
        elif not started:
            _console().print(f"{what}: no new run (one for this cluster is already active)")
    for run_id, record in stopped.items():
        typer.echo(f"error: {what}: run {run_id} {record['status']}: {record.get('error') or '?'}", err=True)
    if stopped:
        raise typer.Exit(1)


@app.command()
def failover(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Argument(help="The cluster to drain.")],
    force: Annotated[
        bool, typer.Option("--force", help="Admin: skip the approval, override guards.")
    ] = False,
    json_out: JsonOpt = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Drain CLUSTER (runs the manual-drain playbook; waits for an approval unless --force). Exit 1 when
    the run is blocked (automation paused, a guard), naming why."""
    args: dict[str, Any] = {"cluster": cluster, **({"force": True} if force else {})}
    _start(ctx, json_out, "failover", args, f"failover of {cluster}", api, token)


@app.command()
def failback(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Argument()],
    json_out: JsonOpt = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Give CLUSTER its traffic back (runs the manual-restore playbook). Exit 1 when the run is blocked."""
    _start(ctx, json_out, "failback", {"cluster": cluster}, f"failback of {cluster}", api, token)


@app.command()
def pause(
    ctx: typer.Context,
    cluster: Annotated[str | None, typer.Argument(help="Omit: all automation.")] = None,
    for_: Annotated[
        str | None, typer.Option("--for", help="How long, e.g. 30m or 1h; omit: until resumed.")
    ] = None,
    json_out: JsonOpt = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Pause automation (for one cluster, or all); runs that would start are blocked and say why."""
    args = {k: v for k, v in (("cluster", cluster), ("for", for_)) if v}
    scope = f"automation for {cluster}" if cluster else "all automation"

    def show(result: Any) -> None:
        until = result.get("until") if isinstance(result, dict) else None
        _console().print(f"paused {scope} until {_short_time(until) if until else 'resumed'}")

    _run(ctx, json_out, lambda t: command(t, "pause", args), show, api, token)


@app.command()
def resume(
    ctx: typer.Context,
    cluster: Annotated[str | None, typer.Argument(help="Omit: all automation (also lifts a freeze).")] = None,
    json_out: JsonOpt = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Resume automation paused with `pause` (without CLUSTER: also lifts an observer-guard freeze)."""
    args = {"cluster": cluster} if cluster else {}
    scope = f"automation for {cluster}" if cluster else "all automation"
    _run(ctx, json_out, lambda t: command(t, "resume", args), _say(f"resumed {scope}"), api, token)


@app.command()
def approve(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    json_out: JsonOpt = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Approve RUN, which waits at an approval step."""
    say = _say(f"run {run_id} approved")
    _run(ctx, json_out, lambda t: command(t, "approve", {"run": run_id}), say, api, token)


@app.command()
def deny(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN")],
    json_out: JsonOpt = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Deny RUN, which waits at an approval step (the run is aborted)."""
    say = _say(f"run {run_id} denied")
    _run(ctx, json_out, lambda t: command(t, "deny", {"run": run_id}), say, api, token)
