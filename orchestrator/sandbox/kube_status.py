"""Kubernetes `Status` errors for the sandbox API server, shaped like kube-apiserver's.

Clients (kubernetes-asyncio, kubectl, our `orchestrator.kube.client`) classify failures by the HTTP code and
the Status `reason`, and people read the `message`; both follow apimachinery's `errors` package here so
code written against the sandbox meets the same strings on a real cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MODIFIED = "the object has been modified; please apply your changes to the latest version and try again"


@dataclass(frozen=True)
class Cause:
    """One `details.causes[]` entry: a field path, a reason such as FieldValueInvalid, and a message."""

    field: str
    reason: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def go_value(value: Any) -> str:
    """Render a value roughly the way Go's `%#v` does in field errors (strings quoted, maps typed)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        if all(isinstance(v, str) for v in value.values()):
            inner = ", ".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in sorted(value.items()))
            return f"map[string]string{{{inner}}}"
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return json.dumps(value, separators=(",", ":"))


def required(field: str, detail: str = "") -> Cause:
    return Cause(field, "FieldValueRequired", f"Required value: {detail}" if detail else "Required value")


def invalid_value(field: str, value: Any, detail: str) -> Cause:
    return Cause(field, "FieldValueInvalid", f"Invalid value: {go_value(value)}: {detail}")


def too_many(field: str, count: int, limit: int) -> Cause:
    return Cause(field, "FieldValueTooMany", f"Too many: {count}: must have at most {limit} items")


def unsupported(field: str, value: Any, valid: list[str]) -> Cause:
    supported = ", ".join(json.dumps(v) for v in valid)
    return Cause(
        field,
        "FieldValueNotSupported",
        f"Unsupported value: {go_value(value)}: supported values: {supported}",
    )


class ApiError(Exception):
    """An error the HTTP layer turns into a `Status` body with this code."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
        }
        if self.reason:
            body["reason"] = self.reason
        if self.details:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(group: str, kind: str, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    return details


def not_found(qualified_resource: str, group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{qualified_resource} "{name}" not found', _details(group, plural, name)
    )


def already_exists(qualified_resource: str, group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{qualified_resource} "{name}" already exists', _details(group, plural, name)
    )


def conflict(qualified_resource: str, group: str, plural: str, name: str, detail: str = MODIFIED) -> ApiError:
    message = f'Operation cannot be fulfilled on {qualified_resource} "{name}": {detail}'
    return ApiError(409, "Conflict", message, _details(group, plural, name))


def invalid(qualified_kind: str, group: str, kind: str, name: str, causes: list[Cause]) -> ApiError:
    """422 like `errors.NewInvalid`: one cause prints bare, several print as `[a, b]`."""
    listed = str(causes[0]) if len(causes) == 1 else "[" + ", ".join(str(c) for c in causes) + "]"
    details = _details(group, kind, name)
    details["causes"] = [c.as_dict() for c in causes]
    return ApiError(422, "Invalid", f'{qualified_kind} "{name}" is invalid: {listed}', details)


def webhook_denied(webhook: str, message: str) -> ApiError:
    """A validating admission webhook's refusal: the API server answers 400 and sets no reason."""
    return ApiError(400, "", f'admission webhook "{webhook}" denied the request: {message}')


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unsupported_media_type(message: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", message)


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def internal_error(message: str = "Internal error occurred: injected fault", code: int = 500) -> ApiError:
    return ApiError(code, "InternalError", message)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def patch_invalid(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)
