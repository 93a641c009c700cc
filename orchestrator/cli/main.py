"""The `failover` command (DESIGN §3, a contract). Exit codes: 0 success, 1 failure, 2 usage error."""

from __future__ import annotations

import asyncio
import errno
import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli import ctl
from orchestrator.cli.check import command as check_command
from orchestrator.core import logs
from orchestrator.core.errors import OrchestratorError, ValidationFailed

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Event-driven failover orchestrator for multi-cluster Kubernetes.",
)

app.add_typer(ctl.app, name="ctl")  # failover ctl [--api URL] [--token T] COMMAND: the HTTP API's client
app.command(name="check")(check_command)  # failover check --config F: readiness (DESIGN §17)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Configuration file (YAML).")]


def version_line() -> str:
    """`failover --version`: the installed distribution's version (the package's own when run from a
    source tree that is not installed), no git needed."""
    import platform
    from importlib import metadata

    from orchestrator import __version__

    try:
        version = metadata.version("failover-orchestrator")
    except metadata.PackageNotFoundError:
        version = __version__
    return f"failover {version} (python {platform.python_version()})"


def _version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit(0)


@app.callback()
def _global(
    log_format: Annotated[str, typer.Option("--log-format", help="auto | json | console")] = "auto",
    log_level: Annotated[str, typer.Option("--log-level", help="debug | info | warning | error")] = "info",
    _show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    if log_format not in ("auto", "json", "console"):
        raise typer.BadParameter("must be auto, json or console", param_hint="--log-format")
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter("must be debug, info, warning or error", param_hint="--log-level")
    logs.configure(log_format, log_level)  # type: ignore[arg-type]


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(1)


def _load(config: Path):  # type: ignore[no-untyped-def]
    from orchestrator.core.config import load_config

    try:
        return load_config(config)
    except ValidationFailed as e:
        raise _fail(str(e)) from None


@app.command()
def validate(
    playbook_paths: Annotated[
        list[Path] | None, typer.Argument(help="Playbook files or directories.")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Configuration file.")] = None,
) -> None:
    """Check the config and playbooks, rendering every template against sample events; print
    `file:line: path: message` for every problem (exit 1) and `... warning: ...` (exit unchanged)."""
    from orchestrator.runtime.validation import validate as check

    if config is None and not playbook_paths:
        raise typer.BadParameter("give --config and/or playbook paths")
    report = check(config, list(playbook_paths or []))
    found = [*report.problems, *report.warnings]
    first = [str(config)] if config else []
    files = list(dict.fromkeys([*first, *(p.file for p in found)]))  # the config, then the playbooks
    for line in sorted(found, key=lambda p: (files.index(p.file), p.line, p.path)):
        typer.echo(str(line), err=True)
    if report.problems:
        raise typer.Exit(1)
    what = [f"config {config}"] if config else []
    what.append(f"{report.playbooks} playbook(s)")
    warned = f" ({len(report.warnings)} warning(s))" if report.warnings else ""
    typer.echo(f"ok: {', '.join(what)}{warned}")


@app.command()
def run(
    config: ConfigOpt,
    no_probes: Annotated[bool, typer.Option("--no-probes", help="Do not run probes in-process.")] = False,
) -> None:
    """The daemon: detector, reactor, runner, API; also the probes unless --no-probes."""
    from orchestrator.runtime.daemon import Daemon, run_until_signalled

    cfg = _load(config)
    try:
        asyncio.run(run_until_signalled(Daemon(cfg, run_probes=not no_probes)))
    except ValidationFailed as e:
        raise _fail(str(e)) from None
    except OrchestratorError as e:
        raise _fail(f"error: {e}") from None
    except OSError as e:
        raise _fail(f"error: {os_error(e, cfg.api.listen)}") from None


BIND_ERRORS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}


def os_error(e: OSError, listen: str) -> str:
    """One line for an OSError that reached the top: a port in use is the operator's to fix, not a
    59-line traceback. asyncio names the address it could not bind; the API is the only socket the
    daemon binds (the embedded nats-server picks a free port itself)."""
    if e.errno in BIND_ERRORS and "bind" in str(e):
        reason = {errno.EADDRINUSE: "address already in use"}.get(e.errno, e.strerror or str(e))
        return f"api.listen {listen}: {reason.lower()}"
    return str(e)


@app.command()
def probe(
    config: ConfigOpt,
    vantage: Annotated[str | None, typer.Option("--vantage", help="Name of this vantage point.")] = None,
) -> None:
    """A stand-alone prober that publishes health reports to NATS."""
    from orchestrator.runtime.prober import run_prober

    cfg = _load(config)
    try:
        asyncio.run(run_prober(cfg, vantage))
    except OrchestratorError as e:
        raise _fail(f"error: {e}") from None


@app.command()
def plan(
    config: ConfigOpt,
    playbook: Annotated[str, typer.Option("--playbook", help="Playbook name.")],
    cluster: Annotated[str, typer.Option("--cluster", help="The event's cluster.")],
    event: Annotated[
        str, typer.Option("--event", help="cluster.failed | cluster.degraded | cluster.recovered | manual")
    ] = "cluster.failed",
) -> None:
    """Dry-run: print the steps, rendered parameters and exact changes; touch nothing."""
    from orchestrator.runtime.dryrun import plan as dry_run

    cfg = _load(config)
    try:
        asyncio.run(dry_run(cfg, playbook, event, cluster, out=typer.echo))
    except ValidationFailed as e:
        raise _fail(str(e)) from None
    except OrchestratorError as e:
        raise _fail(f"error: {e}") from None


@app.command()
def demo(
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Where to keep demo state.")] = None,
    recovery_hold: Annotated[str, typer.Option("--recovery-hold", help="Hold before failback.")] = "5s",
    keep: Annotated[
        bool,
        typer.Option("--keep", help="Stay up afterwards with the dashboard's URL printed (Ctrl-C ends)."),
    ] = False,
) -> None:
    """The product on one machine: NATS, three sandbox Kubernetes clusters behind HAProxy, three probing
    vantages; a partition below quorum, a failure with scaling and an incident, an approved failback."""
    from orchestrator.cli.demo import run_demo

    try:
        code = asyncio.run(run_demo(state_dir, recovery_hold, keep=keep))
    except OrchestratorError as e:
        raise _fail(f"error: {e}") from None
    raise typer.Exit(code)


@app.command()
def drill(
    config: ConfigOpt,
    cluster: Annotated[str, typer.Option("--cluster", help="The cluster to fault.")],
    fault: Annotated[str, typer.Option("--fault", help="scale-to-zero | deny-ingress")],
    namespace: Annotated[
        str | None, typer.Option("--namespace", help="Default: the cluster's kube_workload probe.")
    ] = None,
    deployment: Annotated[
        str | None, typer.Option("--deployment", help="Default: the cluster's kube_workload probe.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really inject the fault.")] = False,
    timeout: Annotated[str, typer.Option("--timeout", help="Fault to failover finished.")] = "5m",
    recovery_timeout: Annotated[
        str, typer.Option("--recovery-timeout", help="Fault removed to failback finished.")
    ] = "5m",
    api: Annotated[
        str | None, typer.Option("--api", envvar="FAILOVER_API", help="Default: the config's api.listen.")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="FAILOVER_TOKEN", show_default=False, help="Operator.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Inject a reversible fault in a real cluster, measure the failover and the failback, undo it."""
    from orchestrator.cli import drill as drills
    from orchestrator.core.durations import parse_duration
    from orchestrator.runtime.drill import FAULTS

    if fault not in FAULTS:
        raise typer.BadParameter(f"must be one of {', '.join(FAULTS)}", param_hint="--fault")
    try:
        timeout_s, recovery_s = parse_duration(timeout), parse_duration(recovery_timeout)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    cfg = _load(config)
    target = ctl.Target(api or drills.api_url(cfg), token or None, json_out)
    code = drills.main(cfg, cluster, fault, namespace, deployment, yes, timeout_s, recovery_s, target)
    raise typer.Exit(code)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
