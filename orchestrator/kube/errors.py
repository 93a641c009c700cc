"""Kubernetes client failures as our errors: the one place where kubernetes-asyncio's exceptions become
`core.errors` (`translate`), and the kube-specific subclasses callers catch.

- 409 → `ConflictError` (a stale resourceVersion: re-read and retry), a `TemporaryError`;
- 429, 5xx, 410, 408, connection errors and timeouts → `TemporaryError` (429 carries Retry-After);
- any other 4xx → `PermanentError` with the API server's Status message.

Messages name the cluster, the operation and the object, never a token or request header.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from orchestrator.core.errors import OrchestratorError, PermanentError, TemporaryError, retry_after_s


class ConflictError(TemporaryError):
    """409: someone changed the object since we read it (or it already exists): re-read, then retry."""

    def __init__(self, message: str, reason: str = "Conflict") -> None:
        super().__init__(message)
        self.reason = reason


class NotReadyError(TemporaryError):
    """A workload did not become ready in time; `last` is the last state seen (None if never read)."""

    def __init__(self, message: str, last: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.last = last


def status_message(e: ApiException) -> tuple[str, str]:
    """(message, reason) from the Status body; falls back to the HTTP reason phrase."""
    body = e.body.decode("utf-8", "replace") if isinstance(e.body, bytes) else e.body
    try:
        status = json.loads(body) if body else {}
    except ValueError:
        status = {}
    if isinstance(status, dict) and status.get("message"):
        return str(status["message"]), str(status.get("reason", ""))
    text = (body or "").strip().splitlines()
    return (text[0][:200] if text else str(e.reason or "")), str(e.reason or "")


def translate(e: BaseException, what: str) -> OrchestratorError:
    """The one place client exceptions become ours."""
    if isinstance(e, ApiException):
        message, reason = status_message(e)
        text = f"{what}: {e.status} {message}" if e.status else f"{what}: {message}"
        if e.status == 409:
            return ConflictError(text, reason or "Conflict")
        if e.status == 429:
            retry_after = str(e.headers.get("Retry-After", "")) if e.headers is not None else ""
            return TemporaryError(text, delay_s=retry_after_s(retry_after))
        if e.status >= 500 or e.status in (408, 410):
            return TemporaryError(text)
        return PermanentError(text)
    if isinstance(e, TimeoutError):
        return TemporaryError(f"{what}: timed out")
    if isinstance(e, aiohttp.ClientError | OSError):
        return TemporaryError(f"{what}: {type(e).__name__}: {e}")
    if isinstance(e, ValueError | TypeError):  # client-side model validation of a request or response
        return PermanentError(f"{what}: {e}")
    return PermanentError(f"{what}: {type(e).__name__}: {e}")


__all__ = ["ConflictError", "NotReadyError", "status_message", "translate"]
