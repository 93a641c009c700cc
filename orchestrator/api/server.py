"""The HTTP API (DESIGN §8): health, metrics, the read and command API, the live event stream and the
dashboard, on one aiohttp application.

`/healthz`, `/readyz` and `/metrics` stay open for kubelets and scrapers and reveal no secret. Every other
route needs a token when `api.tokens` is configured: identity and role come from `Commands.authenticate`,
so the API, `failover ctl`, NATS requests and chatops share one notion of who may do what, and every
command goes through `Commands.handle`, which authorizes and audits it.

Routes live in one table (`api_routes.ROUTES`); the app is registered from it and `/api/v1/openapi.json`
is generated from it, so the document cannot drift from what is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from orchestrator.api import dashboard
from orchestrator.api.commands import Caller, CommandError, Commands
from orchestrator.api.routes import (
    COMMAND_ARGS,
    JSON,
    ROUTES,
    RUN_ID_PATTERN,
    RUNS_LIMIT_MAX,
    Reply,
    Route,
    openapi_document,
)
from orchestrator.bus.client import Bus
from orchestrator.bus.state import PAUSE_ALL, PAUSE_CLUSTER_PREFIX, pause_in_force
from orchestrator.core import subjects
from orchestrator.core.config import Config
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.metrics import Metrics
from orchestrator.core.models import AuditRecord, rfc3339
from orchestrator.playbooks.approvals import ROLES
from orchestrator.playbooks.journal import BusJournal

log = structlog.get_logger(__name__)

Readiness = Callable[[], dict[str, Any]]

SSE_HEARTBEAT_S = 15.0
"""Comment lines this often keep proxies and load balancers from closing an idle stream."""
SSE_QUEUE_MAX = 256
"""Per client: a slow client loses its oldest events (counted), it never makes the daemon buffer more."""
SSE_POLL_S = 1.0
"""How often an idle stream checks whether its client went away (aiohttp does not cancel the handler)."""
WEIGHTS_TIMEOUT_S = 3.0
"""Reading current weights talks to every balancer; a slow one must not hang the cluster view."""
BODY_MAX_BYTES = 64 * 1024
_RUN_ID = re.compile(RUN_ID_PATTERN)
_SECRET_KEYS = ("token", "secret", "password", "authorization", "webhook_url", "credential")


@dataclass
class ApiContext:
    """Everything the HTTP API reads or calls; built by the runtime."""

    config: Config
    metrics: Metrics
    readiness: Readiness
    status: Callable[[], dict[str, Any]]
    """Daemon status: clusters' states, frozen, suspects, active runs, approvals, playbooks, leader."""
    commands: Commands | None = None
    """Authentication (`authenticate(token, via)`) and every command (`handle(command, args, token, via)`)."""
    journal: BusJournal | None = None
    """Runs: `recent(limit)` and `load(run_id)`."""
    bus: Bus | None = None
    """For the live event stream: subscribe to `failover.events.>` and `failover.runs.>`."""
    weights: Callable[[], Awaitable[dict[str, dict[str, int]]]] | None = None
    """balancer -> cluster -> current native weight (read from the balancers)."""


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=_dumps({"ok": False, "error": message}),
        content_type=JSON,
        headers=headers,
    )


class _Refused(Exception):
    """An authorization refusal, answered as JSON (or HTML for the page) by the route wrapper."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bearer_token(request: web.Request, query: bool) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if query:
        return request.query.get("access_token") or None
    return None


def redact(value: Any) -> Any:
    """Values under secret-sounding keys are replaced: a response never carries a secret."""
    if isinstance(value, dict):
        return {
            k: "[redacted]" if any(s in str(k).lower() for s in _SECRET_KEYS) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _change(result: Any) -> str | None:
    """What a step changed, as its action reported it (`global/us-east weight 100 -> 0`)."""
    changes: list[str] = []
    for item in result if isinstance(result, list) else [result]:
        if isinstance(item, dict):
            if item.get("change"):
                changes.append(str(item["change"]))
            elif isinstance(item.get("changes"), list):
                changes.extend(str(c) for c in item["changes"])
    return "; ".join(changes) or None


def run_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """A run as a list shows it: identity, outcome and each step's status in plan order."""
    entries: Mapping[str, Any] = record.get("steps") or {}
    plan = record.get("plan") or {}
    steps: list[dict[str, Any]] = []
    seen: set[str] = set()
    planned = [(str(s.get("id")), s) for s in plan.get("steps", []) if isinstance(s, dict)]
    extra = [(str(sid), {"action": e.get("action")}) for sid, e in entries.items() if isinstance(e, dict)]
    for step_id, step in [*planned, *extra]:
        if step_id in seen:
            continue
        seen.add(step_id)
        entry = entries.get(step_id) or {}
        view: dict[str, Any] = {
            "id": step_id,
            "action": str(entry.get("action") or step.get("action") or ""),
            "status": str(entry.get("status") or "pending"),
            "attempts": entry.get("attempts") if isinstance(entry.get("attempts"), int) else None,
            "error": _opt_str(entry.get("error")),
            "change": _change(entry.get("result")),
            "summary": None,
        }
        params = step.get("with")
        if (
            view["action"] == "approval"
            and isinstance(params, dict)
            and isinstance(params.get("summary"), str)
        ):
            view["summary"] = params["summary"]
        steps.append(view)
    event = record.get("event") if isinstance(record.get("event"), dict) else {}
    assert isinstance(event, dict)
    return {
        "id": str(record.get("id")),
        "playbook": str(record.get("playbook")),
        "status": str(record.get("status")),
        "key": _opt_str(record.get("key")),
        "event": _opt_str(event.get("type")),
        "cluster": _opt_str(event.get("cluster")),
        "actor": _opt_str(record.get("actor")),
        "force": bool(record.get("force")),
        "created_at": _opt_str(record.get("created_at")),
        "finished_at": _opt_str(record.get("finished_at")),
        "error": _opt_str(record.get("error")),
        "failed_step": _opt_str(record.get("failed_step")),
        "steps": steps,
    }


