"""The JSON bodies the HTTP API reads and writes: error replies, run summaries and the check of
a command's POST body.

Pure functions with no I/O, shared by the route handlers, the route wrapper and the error middleware.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from orchestrator.api.routes import COMMAND_ARGS, JSON


def dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=dumps({"ok": False, "error": message}),
        content_type=JSON,
        headers=headers,
    )


def opt_str(value: Any) -> str | None:
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
            "error": opt_str(entry.get("error")),
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
        "key": opt_str(record.get("key")),
        "event": opt_str(event.get("type")),
        "cluster": opt_str(event.get("cluster")),
        "actor": opt_str(record.get("actor")),
        "force": bool(record.get("force")),
        "created_at": opt_str(record.get("created_at")),
        "finished_at": opt_str(record.get("finished_at")),
        "error": opt_str(record.get("error")),
        "failed_step": opt_str(record.get("failed_step")),
        "steps": steps,
        "timeline": record.get("timeline") if isinstance(record.get("timeline"), dict) else None,
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
        elif kind == "number":
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        elif kind == "object":
            ok = isinstance(value, dict)
        else:
            ok = isinstance(value, str) and len(value) >= schema.get("minLength", 0)
            ok = ok and ("pattern" not in schema or re.match(schema["pattern"], value) is not None)
        if not ok:
            raise ValueError(f"{command}: argument {name!r} must match {dumps(schema)}")
    return command, args
