"""The dashboard (`GET /`): one server-rendered page, no build step and nothing loaded from elsewhere.

The server renders the page from the same views the API serves (`/api/v1/status`, `/api/v1/clusters`,
`/api/v1/runs`, the open `/api/v1/incidents`), so it is useful without JavaScript. A few lines of
script keep it live: on every server-sent event from `/api/v1/events` (and every few seconds, since a
cluster's first sighting emits no event) they re-fetch those views and re-render with DOM text nodes
only. Jinja2 autoescapes the server
side, so nothing a cluster label, a run error or a bus message says can become markup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import jinja2

from orchestrator.playbooks import timeline

ACTIVE = ("running", "delayed")


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("orchestrator.api", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ts"] = short_time
    env.filters["recovery"] = recovery
    return env


def recovery(marks: Mapping[str, Any] | None) -> str:
    """A run's recovery timeline (DESIGN §15) as its stage durations: `detect 0.402s · decide ...`
    (the script computes the same from `timeline.STAGES`, which the page carries)."""
    if not isinstance(marks, Mapping):
        return ""
    return " · ".join(f"{stage} {seconds:.3f}s" for stage, seconds in timeline.stages(marks).items())


def short_time(value: str | None) -> str:
    """`2026-01-01T12:00:01.123Z` -> `2026-01-01 12:00:01Z` (the script formats the same way)."""
    if not value:
        return ""
    text = value.replace("T", " ")
    head, dot, _fraction = text.partition(".")
    return f"{head}Z" if dot and text.endswith("Z") else text


def render(
    *,
    status: Mapping[str, Any],
    clusters: Mapping[str, Any],
    runs: Sequence[Mapping[str, Any]],
    nonce: str,
    incidents: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The whole page. `nonce` goes on the inline script and style (the CSP allows nothing else)."""
    active_ids = set(status.get("active_runs", {}).values())
    active = [r for r in runs if r.get("status") in ACTIVE or r.get("id") in active_ids]
    recent = [r for r in runs if r not in active]
    by_id = {str(r.get("id")): r for r in runs}
    approvals = [{"id": run_id, "run": by_id.get(run_id)} for run_id in status.get("waiting_approval", [])]
    view = {
        "ready": bool(status.get("ready")),
        "frozen": bool(status.get("frozen")),
        "suspect_vantages": list(status.get("suspect_vantages", [])),
        "paused": list(status.get("paused", [])),
    }
    return (
        _environment()
        .get_template("dashboard.html")
        .render(
            status=view,
            clusters=clusters.get("clusters", []),
            unreadable=clusters.get("unreadable_balancers", []),
            active=active,
            recent=recent,
            approvals=approvals,
            incidents=list(incidents),
            stages=[list(stage) for stage in timeline.STAGES],
            nonce=nonce,
        )
    )


def refusal_page(status: int, message: str) -> str:
    """A short page for a refused page load: what went wrong and how to pass a token."""
    return _environment().get_template("refused.html").render(status=status, message=message)


def render_page(
    *,
    nonce: str,
    query: str,
    run: Mapping[str, Any] | None = None,
    incident: Mapping[str, Any] | None = None,
) -> str:
    """One run's or one incident's page (`/runs/<id>`, `/incidents/<id>`): where the links in
    notifications lead. `query` keeps `?access_token=` on the links between pages."""
    suffix = f"?{query}" if query else ""
    recorded = (run or {}).get("timeline")
    marks = (
        [(row[0], row[1], row[2]) for row in timeline.table(recorded)]
        if isinstance(recorded, Mapping)
        else []
    )
    runs = [(r, f"/runs/{r}{suffix}") for r in (incident or {}).get("runs", [])]
    title = f"run {run['id']}" if run else f"incident {(incident or {}).get('id', '')}"
    return (
        _environment()
        .get_template("page.html")
        .render(
            title=title, run=run, incident=incident, marks=marks, runs=runs, nonce=nonce, back=f"/{suffix}"
        )
    )
