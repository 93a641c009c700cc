"""The route handlers: one method per operation of the route table (`routes.ROUTES`).

`build_app` registers `Handlers.<operation>` for every route, behind the token check (`auth.wrap`). The
read views (status, clusters, runs) are shared by the JSON API and the dashboard page; commands go
through `Commands.handle`, which authorizes and audits them; the event stream is `sse.EventStream`.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from orchestrator.api import dashboard, history, overview
from orchestrator.api.auth import Refused, audit_refused_request, bearer_token
from orchestrator.api.bodies import check_command, dumps, json_error, opt_str, run_summary
from orchestrator.api.commands import Caller, CommandError, Commands
from orchestrator.api.context import ApiContext
from orchestrator.api.metrics_render import MetricsRenderer
from orchestrator.api.routes import INCIDENT_ID_PATTERN, RUN_ID_PATTERN, openapi_document
from orchestrator.api.sse import EventStream
from orchestrator.bus.client import Bus
from orchestrator.bus.state import (
    PAUSE_ALL,
    PAUSE_CLUSTER_PREFIX,
    StateStore,
    pause_in_force,
    pause_until,
    readable_timestamp,
)
from orchestrator.core import redact
from orchestrator.core.models import rfc3339
from orchestrator.playbooks.incidents import IncidentBook, incident_view
from orchestrator.playbooks.journal import PAGE_DEFAULT, PAGE_MAX, UnknownRun

log = structlog.get_logger(__name__)

WEIGHTS_TIMEOUT_S = 3.0
"""Reading current weights talks to every balancer; a slow one must not hang the cluster view."""
READINESS_KEY = "readiness.latest"
"""KV `failover-state` key of the leader's last readiness pass (`runtime.readiness_monitor` writes it)."""
_RUN_ID = re.compile(RUN_ID_PATTERN)
DASHBOARD_RUNS = 20
"""Runs per dashboard page (`?before=` pages on)."""
_INCIDENT_ID = re.compile(INCIDENT_ID_PATTERN)


