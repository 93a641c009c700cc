"""Effects on other systems: `http` and `nats.publish`. Neither is idempotent: if the daemon dies while
one is in flight, the run asks a human instead of sending it again. An `http` result keeps the status
only, unless the step asks for the body (`capture_body`); headers and URLs are redacted where they are
written down (`core.redact`)."""

from __future__ import annotations

import json
from typing import Any, Literal

import aiohttp
from pydantic import Field, field_validator

from orchestrator.core.config_fields import HttpUrlStr, Seconds
from orchestrator.core.errors import PermanentError, TemporaryError
from orchestrator.playbooks.actions.base import Action, Params, StepContext, register


class HttpParams(Params):
    url: HttpUrlStr
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = {}
    body: Any = None
    """JSON-encoded when not a string."""
    expect_status: list[int] = Field(default_factory=lambda: list(range(200, 300)))
    timeout_s: Seconds = Field(default=10.0, alias="timeout", gt=0)
    capture_body: bool = False
    """Keep (up to 2,000 characters of) the response body in the result, hence in the journal and run
    events. Off by default: a body may echo a credential."""


@register
class Http(Action):
    name = "http"
    params = HttpParams
    idempotent = False

    async def run(self, ctx: StepContext, params: HttpParams) -> dict[str, Any]:
        session = ctx.services.http
        if session is None:
            raise PermanentError("no HTTP client in this process")
        data = params.body if isinstance(params.body, str | None) else json.dumps(params.body)
        headers = dict(params.headers)
        if not isinstance(params.body, str | None):
            headers.setdefault("Content-Type", "application/json")
        ctx.fence()  # after the journal save that preceded this attempt: a deposed leader sends nothing
        try:
            async with session.request(
                params.method,
                params.url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=params.timeout_s),
            ) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
        except TimeoutError as e:
            raise TemporaryError(
                f"{params.method} {params.url}: no answer within {params.timeout_s:g}s"
            ) from e
        except aiohttp.ClientError as e:
            raise TemporaryError(f"{params.method} {params.url}: {type(e).__name__}") from e
        if status not in params.expect_status:
            message = f"{params.method} {params.url}: HTTP {status}"
            if status >= 500 or status == 429:
                raise TemporaryError(message)
            raise PermanentError(message)
        return {"status": status, "body": text[:2000]} if params.capture_body else {"status": status}

    async def describe(self, ctx: StepContext, params: HttpParams) -> list[str]:
        return [f"{params.method} {params.url}"]


class PublishParams(Params):
    subject: str
    payload: Any = None

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        if value.startswith("failover.") or not value or any(c in value for c in " *>"):
            raise ValueError("a concrete subject outside failover.* (our own subjects cannot be spoofed)")
        return value


@register
class NatsPublish(Action):
    name = "nats.publish"
    params = PublishParams
    idempotent = False

    async def run(self, ctx: StepContext, params: PublishParams) -> dict[str, Any]:
        if ctx.services.publish is None:
            raise PermanentError("no NATS connection in this process")
        payload = params.payload
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        ctx.fence()
        await ctx.services.publish(params.subject, data)
        return {"subject": params.subject, "bytes": len(data)}

    async def describe(self, ctx: StepContext, params: PublishParams) -> list[str]:
        return [f"publish to {params.subject}"]