def check_command(body: Any) -> tuple[str, dict[str, Any]]:
    """`{command, args}` from a POST body, checked against `COMMAND_ARGS`; ValueError says what is wrong.
    An unknown command passes through: `Commands.handle` refuses it (and audits the refusal)."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object {command, args}")
    unexpected = sorted(set(body) - {"command", "args"})
    if unexpected:
        hint = " (send the token in the Authorization header)" if "token" in unexpected else ""
        raise ValueError(f"unexpected field(s) {', '.join(map(repr, unexpected))}{hint}")
    command, args = body.get("command"), body.get("args", {})
    if not isinstance(command, str) or not command:
        raise ValueError("`command` must be a non-empty string")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ValueError("`args` must be an object")
    spec = COMMAND_ARGS.get(command)
    if spec is None:
        return command, args
    unknown = sorted(set(args) - set(spec))
    if unknown:
        raise ValueError(f"{command}: unknown argument(s) {', '.join(map(repr, unknown))}")
    for name, (schema, required) in spec.items():
        if name not in args:
            if required:
                raise ValueError(f"{command}: argument {name!r} is required")
            continue
        value, kind = args[name], schema["type"]
        if kind == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool)
            ok = ok and schema.get("minimum", value) <= value <= schema.get("maximum", value)
        elif kind == "boolean":
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, str) and len(value) >= schema.get("minLength", 0)
            ok = ok and ("pattern" not in schema or re.match(schema["pattern"], value) is not None)
        if not ok:
            raise ValueError(f"{command}: argument {name!r} must match {_dumps(schema)}")
    return command, args


def subject_kind(subject: str) -> str:
    """`failover.events.cluster.x` -> cluster, `failover.events.system` -> system,
    `failover.runs.x` -> run."""
    parts = subject.split(".")
    if len(parts) >= 2 and parts[1] == "runs":
        return "run"
    return parts[2] if len(parts) >= 3 else "event"


def sse_frame(subject: str, data: bytes) -> bytes | None:
    """One server-sent event, or None for a body that is not a JSON object (anyone may publish)."""
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    return f"event: {subject_kind(subject)}\ndata: {_dumps(body)}\n\n".encode()


@dataclass(eq=False)
class ClientQueue:
    """A bounded per-client queue that drops the oldest message when full, counting what it dropped."""

    maxlen: int = SSE_QUEUE_MAX
    items: deque[tuple[str, bytes]] = field(init=False)
    dropped: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.items = deque(maxlen=self.maxlen)

    def put(self, subject: str, data: bytes) -> bool:
        """Queue a message; False when the oldest one had to be dropped for it."""
        full = len(self.items) == self.maxlen
        if full:
            self.dropped += 1
        self.items.append((subject, data))
        self.wake.set()
        return not full


@dataclass
class _SseMetrics:
    clients: Gauge
    dropped: Counter


def _sse_metrics(metrics: Metrics) -> _SseMetrics:
    try:
        return _SseMetrics(
            Gauge(
                "failover_api_sse_clients", "Clients connected to /api/v1/events", registry=metrics.registry
            ),
            Counter(
                "failover_api_sse_dropped",
                "Events dropped because an /api/v1/events client read too slowly",
                registry=metrics.registry,
            ),
        )
    except ValueError:  # a second app on the same registry: count, but unregistered
        return _SseMetrics(
            Gauge("failover_api_sse_clients", "", registry=None),
            Counter("failover_api_sse_dropped", "", registry=None),
        )


# ------------------------------------------------------------------------------------------------
# Handlers
# ------------------------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RouteHandler = Callable[[web.Request, Caller | None], Awaitable[web.StreamResponse]]


class _Handlers:
    def __init__(self, ctx: ApiContext, heartbeat_s: float, queue_max: int, poll_s: float) -> None:
        self.ctx = ctx
        self.heartbeat_s = heartbeat_s
        self.queue_max = queue_max
        self.poll_s = poll_s
        self.sse = _sse_metrics(ctx.metrics)
        self.closing = asyncio.Event()
        self.clients: set[ClientQueue] = set()
        self.document = openapi_document()

    # auth ----------------------------------------------------------------------------------------

    def authorize(self, request: web.Request, route: Route) -> Caller | None:
        if route.role is None or route.audited:
            return None
        token = bearer_token(request, route.query_token)
        commands = self.ctx.commands
        if commands is None:
            if self.ctx.config.api.tokens:
                raise _Refused(503, "authentication is not available yet")
            return Caller("anonymous", "admin", "api")
        try:
            caller = commands.authenticate(token, "api")
        except CommandError as e:
            raise _Refused(e.status, str(e)) from None
        if ROLES.index(caller.role) < ROLES.index(route.role):
            raise _Refused(
                403, f"{route.operation} needs the {route.role} role; {caller.actor} has {caller.role}"
            )
        return caller

    def wrap(self, route: Route, handler: RouteHandler) -> Handler:
        html = route.replies.get(200, Reply("")).content_type == "text/html"

        async def serve(request: web.Request) -> web.StreamResponse:
            try:
                caller = self.authorize(request, route)
            except _Refused as e:
                headers = {"WWW-Authenticate": 'Bearer realm="failover"'} if e.status == 401 else None
                if html:
                    return web.Response(
                        status=e.status,
                        text=dashboard.refusal_page(e.status, e.message),
                        content_type="text/html",
                        headers=headers,
                    )
                return json_error(e.status, e.message, headers)
            return await handler(request, caller)

        return serve

    # open routes ---------------------------------------------------------------------------------

    async def healthz(self, _request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        checks = self.ctx.readiness()
        ready = all(bool(v) for k, v in checks.items() if k != "leader")
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics(self, _request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        body = generate_latest(self.ctx.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # views shared by the API and the dashboard ----------------------------------------------------

    async def status_view(self) -> dict[str, Any]:
        status = dict(self.ctx.status())
        status["paused"] = await self._pauses()
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
            value = found
            until = value.get("until")
            at = value.get("at")
            out.append(
                {
                    "scope": "all" if key == PAUSE_ALL else key.removeprefix(PAUSE_CLUSTER_PREFIX),
                    "by": _opt_str(value.get("by")),
                    "since": rfc3339(at) if isinstance(at, int | float) else None,
                    "until": rfc3339(until) if isinstance(until, int | float) else None,
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

    async def runs_view(self, limit: int) -> dict[str, Any]:
        if self.ctx.journal is None:
            raise _Refused(503, "the run journal is not available")
        return {"runs": [run_summary(r) for r in await self.ctx.journal.recent(limit)]}

    # /api/v1 --------------------------------------------------------------------------------------

    async def status(self, _request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        return web.json_response(await self.status_view(), dumps=_dumps)

    async def clusters(self, _request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        return web.json_response(await self.clusters_view(), dumps=_dumps)

    async def runs(self, request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        raw = request.query.get("limit", "20")
        if not raw.isdigit() or not 1 <= int(raw) <= RUNS_LIMIT_MAX:
            return json_error(400, f"limit must be an integer from 1 to {RUNS_LIMIT_MAX}")
        return web.json_response(await self.runs_view(int(raw)), dumps=_dumps)

    async def run(self, request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        run_id = request.match_info["id"]
        if not _RUN_ID.match(run_id):
            return json_error(400, f"a run id matches {RUN_ID_PATTERN}")
        if self.ctx.journal is None:
            return json_error(503, "the run journal is not available")
        record = await self.ctx.journal.load(run_id)
        if record is None:
            return json_error(404, f"no run {run_id}")
        return web.json_response(redact(record), dumps=_dumps)

    async def openapi(self, _request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        return web.json_response(self.document, dumps=_dumps)

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
            return web.json_response({"ok": True, "result": answer.get("result")}, dumps=_dumps)
        status = int(answer.get("status") or 500)
        headers = {"WWW-Authenticate": 'Bearer realm="failover"'} if status == 401 else None
        return json_error(status, str(answer.get("error")), headers)

    async def _refuse_bad_request(self, commands: Commands, token: str | None, problem: str) -> web.Response:
        """A body that is not a command is refused and audited like a refused command: without a valid
        token it is a 401 (nothing about the body is said), with one a 400."""
        try:
            caller: Caller | None = commands.authenticate(token, "api")
            status, message = 400, f"bad request: {problem}"
        except CommandError as e:
            caller, status, message = None, e.status, str(e)
        record = AuditRecord(
            actor=caller.actor if caller else "unauthenticated",
            via="api",
            command="(invalid request)",
            result=f"error: {message}",
        )
        log.info("audit", actor=record.actor, via="api", command=record.command, result=record.result)
        if self.ctx.bus is not None:
            try:
                await self.ctx.bus.publish_durable(subjects.AUDIT, record.to_json())
            except OrchestratorError as e:
                log.error("audit.publish_failed", error=str(e))
        headers = {"WWW-Authenticate": 'Bearer realm="failover"'} if status == 401 else None
        return json_error(status, message, headers)

    async def events(self, request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        bus = self.ctx.bus
        if bus is None:
            return json_error(503, "the event stream is not available")
        queue = ClientQueue(self.queue_max)

        async def on_message(msg: Any) -> None:
            if not queue.put(msg.subject, bytes(msg.data)):
                self.sse.dropped.inc()

        subscriptions = []
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache, no-store",
                "X-Accel-Buffering": "no",  # nginx and friends: do not buffer the stream
            }
        )
        self.clients.add(queue)
        self.sse.clients.inc()
        try:
            for subject in (subjects.EVENTS_ALL, subjects.RUNS_ALL):
                subscriptions.append(await bus.subscribe(subject, on_message))
            await response.prepare(request)
            await response.write(b"retry: 2000\n: connected\n\n")
            await self._pump(request, response, queue)
        except ConnectionResetError:
            pass  # the client went away mid-write
        finally:
            self.clients.discard(queue)
            self.sse.clients.dec()
            for sub in subscriptions:
                with contextlib.suppress(Exception):
                    await asyncio.shield(sub.unsubscribe())
        return response

    async def _pump(self, request: web.Request, response: web.StreamResponse, queue: ClientQueue) -> None:
        last_write = time.monotonic()
        reported = 0
        while not self.closing.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            if not queue.items:
                queue.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queue.wake.wait(), self.poll_s)
                if not queue.items and time.monotonic() - last_write >= self.heartbeat_s:
                    await response.write(b": heartbeat\n\n")
                    last_write = time.monotonic()
                continue
            if queue.dropped > reported:
                reported = queue.dropped
                await response.write(f"event: dropped\ndata: {_dumps({'dropped': reported})}\n\n".encode())
            subject, data = queue.items.popleft()
            frame = sse_frame(subject, data)
            if frame is not None:
                await response.write(frame)
                last_write = time.monotonic()

    async def on_shutdown(self, _app: web.Application) -> None:
        """Open streams end at once, so the server's shutdown does not wait for them."""
        self.closing.set()
        for queue in list(self.clients):
            queue.wake.set()

    # dashboard -----------------------------------------------------------------------------------

    async def dashboard(self, request: web.Request, _caller: Caller | None) -> web.StreamResponse:
        nonce = secrets.token_urlsafe(16)
        page = dashboard.render(
            status=await self.status_view(),
            clusters=await self.clusters_view(),
            runs=(await self.runs_view(20))["runs"],
            nonce=nonce,
        )
        return web.Response(
            text=page,
            content_type="text/html",
            headers={
                "Content-Security-Policy": (
                    f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                    "frame-ancestors 'none'"
                ),
                "Referrer-Policy": "no-referrer",  # the page URL may carry ?access_token=
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store",
            },
        )


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """JSON errors under /api/ (router 404/405, unavailable dependencies), a short page elsewhere; never a
    stack trace or the query string (it may hold a token) in a response or a log line."""
    api = request.path.startswith("/api/")

    def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
        if api:
            return json_error(status, message, headers)
        page = dashboard.refusal_page(status, message)
        return web.Response(status=status, text=page, content_type="text/html", headers=headers)

    try:
        return await handler(request)
    except _Refused as e:
        return error(e.status, e.message)
    except web.HTTPException as e:
        if not api or e.status < 400:
            raise
        return error(e.status, e.reason, {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None)
    except OrchestratorError as e:
        log.warning("api.unavailable", path=request.path, error=str(e))
        return error(503, f"not available right now: {e}")
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:
        # the plain traceback, not exc_info: a console renderer would print frames' locals (a token)
        trace = "".join(traceback.format_exception(e))
        log.error("api.error", method=request.method, path=request.path, error=repr(e), trace=trace)
        return error(500, "internal error (logged)")


def build_app(
    ctx: ApiContext,
    *,
    sse_heartbeat_s: float = SSE_HEARTBEAT_S,
    sse_queue_max: int = SSE_QUEUE_MAX,
    sse_poll_s: float = SSE_POLL_S,
) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=BODY_MAX_BYTES)
    handlers = _Handlers(ctx, sse_heartbeat_s, sse_queue_max, sse_poll_s)
    for route in ROUTES:
        serve = handlers.wrap(route, getattr(handlers, route.operation))
        # no implicit HEAD: the routes served are exactly the ones the OpenAPI document lists
        if route.method == "GET":
            app.router.add_get(route.path, serve, name=route.operation, allow_head=False)
        else:
            app.router.add_route(route.method, route.path, serve, name=route.operation)
    app.on_shutdown.append(handlers.on_shutdown)
    return app


class ApiServer:
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        # handle_signals=False: the supervisor owns signals and shutdown order. Event streams end on
        # app shutdown; the timeout is the backstop for any other slow request.
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            for address in self._runner.addresses:
                self.port = int(address[1])
                break

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
