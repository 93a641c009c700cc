"""What the dashboard says during an incident, computed from the API's views: the headline first.

The headline states the service, not the automation: how many clusters serve (not failed, and weight
above 0 in a balancer), red when that is fewer than `min_healthy_clusters`, when a failed cluster still
has weight, when a balancer cannot be read (nobody knows where traffic goes) and when no replica leads
(nothing would act). Before, a green "Automation active" sat above a fleet at weight 0 answering 503.

Around it, what an on-call engineer asks next: per cluster why (the detector's evidence from its last
state change) and since when, each probe's last result per vantage (`failover_probe_result`), a
timeline of state changes and runs with their recovery times (the events stream's history), approvals
with their deadlines, the readiness of each failover playbook, the leader and the version.

`headline` and the `*_view` helpers are pure (tested offline); `gather` does the reads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from orchestrator import __version__
from orchestrator.api.context import ApiContext
from orchestrator.bus import history
from orchestrator.bus.client import Bus
from orchestrator.bus.leadership import LEADER_KEY
from orchestrator.core import redact
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.metrics import Metrics
from orchestrator.core.models import rfc3339
from orchestrator.playbooks import timeline
from orchestrator.playbooks.loader import LoadedPlaybook

log = structlog.get_logger(__name__)

TIMELINE_WINDOW = 600
"""The timeline (and each cluster's last change) reads at most this many of the newest stored messages,
one page (`bus.history`) per render: on a 2-core machine with a full stream a render took ~47 ms with
600 and ~116 ms with 2,000, and every open dashboard renders on each burst of events."""
TIMELINE_SHOWN = 60
RUN_MILESTONES = frozenset(
    {"started", "blocked", "waiting_approval", "step.failed", "needs_attention", "preempted", "finished"}
)
"""Run events worth a line in the timeline (step starts and successes are on the run's own page)."""
FAILING_STATES = ("failed", "degraded")
NOT_READY = {"nats": "not connected to NATS", "detector": "the detector is not consuming health reports"}
"""The `/readyz` checks the headline names itself (the balancer checks have reasons of their own)."""


@dataclass(frozen=True)
class Headline:
    level: str
    """ok (green), warn (amber: the service holds, something is going on), bad (red: act now)."""
    title: str
    reasons: list[str] = field(default_factory=list)
    serving: int = 0
    total: int = 0


def serving(cluster: Mapping[str, Any]) -> bool:
    """Not failed, and weight above 0 in a balancer it is a member of."""
    return cluster.get("state") != "failed" and any(w > 0 for w in (cluster.get("weights") or {}).values())


def headline(
    *,
    clusters: Sequence[Mapping[str, Any]],
    unreadable: Sequence[str],
    min_healthy: int,
    leader: Mapping[str, Any],
    status: Mapping[str, Any],
    active: Sequence[Mapping[str, Any]],
    checks: Mapping[str, Any],
    readiness: Mapping[str, Any] | None = None,
) -> Headline:
    """The service in one line and the reasons behind its colour, worst first."""
    total = len(clusters)
    up = [c for c in clusters if serving(c)]
    bad: list[str] = []
    warn: list[str] = []
    if leader.get("present") is False:  # None: not known (a page rendered from the views alone)
        bad.append("No leader: no replica holds the lease, so nothing acts on a failure")
    if unreadable:
        bad.append(
            f"Balancer {', '.join(unreadable)} cannot be read: where traffic goes is unknown"
            if len(unreadable) == 1
            else f"Balancers {', '.join(unreadable)} cannot be read: where traffic goes is unknown"
        )
    flagged: set[str] = set()
    for c in clusters:
        weighted = sorted(lb for lb, w in (c.get("weights") or {}).items() if w > 0)
        if c.get("state") == "failed" and weighted:
            flagged.add(str(c["name"]))
            bad.append(f"{c['name']} failed but still has weight in {', '.join(weighted)}")
    known = any(c.get("weights") for c in clusters)  # else no balancer answered: serving is unknown
    if known and not up and total:
        bad.append("No cluster serves traffic")
    elif known and len(up) < min_healthy:
        bad.append(f"Fewer clusters serve than min_healthy_clusters ({min_healthy})")
    down = [NOT_READY[name] for name in NOT_READY if checks.get(name) is False]
    if down:
        bad.append("Not ready: " + " and ".join(down))
    for run in active:
        kind = _run_kind(run)
        where = " · ".join(str(x) for x in (run.get("playbook"), run.get("cluster")) if x)
        waiting = " (waiting for approval)" if run.get("id") in (status.get("waiting_approval") or []) else ""
        warn.append(f"{kind} in progress: {where}{waiting}")
    for c in clusters:
        if c.get("state") in FAILING_STATES and c["name"] not in flagged:
            warn.append(f"{c['name']} {c['state']}" + ("" if serving(c) else ", drained"))
    if status.get("frozen"):
        warn.append("Automation frozen by the observer guard: nothing is drained until it clears")
    for p in status.get("paused") or []:
        warn.append(f"Automation paused for {'all clusters' if p.get('scope') == 'all' else p.get('scope')}")
    if status.get("suspect_vantages"):
        warn.append(f"Suspect vantages: {', '.join(status['suspect_vantages'])}")
    if readiness and readiness.get("ready") is False:
        warn.append(f"Readiness: {readiness.get('not_ready', 0)} failover plan(s) would not work now")
    if not known and unreadable:
        title = "Which clusters serve is unknown"
    else:
        title = f"{len(up)} of {total} clusters serving"
    level = "bad" if bad else "warn" if warn else "ok"
    return Headline(level, title, bad + warn, len(up), total)


def _run_kind(run: Mapping[str, Any]) -> str:
    event = str(run.get("event") or "")
    if event == "cluster.failed" or (event == "manual" and "drain" in str(run.get("playbook"))):
        return "Failover"
    if event == "cluster.recovered" or (event == "manual" and "restore" in str(run.get("playbook"))):
        return "Failback"
    return "Run"


def min_healthy(playbooks: Mapping[str, LoadedPlaybook]) -> int:
    """The strictest `guards.min_healthy_clusters` of the loaded playbooks (1 when none says)."""
    return max([1, *(lp.playbook.guards.min_healthy_clusters for lp in playbooks.values())])


def probe_view(metrics: Metrics, now: float) -> dict[str, list[dict[str, Any]]]:
    """cluster -> each probe's last result per vantage, from the gauges `/metrics` serves."""
    made = dict(metrics.probe_reported.values)  # (cluster, probe, vantage) -> made at
    out: dict[str, list[dict[str, Any]]] = {}
    for key, value in list(metrics.probe_result.values.items()):
        at = made.get(key)
        out.setdefault(key[0], []).append(
            {
                "probe": key[1],
                "vantage": key[2],
                "ok": value == 1,
                "age_s": None if at is None else max(0.0, now - at),
            }
        )
    for rows in out.values():
        rows.sort(key=lambda r: (r["probe"], r["vantage"]))
    return out


def evidence_lines(evidence: Mapping[str, Any]) -> list[str]:
    """The detector's evidence as lines: `test/ingress: 3 failures in a row: connection refused`."""
    lines: list[str] = []
    for what in ("failing", "degraded"):
        by_vantage = evidence.get(what)
        if not isinstance(by_vantage, Mapping):
            continue
        for vantage, probes in sorted(by_vantage.items()):
            if not isinstance(probes, Mapping):
                continue
            for probe, found in sorted(probes.items()):
                track = found if isinstance(found, Mapping) else {}
                parts = []
                ratio = track.get("failure_ratio")
                if isinstance(ratio, Mapping):
                    parts.append(f"{ratio.get('failed')} of {ratio.get('rounds')} rounds failed")
                elif track.get("consecutive_fail"):
                    parts.append(f"{track['consecutive_fail']} failures in a row")
                if "latency_limit_ms" in track:
                    parts.append(f"{track.get('latency_ms')} ms over {track['latency_limit_ms']} ms")
                if track.get("detail"):
                    parts.append(str(track["detail"])[:200])
                lines.append(f"{vantage}/{probe}: " + ": ".join(parts or [what]))
    return lines


def timeline_view(
    events: Sequence[history.StoredEvent], runs: Mapping[str, Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(the newest timeline entries first, cluster -> its last state change)."""
    entries: list[dict[str, Any]] = []
    last_change: dict[str, dict[str, Any]] = {}
    for e in events:
        body = e.data
        at = rfc3339(e.at.timestamp())
        if e.kind == "cluster":
            cluster = str(body.get("cluster", ""))
            change: dict[str, Any] = {
                "at": str(body.get("ts") or at),
                "from": str(body.get("from", "")),
                "to": str(body.get("to", "")),
                "reason": str(body.get("reason", "")),
                "evidence": evidence_lines(body.get("evidence") or {}),
            }
            last_change[cluster] = change
            entries.append(
                {
                    "at": change["at"],
                    "kind": "cluster",
                    "level": _level(change["to"]),
                    "text": f"{cluster} {change['from']} → {change['to']}: {change['reason']}",
                }
            )
        elif e.kind == "system":
            entries.append(
                {
                    "at": str(body.get("ts") or at),
                    "kind": "system",
                    "level": "warn",
                    "text": f"{body.get('type')}: {body.get('reason', '')}",
                }
            )
        elif body.get("type") in RUN_MILESTONES:
            entries.append(_run_entry(body, at, runs))
    entries.reverse()
    return entries[:TIMELINE_SHOWN], last_change


def _level(state: str) -> str:
    return {"failed": "bad", "degraded": "warn", "healthy": "ok"}.get(state, "info")


def _run_entry(body: Mapping[str, Any], at: str, runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    run_id, kind = str(body.get("run_id", "")), str(body.get("type"))
    detail = body.get("detail") if isinstance(body.get("detail"), Mapping) else {}
    assert isinstance(detail, Mapping)
    run = runs.get(run_id) or {}
    text = f"{body.get('playbook')}"
    cluster = detail.get("cluster") or run.get("cluster")
    if cluster:
        text += f" · {cluster}"
    level = "info"
    if kind == "finished":
        status = str(detail.get("status", ""))
        text += f" finished {status}"
        level = (
            "ok" if status == "succeeded" else "bad" if status in ("failed", "needs_attention") else "warn"
        )
        marks = detail.get("timeline")
        stages = timeline.stages(marks) if isinstance(marks, Mapping) else {}
        if stages:
            text += " · recovery " + " · ".join(f"{k} {v:.3f}s" for k, v in stages.items())
        if detail.get("error"):
            text += f": {detail['error']}"
    elif kind == "started":
        text += f" started ({detail.get('event') or run.get('event') or 'run'})"
        if detail.get("actor"):
            text += f" by {detail['actor']}"
    elif kind == "step.failed":
        level = "bad"
        text += f" step {body.get('step')} failed: {detail.get('error', '')}"
    else:
        level = "warn"
        text += f" {kind.replace('_', ' ')}"
        why = detail.get("reason") or detail.get("error")
        if why:
            text += f": {why}"
    return {"at": str(body.get("ts") or at), "kind": "run", "level": level, "text": text, "run": run_id}


def approval_view(record: Mapping[str, Any], now: float) -> dict[str, Any]:
    """A run waiting for approval: what is asked, by whom it may be approved, and the deadline."""
    steps = record.get("steps") if isinstance(record.get("steps"), Mapping) else {}
    assert isinstance(steps, Mapping)
    plan = record.get("plan") if isinstance(record.get("plan"), Mapping) else {}
    assert isinstance(plan, Mapping)
    planned = {str(s.get("id")): s for s in plan.get("steps", []) if isinstance(s, Mapping)}
    for step_id, entry in steps.items():
        if isinstance(entry, Mapping) and entry.get("waiting_approval") and entry.get("status") == "running":
            params = planned.get(str(step_id), {}).get("with") or {}
            until = entry.get("until")
            deadline = float(until) if isinstance(until, int | float) else None
            return {
                "step": str(step_id),
                "summary": params.get("summary") if isinstance(params.get("summary"), str) else None,
                "approvers": [str(a) for a in params.get("approvers") or []],
                "deadline": rfc3339(deadline) if deadline is not None else None,
                "left_s": max(0.0, deadline - now) if deadline is not None else None,
                "on_timeout": str(params.get("on_timeout") or "abort"),
            }
    return {
        "step": None,
        "summary": None,
        "approvers": [],
        "deadline": None,
        "left_s": None,
        "on_timeout": None,
    }


def leader_view(this_replica_leads: bool, lease: Mapping[str, Any] | None, embedded: bool) -> dict[str, Any]:
    """Who leads: the lease's holder and term, this replica when it leads (with an embedded NATS there
    is no lease: the only replica leads)."""
    if lease is not None:
        return {
            "present": True,
            "holder": str(lease.get("holder") or "?"),
            "term": lease.get("term"),
            "this_replica": this_replica_leads,
        }
    if this_replica_leads:
        holder = "this replica (embedded NATS: the only one)" if embedded else "this replica"
        return {"present": True, "holder": holder, "term": None, "this_replica": True}
    return {"present": False, "holder": None, "term": None, "this_replica": False}


def ago(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.1f}s ago" if seconds < 10 else f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def from_views(
    status: Mapping[str, Any], clusters: Mapping[str, Any], active: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """What the page can say from the API's views alone, with nothing read (the leader, the history,
    the probes and the approvals' deadlines unknown): for rendering the page offline."""
    rows = clusters.get("clusters", [])
    leader = {"present": None, "holder": None, "term": None, "this_replica": False}
    head = headline(
        clusters=rows,
        unreadable=clusters.get("unreadable_balancers", []),
        min_healthy=1,
        leader=leader,
        status=status,
        active=active,
        checks={},
    )
    return {
        "headline": head,
        "clusters": [{**c, "serving": serving(c), "change": None, "probes": []} for c in rows],
        "timeline": [],
        "approvals": [
            {"id": str(i), "run": None, **approval_view({}, time.time())}
            for i in status.get("waiting_approval", [])
        ],
        "leader": leader,
        "version": __version__,
        "readiness": None,
        "min_healthy": 1,
    }


async def recent_events(bus: Bus) -> list[history.StoredEvent]:
    """The newest `TIMELINE_WINDOW` stored messages' events (one bounded page); [] when unreadable."""
    try:
        _first, last = await history.bounds(bus)
        if not last:
            return []
        page = await history.read_page(bus, after_seq=max(0, last - TIMELINE_WINDOW), limit=TIMELINE_WINDOW)
    except OrchestratorError as e:
        log.warning("dashboard.history_unreadable", error=str(e))
        return []
    return page.events


async def lease(bus: Bus | None) -> dict[str, Any] | None:
    if bus is None or bus.embedded:
        return None
    try:
        found = await Bus.kv_get(bus.kv.leader, LEADER_KEY)
    except (OrchestratorError, ValueError) as e:
        log.warning("dashboard.lease_unreadable", error=str(e))
        return None
    return dict(found[0]) if found is not None and isinstance(found[0], dict) else None


async def gather(
    ctx: ApiContext,
    *,
    status: Mapping[str, Any],
    clusters: Mapping[str, Any],
    runs: Sequence[Mapping[str, Any]],
    active: Sequence[Mapping[str, Any]],
    readiness: Mapping[str, Any] | None,
    playbooks: Mapping[str, LoadedPlaybook],
) -> dict[str, Any]:
    """Everything the page shows beyond the API's views, read now."""
    now = time.time()
    bus = ctx.bus
    events = await recent_events(bus) if bus is not None else []
    by_id = {str(r.get("id")): r for r in runs}
    entries, last_change = timeline_view(events, by_id)
    checks = ctx.readiness()
    leader = leader_view(bool(checks.get("leader")), await lease(bus), bool(bus and bus.embedded))
    probes = probe_view(ctx.metrics, now)
    rows = []
    for c in clusters.get("clusters", []):
        change = last_change.get(c["name"])
        rows.append({**c, "serving": serving(c), "change": change, "probes": probes.get(c["name"], [])})
    approvals = []
    for run_id in status.get("waiting_approval") or []:
        record = await ctx.journal.read(str(run_id)) if ctx.journal is not None else None
        run = by_id.get(str(run_id))
        approvals.append({"id": str(run_id), "run": run, **approval_view(redact.redact(record or {}), now)})
    floor = min_healthy(playbooks)
    head = headline(
        clusters=clusters.get("clusters", []),
        unreadable=clusters.get("unreadable_balancers", []),
        min_healthy=floor,
        leader=leader,
        status=status,
        active=active,
        checks=checks,
        readiness=readiness,
    )
    return {
        "headline": head,
        "clusters": rows,
        "timeline": entries,
        "approvals": approvals,
        "leader": leader,
        "version": __version__,
        "readiness": readiness,
        "min_healthy": floor,
    }
