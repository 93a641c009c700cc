"""How `failover ctl` prints the daemon's answers: aligned tables for a person, never cut when piped."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


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
        ("leader", _leader(status.get("leader"))),
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


def _leader(leader: Any) -> str:
    """`holder (term N, since T; this replica answered)` from the status's `leader` (the dashboard's
    view of the lease: `present`, `holder`, `term`, `this_replica`; `since` when the daemon knows it)."""
    if not isinstance(leader, dict):
        return "unknown (this daemon does not report it)"
    if not leader.get("present", bool(leader.get("holder"))):
        return "NONE (no replica holds the lease: nothing acts)"
    parts = [f"term {leader['term']}"] if leader.get("term") is not None else []
    if leader.get("since"):
        parts.append(f"since {_short_time(leader['since'])}")
    detail = ", ".join(parts)
    if leader.get("this_replica", leader.get("self")):
        detail += "; this replica answered" if detail else "this replica answered"
    return f"{leader.get('holder') or '?'}" + (f" ({detail})" if detail else "")


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
