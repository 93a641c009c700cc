"""The HTTP API (DESIGN §8): health, metrics, the read and command API, the live event stream and the
dashboard, on one aiohttp application.

`/healthz`, `/readyz` and `/metrics` stay open for kubelets and scrapers and reveal no secret. Every other
route needs a token when `api.tokens` is configured: identity and role come from `Commands.authenticate`,
so the API, `failover ctl`, NATS requests and chatops share one notion of who may do what, and every
command goes through `Commands.handle`, which authorizes and audits it.

Routes live in one table (`api_routes.ROUTES`); the app is registered from it and `/api/v1/openapi.json`
is generated from it, so the document cannot drift from what is served.

This module builds the app and runs the server; the token check and error middleware are in `api.auth`,
the handlers in `api.handlers`, the event stream in `api.sse`, the bodies in `api.bodies`.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from orchestrator.api.auth import Handler, errors, wrap
from orchestrator.api.bodies import json_error
from orchestrator.api.chatops import ChatOps
from orchestrator.api.chatops import register_routes as register_chatops
from orchestrator.api.context import ApiContext
from orchestrator.api.handlers import Handlers
from orchestrator.api.routes import ROUTES
from orchestrator.api.sse import SSE_HEARTBEAT_S, SSE_POLL_S, SSE_QUEUE_MAX
from orchestrator.core import jsonlimits
from orchestrator.core.config_daemon import ApiConfig, is_loopback
from orchestrator.core.errors import PermanentError

log = structlog.get_logger(__name__)

BODY_MAX_BYTES = 64 * 1024
API_CONFIG = web.AppKey("api_config", ApiConfig)
"""The `api` section the app was built with: the server checks its exposure before listening."""


@web.middleware
async def bounded_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse an API body that nests deeper than `jsonlimits.MAX_DEPTH` before anything parses it.

    Parsing such a body raised RecursionError, which the handlers' ValueError paths miss: a 500 with a
    traceback, before authentication. The scan is linear and the body is at most `BODY_MAX_BYTES` (a
    larger one is a 413 here); aiohttp keeps the bytes read, so the handler parses the same body. Bodies
    that are merely malformed pass on, for the handler to refuse and audit as a bad request.
    """
    if request.body_exists and request.path.startswith("/api/"):
        try:
            jsonlimits.check_depth(await request.read())
        except ValueError as e:
            log.info("api.body_refused", method=request.method, path=request.path, error=str(e))
            return json_error(400, f"bad request: {e}")
    return await handler(request)


def build_app(
    ctx: ApiContext,
    *,
    sse_heartbeat_s: float = SSE_HEARTBEAT_S,
    sse_queue_max: int = SSE_QUEUE_MAX,
    sse_poll_s: float = SSE_POLL_S,
    chatops: ChatOps | None = None,
) -> web.Application:
    app = web.Application(middlewares=[errors, bounded_bodies], client_max_size=BODY_MAX_BYTES)
    app[API_CONFIG] = ctx.config.api
    handlers = Handlers(ctx, sse_heartbeat_s, sse_queue_max, sse_poll_s)
    for route in ROUTES:
        serve = wrap(ctx, route, getattr(handlers, route.operation))
        # no implicit HEAD: the routes served are exactly the ones the OpenAPI document lists
        if route.method == "GET":
            app.router.add_get(route.path, serve, name=route.operation, allow_head=False)
        else:
            app.router.add_route(route.method, route.path, serve, name=route.operation)
    register_chatops(app, chatops)  # `/chatops/*`: verified by the chat service's signature, not a token
    app.on_shutdown.append(handlers.stream.on_shutdown)
    return app


class ApiServer:
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def check_exposure(self) -> None:
        """Refuse to listen beyond loopback without tokens unless `api.allow_anonymous` says so, and say
        loudly when it does. `load_config` refuses such a file already; this also covers a config built
        in code and a listen address given apart from the config."""
        api = self.app.get(API_CONFIG)
        if api is None or not api.anonymous or is_loopback(self.host):
            return
        if not api.allow_anonymous:
            raise PermanentError(
                f"api: refusing to listen on {self.host}:{self.port} without api.tokens (anyone who can "
                "reach it would be admin); configure api.tokens, or api.allow_anonymous: true"
            )
        log.warning(
            "api.anonymous_admin",
            listen=f"{self.host}:{self.port}",
            reason="api.allow_anonymous: no api.tokens and a non-loopback address: anyone who can reach "
            "the API is anonymous admin and can drain every cluster",
        )

    async def start(self) -> None:
        self.check_exposure()
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