class Handlers:
    def __init__(self, ctx: ApiContext, heartbeat_s: float, queue_max: int, poll_s: float) -> None:
        self.ctx = ctx
        self.rendered_metrics = MetricsRenderer(ctx.metrics.render)
        self.stream = EventStream(ctx, heartbeat_s, queue_max, poll_s)
        self.document = openapi_document()

    # open routes ---------------------------------------------------------------------------------

    async def healthz(self, _request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        checks = self.ctx.readiness()
        ready = all(bool(v) for k, v in checks.items() if k != "leader")
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics(self, _request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        body = await self.rendered_metrics.body()  # off the loop: 471 ms at 10,000 clusters
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # views shared by the API and the dashboard ----------------------------------------------------

    async def status_view(self) -> dict[str, Any]:
        status = dict(self.ctx.status())
        status["paused"] = await self._pauses()
        bus = self.ctx.bus
        leads = bool(self.ctx.readiness().get("leader"))
        status["leader"] = overview.leader_view(leads, await overview.lease(bus), bool(bus and bus.embedded))
        return status

    async def _pauses(self) -> list[dict[str, Any]]:
        bus = self.ctx.bus
        if bus is None:
            return []
        now = time.time()
        out = []
        for key, found in sorted((await Bus.kv_items(bus.kv.state, PAUSE_ALL)).items()):
            if key != PAUSE_ALL and not key.startswith(PAUSE_CLUSTER_PREFIX):
                continue
            if not pause_in_force(found, now):
                continue  # expired: automation runs again
            # whatever the record holds (an older writer, a hand edit), the view is total
            until, at = pause_until(found), readable_timestamp(found.get("at"))
            out.append(
                {
                    "scope": "all" if key == PAUSE_ALL else key.removeprefix(PAUSE_CLUSTER_PREFIX),
                    "by": opt_str(found.get("by")),
                    "since": rfc3339(at) if at is not None else None,
                    "until": rfc3339(until) if until is not None else None,
                }
            )
        return out

    async def clusters_view(self) -> dict[str, Any]:
        states = self.ctx.status().get("clusters", {})
        current: dict[str, dict[str, int]] = {}
        if self.ctx.weights is not None:
            try:
                current = await asyncio.wait_for(self.ctx.weights(), WEIGHTS_TIMEOUT_S)
            except TimeoutError:
                log.warning("api.weights_timeout", timeout_s=WEIGHTS_TIMEOUT_S)
        clusters = [
            {
                "name": c.name,
                "state": states.get(c.name, "unknown"),
                "labels": dict(c.labels),
                "weight": c.weight,
                "weights": {lb: w[c.name] for lb, w in sorted(current.items()) if c.name in w},
            }
            for c in self.ctx.config.clusters
        ]
        unreadable = sorted(lb.name for lb in self.ctx.config.load_balancers if lb.name not in current)
        return {"clusters": clusters, "unreadable_balancers": unreadable}

    async def runs_view(self, limit: int, before: str | None = None) -> dict[str, Any]:
        """One page of runs, newest first; `next` is the `before` of the following page (None: the last)."""
        if self.ctx.journal is None:
            raise Refused(503, "the run journal is not available")
        page = await self.ctx.journal.page(limit, before)
        return {"runs": [redact.redact(run_summary(r)) for r in page.runs], "next": page.next}

    async def incidents_view(self, open_only: bool = False) -> dict[str, Any]:
        """Incidents newest first (DESIGN §13), from KV `incident.<id>`."""
        bus = self.ctx.bus
        if bus is None:
            raise Refused(503, "the state bucket is not available")
        records = await IncidentBook(StateStore(bus)).all(open_only=open_only)
        return {"incidents": redact.redact([incident_view(r) for r in records])}

    # /api/v1 --------------------------------------------------------------------------------------

    async def status(self, _request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        return web.json_response(await self.status_view(), dumps=dumps)

    async def clusters(self, _request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        return web.json_response(await self.clusters_view(), dumps=dumps)

    async def runs(self, request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        raw = request.query.get("limit", str(PAGE_DEFAULT))
        if not raw.isdigit() or not 1 <= int(raw) <= PAGE_MAX:
            return json_error(400, f"limit must be an integer from 1 to {PAGE_MAX}")
        before = request.query.get("before")
        if before is not None and not _RUN_ID.match(before):
            return json_error(400, f"before: a run id matches {RUN_ID_PATTERN}")
        try:
            return web.json_response(await self.runs_view(int(raw), before), dumps=dumps)
        except UnknownRun as e:
            return json_error(400, str(e))

    async def incidents(self, request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        raw = request.query.get("open", "false")
        if raw not in ("true", "false"):
            return json_error(400, "open must be true or false")
        return web.json_response(await self.incidents_view(raw == "true"), dumps=dumps)

    async def _run_record(self, request: web.Request) -> dict[str, Any] | web.Response:
        """The run `{id}` names, or the error answer (400 bad id, 503 no journal, 404 no such run)."""
        run_id = request.match_info["id"]
        if not _RUN_ID.match(run_id):
            return json_error(400, f"a run id matches {RUN_ID_PATTERN}")
        if self.ctx.journal is None:
            return json_error(503, "the run journal is not available")
        record = await self.ctx.journal.read(run_id)
        return json_error(404, f"no run {run_id}") if record is None else record

    async def run(self, request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        record = await self._run_record(request)
        if isinstance(record, web.Response):
            return record
        # secret values, secret-looking keys and URL parameters, whatever an older writer journalled
        return web.json_response(redact.redact(record), dumps=dumps)

    async def readiness_report(self, _request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        """The leader's last readiness pass, from KV: every replica answers the same (DESIGN §17)."""
        bus = self.ctx.bus
        if bus is None:
            raise Refused(503, "the state bucket is not available")
        settings = self.ctx.config.readiness
        found = await StateStore(bus).get(READINESS_KEY)
        if not isinstance(found, dict) or not isinstance(found.get("results"), list):
            found = {
                "checked_at": None,
                "duration_s": None,
                "by": None,
                "ready": None,
                "not_ready": 0,
                "results": [],
            }
        body = {**found, "enabled": settings.enabled, "interval_s": settings.interval_s}
        return web.json_response(redact.redact(body), dumps=dumps)

    async def openapi(self, _request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        return web.json_response(self.document, dumps=dumps)

    async def command(self, request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        commands = self.ctx.commands
        if commands is None:
            return json_error(503, "commands are not available yet")
        token = bearer_token(request, query=False)
        try:
            command, args = check_command(await request.json())
        except ValueError as e:  # includes a body that is not JSON
            return await self._refuse_bad_request(commands, token, str(e))
        answer = await commands.handle(command, args, token, "api")
        if answer.get("ok"):
            return web.json_response({"ok": True, "result": answer.get("result")}, dumps=dumps)
        status = int(answer.get("status") or 500)
        headers = {"WWW-Authenticate": 'Bearer realm="failover"'} if status == 401 else None
        return json_error(status, str(answer.get("error")), headers)

    async def _refuse_bad_request(self, commands: Commands, token: str | None, problem: str) -> web.Response:
        """A body that is not a command is refused and audited like a refused command: without a valid
        token it is a 401 (nothing about the body is said), with one a 400."""
        try:
            commands.authenticate(token, "api")
            status, message = 400, f"bad request: {problem}"
        except CommandError as e:
            status, message = e.status, str(e)
        await audit_refused_request(self.ctx, token, message)
        headers = {"WWW-Authenticate": 'Bearer realm="failover"'} if status == 401 else None
        return json_error(status, message, headers)

    async def events(self, request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        if "since" in request.query:  # a page of what the stream kept (`api.history`)
            return await history.serve(self.ctx, request.query)
        return await self.stream.serve(request)

    # dashboard -----------------------------------------------------------------------------------

    async def dashboard(self, request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        """`/`: the incident dashboard (`api.overview` says what it shows); `?before=<run id>` pages the
        runs, the rest (the headline, active runs, approvals) is always now."""
        before = request.query.get("before")
        if before is not None and not _RUN_ID.match(before):
            return json_error(400, f"before: a run id matches {RUN_ID_PATTERN}")
        status, clusters = await self.status_view(), await self.clusters_view()
        newest = await self.runs_view(DASHBOARD_RUNS)
        try:
            shown = newest if before is None else await self.runs_view(DASHBOARD_RUNS, before)
        except UnknownRun as e:
            return json_error(400, str(e))
        found = await StateStore(self.ctx.bus).get(READINESS_KEY) if self.ctx.bus is not None else None
        readiness = None
        if self.ctx.bus is not None:
            settings = self.ctx.config.readiness
            readiness = {
                **(found if isinstance(found, dict) and isinstance(found.get("results"), list) else {}),
                "enabled": settings.enabled,
                "interval_s": settings.interval_s,
            }
            readiness.setdefault("checked_at", None)
            readiness = redact.redact(readiness)
        seen = await overview.gather(
            self.ctx,
            status=status,
            clusters=clusters,
            runs=newest["runs"],
            active=dashboard.active_runs(status, newest["runs"]),
            readiness=readiness,
            playbooks=self.ctx.commands.runner.playbooks if self.ctx.commands is not None else {},
        )
        nonce = secrets.token_urlsafe(16)
        token = request.query.get("access_token")
        page = dashboard.render(
            status=status,
            clusters=clusters,
            runs=shown["runs"] if before is not None else newest["runs"],
            incidents=(await self.incidents_view(open_only=True))["incidents"],
            nonce=nonce,
            seen=seen,
            query=urlencode({"access_token": token}) if token else "",
            before=before,
            older=shown["next"],
        )
        return _html(page, nonce)

    async def run_page(self, request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        """`/runs/<id>`: the page a notification's run link opens (DESIGN §13, `api.external_url`)."""
        record = await self._run_record(request)
        if isinstance(record, web.Response):
            return record
        nonce = secrets.token_urlsafe(16)
        summary = redact.redact(run_summary(record))
        return _html(dashboard.render_page(nonce=nonce, query=request.query_string, run=summary), nonce)

    async def incident_page(self, request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        """`/incidents/<id>`: the page a notification's incident link opens."""
        incident_id = request.match_info["id"]
        if not _INCIDENT_ID.match(incident_id):
            return json_error(400, f"an incident id matches {INCIDENT_ID_PATTERN}")
        bus = self.ctx.bus
        if bus is None:
            return json_error(503, "the state bucket is not available")
        record = await IncidentBook(StateStore(bus)).get(incident_id)
        if record is None:
            return json_error(404, f"no incident {incident_id}")
        nonce = secrets.token_urlsafe(16)
        view = redact.redact(incident_view(record))
        return _html(dashboard.render_page(nonce=nonce, query=request.query_string, incident=view), nonce)


def _html(page: str, nonce: str) -> web.Response:
    """A server-rendered page: scripts and styles only with this response's nonce, nothing framed, no
    referrer (the URL may carry ?access_token=), never cached."""
    return web.Response(
        text=page,
        content_type="text/html",
        headers={
            "Content-Security-Policy": (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                "frame-ancestors 'none'"
            ),
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )
