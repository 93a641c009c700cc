"""The dashboard (`GET /`): one server-rendered page, no build step and nothing loaded from elsewhere.

The server renders the page from the same views the API serves (`/api/v1/status`, `/api/v1/clusters`,
`/api/v1/runs`, the open `/api/v1/incidents`, `/api/v1/readiness`, the events history) and what
`api.overview` makes of them: the headline first. It is useful without JavaScript. A few lines of
script keep it live: on every server-sent event from `/api/v1/events` (and every few seconds, since a
cluster's first sighting emits no event) they fetch the page again and swap its `#view`, so there is
one renderer. Jinja2 autoescapes, so nothing a cluster label, a run error or a bus message says can
become markup.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import jinja2

from orchestrator.api import overview
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
    env.filters["ago"] = lambda value: overview.ago(_seconds_since(value))
    env.filters["age"] = _age
    env.filters["left"] = _left
    return env


def _seconds_since(value: Any) -> float | None:
    at = timeline.parse(value)
    return None if at is None else max(0.0, time.time() - at)


def _age(seconds: Any) -> str:
    """A duration in its largest sensible unit: `0.4s`, `12s`, `5m`, `2.0h`."""
    if not isinstance(seconds, int | float):
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 90:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 5400 else f"{seconds / 3600:.1f}h"


def _left(seconds: Any) -> str:
    """Time left to a deadline: `9m 58s`, `42s`."""
    if not isinstance(seconds, int | float):
        return ""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


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


def active_runs(status: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The runs going on: running or delayed, or holding their key in the runner."""
    active_ids = set(status.get("active_runs", {}).values())
    return [r for r in runs if r.get("status") in ACTIVE or r.get("id") in active_ids]


def render(
    *,
    status: Mapping[str, Any],
    clusters: Mapping[str, Any],
    runs: Sequence[Mapping[str, Any]],
    nonce: str,
    seen: Mapping[str, Any] | None = None,
    incidents: Sequence[Mapping[str, Any]] = (),
    query: str = "",
    before: str | None = None,
    older: str | None = None,
) -> str:
    """The whole page. `nonce` goes on the inline script and style (the CSP allows nothing else);
    `seen` is `overview.gather`'s; `query` keeps `?access_token=` on links; `before` is this page of
    runs' cursor and `older` the next one's."""
    active = active_runs(status, runs)
    recent = [r for r in runs if r not in active]
    if seen is None:
        seen = overview.from_views(status, clusters, active)
    suffix = f"?{query}" if query else ""
    older_link = None
    if older:
        older_link = f"/?before={older}" + (f"&{query}" if query else "")
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
            headline=seen["headline"],
            clusters=seen["clusters"],
            unreadable=clusters.get("unreadable_balancers", []),
            active=active,
            recent=recent,
            approvals=seen["approvals"],
            incidents=list(incidents),
            timeline=seen["timeline"],
            readiness=seen["readiness"],
            leader=seen["leader"],
            version=seen["version"],
            min_healthy=seen["min_healthy"],
            nonce=nonce,
            suffix=suffix,
            before=before,
            older=older_link,
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
