"""Who may call a route, and how refusals and failures are answered.

`wrap` puts the token check in front of every route handler (identity and role come from
`Commands.authenticate`, as for `failover ctl`, NATS requests and chatops); `errors` is the app's
middleware that turns refusals, router errors and failures into JSON (or a short page) without a stack
trace or a token.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web

from orchestrator.api import dashboard
from orchestrator.api.bodies import json_error
from orchestrator.api.commands import Caller, CommandError
from orchestrator.api.context import ApiContext
from orchestrator.api.routes import Reply, Route
from orchestrator.core.errors import OrchestratorError
from orchestrator.playbooks.approvals import ROLES

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RouteHandler = Callable[[web.Request, Caller | None], Awaitable[web.StreamResponse]]


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
