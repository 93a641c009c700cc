"""Who may call a route, and how refusals and failures are answered.

`wrap` puts the exposure checks and the token check in front of every route handler (identity and role
come from `Commands.authenticate`, as for `failover ctl`, NATS requests and chatops); `errors` is the
app's middleware that turns refusals, router errors and failures into JSON (or a short page) without a
stack trace or a token.

The exposure checks (DESIGN §12) stop what a browser can be made to do on a user's behalf. Without
tokens, a request must name the API by one of its own names (`Host`): a DNS-rebinding page reaches the
API under the attacker's name and is refused, so it cannot read answers. A mutating request must be
`application/json`, which a form or a "simple" cross-site request cannot send without a preflight, and
when it carries an `Origin` that origin must be the API's own. Refusals of the command route are audited
like any refused command.
"""

from __future__ import annotations

import asyncio
import ipaddress
import traceback
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from orchestrator.api import dashboard
from orchestrator.api.bodies import json_error
from orchestrator.api.commands import Caller, CommandError
from orchestrator.api.context import ApiContext
from orchestrator.api.routes import JSON, Reply, Route
from orchestrator.core import subjects
from orchestrator.core.config_daemon import ApiConfig
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.models import AuditRecord
from orchestrator.playbooks.approvals import ROLES

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RouteHandler = Callable[[web.Request, Caller | None], Awaitable[web.StreamResponse]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Refused(Exception):
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


def _host_name(host: str) -> str:
    """The name in a `Host` header (or an origin's netloc), lower case, without port or final dot."""
    try:
        return (urlsplit(f"//{host}").hostname or "").rstrip(".")
    except ValueError:
        return ""


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) with the default port filled in; None for `null` or anything unparsable."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    return parts.scheme.lower(), parts.hostname.rstrip("."), port


def own_names(api: ApiConfig) -> set[str]:
    """The names the API answers to without tokens: `localhost` (browsers resolve it to loopback
    themselves, so no page can rebind it), the listen host when it is a name, `api.external_url`'s host
    and `api.allowed_hosts`. IP addresses are accepted as such (`_known_host`)."""
    names = {"localhost", api.host.lower().rstrip("."), *api.allowed_hosts}
    if api.external_url:
        names.add(_host_name(urlsplit(api.external_url).netloc))
    return names


def _known_host(api: ApiConfig, host: str) -> bool:
    """A request addressed to an IP address cannot be a rebinding (the page's origin is that address);
    one addressed to a name must use one of the API's own names."""
    name = _host_name(host)
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name in own_names(api)


def check_exposure(api: ApiConfig, request: web.Request, route: Route) -> None:
    """Refuse what a hostile page could send through a user's browser (see the module docstring)."""
    if route.role is None:
        return  # /healthz, /readyz, /metrics: kubelets and scrapers use whatever address they have
    if api.anonymous and not _known_host(api, request.host):
        raise Refused(
            421,
            f"this API does not answer to the host {_host_name(request.host)[:100]!r} (DNS rebinding "
            "guard; add the name to api.allowed_hosts or configure api.tokens)",
        )
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin is not None:
        own = api.external_url or f"{request.scheme}://{request.host}"
        if _origin(origin) is None or _origin(origin) != _origin(own):
            raise Refused(403, f"origin {origin[:100]!r} is not this API's origin ({_origin_text(own)})")
    if request.content_type != JSON:
        raise Refused(415, f"a mutating request must be {JSON} (Content-Type: {JSON})")


def _origin_text(url: str) -> str:
    found = _origin(url)
    return f"{found[0]}://{found[1]}:{found[2]}" if found else "unknown"


async def audit_refused_request(ctx: ApiContext, token: str | None, message: str) -> Caller | None:
    """Write a refused request to the command route to `failover.audit` like a refused command (the
    actor is the token's, or `unauthenticated`; never the token) and return the caller, if any."""
    caller: Caller | None = None
    if ctx.commands is not None:
        try:
            caller = ctx.commands.authenticate(token, "api")
        except CommandError:
            caller = None
    record = AuditRecord(
        actor=caller.actor if caller else "unauthenticated",
        via="api",
        command="(invalid request)",
        result=f"error: {message}",
    )
    log.info("audit", actor=record.actor, via="api", command=record.command, result=record.result)
    if ctx.bus is not None:
        try:
            await ctx.bus.publish_durable(subjects.AUDIT, record.to_json())
        except OrchestratorError as e:
            log.error("audit.publish_failed", error=str(e))
    return caller


def authorize(ctx: ApiContext, request: web.Request, route: Route) -> Caller | None:
    if route.role is None or route.audited:
        return None
    token = bearer_token(request, route.query_token)
    commands = ctx.commands
    if commands is None:
        if ctx.config.api.tokens:
            raise Refused(503, "authentication is not available yet")
        return Caller("anonymous", "admin", "api")
    try:
        caller = commands.authenticate(token, "api")
    except CommandError as e:
        raise Refused(e.status, str(e)) from None
    if ROLES.index(caller.role) < ROLES.index(route.role):
        raise Refused(403, f"{route.operation} needs the {route.role} role; {caller.actor} has {caller.role}")
    return caller


def wrap(ctx: ApiContext, route: Route, handler: RouteHandler) -> Handler:
    html = route.replies.get(200, Reply("")).content_type == "text/html"

    async def serve(request: web.Request) -> web.StreamResponse:
        try:
            try:
                check_exposure(ctx.config.api, request, route)
            except Refused as e:
                if route.audited:
                    await audit_refused_request(ctx, bearer_token(request, query=False), e.message)
                raise
            caller = authorize(ctx, request, route)
        except Refused as e:
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


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
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
    except Refused as e:
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
