"""The HTTP API's route table, and the OpenAPI 3.1 document generated from it.

One table (`ROUTES`): `api.build_app` registers the app from it and `/api/v1/openapi.json` is generated
from it, so the document cannot drift from what is served. The command arguments' schemas
(`COMMAND_ARGS`) check POST bodies before they reach `Commands.handle` and become the request schema.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from orchestrator import __version__
from orchestrator.api.commands import REQUIRED_ROLE
from orchestrator.playbooks.journal import PAGE_DEFAULT, PAGE_MAX

RUNS_LIMIT_MAX = PAGE_MAX
RUN_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
INCIDENT_ID_PATTERN = r"^inc-[A-Za-z0-9_-]{1,63}-[0-9]{1,9}$"


JSON = "application/json"
Role = Literal["viewer", "operator", "admin"]


@dataclass(frozen=True)
class Reply:
    description: str
    schema: dict[str, Any] | None = None
    content_type: str = JSON
    also: tuple[tuple[str, dict[str, Any]], ...] = ()
    """Other (content type, schema) the same status may answer with, chosen by the query (the events
    route: the live stream, or a JSON page of its history with `since`)."""


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    operation: str
    """operationId, and the name of the `api.handlers.Handlers` method that serves it."""
    summary: str
    role: Role | None
    """The least role needed when tokens are configured; None: open to everyone."""
    replies: Mapping[int, Reply]
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None
    query_token: bool = False
    """Also accepts `?access_token=`: browsers' EventSource and page loads cannot send headers."""
    audited: bool = False
    """The handler authenticates itself, so that a refusal is written to `failover.audit` like any
    refused command (mutating routes); the others are refused by the route wrapper."""
    tag: str = "api"
    signed_by: str | None = None
    """Not a bearer token: the request is verified by this security scheme (chatops: the chat service's
    signature or token); `role` is then the least role a chat user needs (`chatops.*.users`)."""


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


_ERROR = Reply("The request was refused or failed; `error` says why (never echoing a token).", _ref("Error"))
_AUTH_REPLIES = {401: Reply("No valid token (the `WWW-Authenticate` header says how).", _ref("Error"))}
_UNAVAILABLE = {503: Reply("A dependency (NATS, the journal) is not available right now.", _ref("Error"))}

# Per command: its arguments (name -> (JSON schema, required)). The POST body is checked against these
# before it reaches `Commands.handle`, and the OpenAPI request schema is generated from them.
COMMAND_ARGS: dict[str, dict[str, tuple[dict[str, Any], bool]]] = {
    "status": {},
    "clusters": {},
    "runs": {
        "limit": ({"type": "integer", "minimum": 1, "maximum": RUNS_LIMIT_MAX}, False),
        "before": ({"type": "string", "pattern": RUN_ID_PATTERN}, False),
    },
    "run": {"id": ({"type": "string", "pattern": RUN_ID_PATTERN}, True)},
    "incidents": {"open": ({"type": "boolean", "description": "only the open incidents"}, False)},
    "failover": {
        "cluster": ({"type": "string", "minLength": 1}, True),
        "force": (
            {"type": "boolean", "description": "admin only: skip the approval, override guards"},
            False,
        ),
    },
    "failback": {"cluster": ({"type": "string", "minLength": 1}, True)},
    "pause": {
        "cluster": ({"type": "string", "minLength": 1, "description": "omit: all automation"}, False),
        "for": ({"type": "string", "description": "a duration like 30m or 1h; omit: until resumed"}, False),
    },
    "resume": {"cluster": ({"type": "string", "minLength": 1, "description": "omit: all automation"}, False)},
    "approve": {"run": ({"type": "string", "pattern": RUN_ID_PATTERN}, True)},
    "deny": {"run": ({"type": "string", "pattern": RUN_ID_PATTERN}, True)},
    "drill": {
        "phase": ({"type": "string", "pattern": "^(started|finished)$"}, True),
        "cluster": ({"type": "string", "minLength": 1}, True),
        "fault": ({"type": "string", "pattern": "^(scale-to-zero|deny-ingress)$"}, True),
        "outcome": ({"type": "string"}, False),
        "recovery_s": ({"type": "number"}, False),
        "timeline": ({"type": "object"}, False),
    },
}
assert set(COMMAND_ARGS) == set(REQUIRED_ROLE), "every command needs its argument schema"


def _command_schema(command: str) -> dict[str, Any]:
    args = COMMAND_ARGS[command]
    args_schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: schema for name, (schema, _required) in args.items()},
        "additionalProperties": False,
    }
    required = [name for name, (_schema, req) in args.items() if req]
    if required:
        args_schema["required"] = required
    return {
        "type": "object",
        "title": command,
        "description": f"needs the {REQUIRED_ROLE[command]} role"
        + (" (admin with force)" if command == "failover" else ""),
        "properties": {"command": {"const": command}, "args": args_schema},
        "required": ["command", *(["args"] if required else [])],
        "additionalProperties": False,
    }


_NULLABLE_STRING = {"type": ["string", "null"]}
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "properties": {"ok": {"const": False}, "error": {"type": "string"}},
        "required": ["ok", "error"],
    },
    "Health": {"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]},
    "Readiness": {
        "type": "object",
        "properties": {"ready": {"type": "boolean"}, "checks": {"type": "object"}},
        "required": ["ready", "checks"],
    },
    "ClusterState": {"enum": ["unknown", "healthy", "degraded", "failed"]},
    "Cluster": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "state": _ref("ClusterState"),
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "weight": {"type": "integer", "description": "nominal share from the config"},
            "weights": {
                "type": "object",
                "description": "balancer -> current native weight, for the balancers this cluster is in",
                "additionalProperties": {"type": "integer"},
            },
        },
        "required": ["name", "state", "labels", "weight", "weights"],
    },
    "Clusters": {
        "type": "object",
        "properties": {
            "clusters": {"type": "array", "items": _ref("Cluster")},
            "unreadable_balancers": {
                "type": "array",
                "items": {"type": "string"},
                "description": "balancers whose current weights could not be read just now",
            },
        },
        "required": ["clusters", "unreadable_balancers"],
    },
    "Step": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "action": {"type": "string"},
            "status": {"type": "string", "description": "pending, running, succeeded, skipped, failed, ..."},
            "attempts": {"type": ["integer", "null"]},
            "error": _NULLABLE_STRING,
            "change": {**_NULLABLE_STRING, "description": "what the step changed, e.g. a weight 100 -> 0"},
            "summary": {**_NULLABLE_STRING, "description": "for approval steps: what is asked"},
        },
        "required": ["id", "action", "status"],
    },
    "RunSummary": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "playbook": {"type": "string"},
            "status": {"type": "string"},
            "key": _NULLABLE_STRING,
            "event": _NULLABLE_STRING,
            "cluster": _NULLABLE_STRING,
            "actor": _NULLABLE_STRING,
            "force": {"type": "boolean"},
            "created_at": _NULLABLE_STRING,
            "finished_at": _NULLABLE_STRING,
            "error": _NULLABLE_STRING,
            "failed_step": _NULLABLE_STRING,
            "steps": {"type": "array", "items": _ref("Step")},
            "timeline": {
                "type": ["object", "null"],
                "description": "recovery marks (DESIGN §15): first_failure_at, quorum_at, event_at, ...",
            },
        },
        "required": ["id", "playbook", "status", "steps"],
    },
    "Runs": {
        "type": "object",
        "properties": {
            "runs": {"type": "array", "items": _ref("RunSummary")},
            "next": {
                "type": ["string", "null"],
                "description": "the `before` of the next (older) page; null on the last page",
            },
        },
        "required": ["runs", "next"],
    },
    "Run": {
        "type": "object",
        "description": "The run journal (DESIGN §5 `failover-runs`): plan, step states, before-values",
        "properties": {
            "id": {"type": "string"},
            "playbook": {"type": "string"},
            "status": {"type": "string"},
            "plan": {"type": "object"},
            "steps": {"type": "object"},
        },
        "required": ["id", "playbook", "status"],
    },
    "Incident": {
        "type": "object",
        "description": "One cluster's failure to its failback (DESIGN §13); `id` is the dedup key everywhere",
        "properties": {
            "id": {"type": "string", "description": "inc-<cluster>-<n>"},
            "cluster": {"type": "string"},
            "state": {"enum": ["opened", "drained", "scaled", "waiting_approval", "step_failed", "resolved"]},
            "opened_at": _NULLABLE_STRING,
            "updated_at": _NULLABLE_STRING,
            "resolved_at": _NULLABLE_STRING,
            "runs": {"type": "array", "items": {"type": "string"}},
            "summary": _NULLABLE_STRING,
            "notifiers": {
                "type": "array",
                "items": {"type": "string"},
                "description": "the notifiers told about it",
            },
        },
        "required": ["id", "cluster", "state", "runs"],
    },
    "Incidents": {
        "type": "object",
        "properties": {"incidents": {"type": "array", "items": _ref("Incident")}},
        "required": ["incidents"],
    },
    "Pause": {
        "type": "object",
        "properties": {
            "scope": {"type": "string", "description": "`all` or a cluster name"},
            "by": _NULLABLE_STRING,
            "since": _NULLABLE_STRING,
            "until": _NULLABLE_STRING,
        },
        "required": ["scope"],
    },
    "Status": {
        "type": "object",
        "properties": {
            "ready": {"type": "boolean"},
            "clusters": {"type": "object", "additionalProperties": _ref("ClusterState")},
            "frozen": {"type": "boolean", "description": "the observer guard holds automation"},
            "suspect_vantages": {"type": "array", "items": {"type": "string"}},
            "active_runs": {"type": "object", "additionalProperties": {"type": "string"}},
            "waiting_approval": {"type": "array", "items": {"type": "string"}},
            "playbooks": {"type": "object", "additionalProperties": {"type": "string"}},
            "paused": {"type": "array", "items": _ref("Pause")},
            "leader": {
                "type": "object",
                "description": "who leads: the lease's holder and term, and whether this replica answered",
                "properties": {
                    "present": {"type": "boolean"},
                    "holder": _NULLABLE_STRING,
                    "term": {"type": ["integer", "null"]},
                    "this_replica": {"type": "boolean"},
                },
                "required": ["present"],
            },
        },
        "required": ["ready", "clusters", "frozen", "paused", "leader"],
    },
    "Command": {"oneOf": [_command_schema(c) for c in COMMAND_ARGS]},
    "CommandResult": {
        "type": "object",
        "properties": {"ok": {"const": True}, "result": {}},
        "required": ["ok", "result"],
    },
}
_READINESS_PROBLEM = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["plan", "balancer", "guard", "workload", "capacity", "permission", "notifier"]},
        "target": {"type": "string"},
        "message": {"type": "string"},
    },
    "required": ["kind", "target", "message"],
}
SCHEMAS["ReadinessReport"] = {
    "type": "object",
    "description": "The leader's last readiness pass (DESIGN §17): would each failover playbook work now, "
    "for each cluster's loss; `checked_at` null before the first pass",
    "properties": {
        "enabled": {"type": "boolean"},
        "interval_s": {"type": "number"},
        "checked_at": _NULLABLE_STRING,
        "duration_s": {"type": ["number", "null"]},
        "by": {**_NULLABLE_STRING, "description": "the leader that ran the pass"},
        "ready": {"type": ["boolean", "null"]},
        "not_ready": {"type": "integer"},
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "playbook": {"type": "string"},
                    "cluster": {"type": "string", "description": "the cluster whose loss was dry-run"},
                    "event": {"type": "string"},
                    "ready": {"type": "boolean"},
                    "passed": {"type": "integer"},
                    "problems": {"type": "array", "items": _READINESS_PROBLEM},
                    "skipped": {"type": "array", "items": _READINESS_PROBLEM},
                },
                "required": ["playbook", "cluster", "ready", "problems"],
            },
        },
    },
    "required": ["enabled", "checked_at", "ready", "results"],
}

EVENTS_LIMIT_MAX = 500
SCHEMAS["StoredEvent"] = {
    "type": "object",
    "properties": {
        "seq": {"type": "integer", "description": "its sequence in the events stream"},
        "kind": {"enum": ["cluster", "system", "run"]},
        "subject": {"type": "string"},
        "stored_at": {"type": "string", "description": "when JetStream stored it (RFC 3339)"},
        "event": {"type": "object", "description": "the body as published (cluster, system or run event)"},
    },
    "required": ["seq", "kind", "subject", "stored_at", "event"],
}
SCHEMAS["EventsPage"] = {
    "type": "object",
    "properties": {
        "events": {"type": "array", "items": _ref("StoredEvent")},
        "next": {"type": "integer", "description": "the `since` of the following page"},
        "more": {"type": "boolean", "description": "more events matched after this page when it was read"},
        "expired": {
            "type": "boolean",
            "description": "events after the `since` sequence were already dropped by the stream's retention",
        },
        "first_seq": {"type": "integer"},
        "last_seq": {"type": "integer"},
    },
    "required": ["events", "next", "more", "expired", "first_seq", "last_seq"],
}
EVENTS_PARAMETERS: tuple[dict[str, Any], ...] = (
    {
        "name": "since",
        "in": "query",
        "required": False,
        "description": "a stream sequence (events after it; 0: from the oldest kept) or an RFC 3339 time "
        "with its zone (events stored at or after it); omit for the live stream",
        "schema": {"type": "string", "pattern": r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ].+)$"},
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "with `since`: how many events at most",
        "schema": {"type": "integer", "minimum": 1, "maximum": EVENTS_LIMIT_MAX, "default": 100},
    },
    {
        "name": "kind",
        "in": "query",
        "required": False,
        "description": "with `since`: only these kinds (comma-separated: cluster, system, run)",
        "schema": {"type": "string", "pattern": r"^(cluster|system|run)(,(cluster|system|run)){0,2}$"},
    },
)

ROUTES: tuple[Route, ...] = (
    Route(
        "GET", "/healthz", "healthz", "The process is alive", None,
        {200: Reply("Alive.", _ref("Health"))}, tag="health",
    ),
    Route(
        "GET", "/readyz", "readyz", "Connected to NATS and consuming health", None,
        {200: Reply("Ready.", _ref("Readiness")), 503: Reply("Not ready.", _ref("Readiness"))}, tag="health",
    ),
    Route(
        "GET", "/metrics", "metrics", "Prometheus metrics (`failover_` prefix)", None,
        {200: Reply("Prometheus text format.", {"type": "string"}, "text/plain")}, tag="health",
    ),
    Route(
        "GET", "/", "dashboard", "The dashboard: clusters, weights, runs and approvals, live", "viewer",
        {
            200: Reply("HTML page.", {"type": "string"}, "text/html"),
            401: Reply("No valid token: open the page with ?access_token=.", {"type": "string"}, "text/html"),
            503: Reply("A dependency is not available right now.", {"type": "string"}, "text/html"),
        },
        query_token=True, tag="dashboard",
    ),
    Route(
        "GET", "/runs/{id}", "run_page",
        "One run's page: status, steps, recovery timeline (where notification links lead)", "viewer",
        {
            200: Reply("HTML page.", {"type": "string"}, "text/html"),
            400: _ERROR,
            404: Reply("No such run.", _ref("Error")),
            **_AUTH_REPLIES,
            **_UNAVAILABLE,
        },
        parameters=(
            {
                "name": "id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": RUN_ID_PATTERN},
            },
        ),
        query_token=True, tag="dashboard",
    ),
    Route(
        "GET", "/incidents/{id}", "incident_page",
        "One incident's page: state, times, its runs (where notification links lead)", "viewer",
        {
            200: Reply("HTML page.", {"type": "string"}, "text/html"),
            400: _ERROR,
            404: Reply("No such incident.", _ref("Error")),
            **_AUTH_REPLIES,
            **_UNAVAILABLE,
        },
        parameters=(
            {
                "name": "id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": INCIDENT_ID_PATTERN},
            },
        ),
        query_token=True, tag="dashboard",
    ),
    Route(
        "GET", "/api/v1/status", "status", "Daemon status: states, freeze, pauses, active runs, approvals",
        "viewer", {200: Reply("Status.", _ref("Status")), **_AUTH_REPLIES, **_UNAVAILABLE},
    ),
    Route(
        "GET", "/api/v1/clusters", "clusters", "Clusters with state, labels, nominal and current weights",
        "viewer", {200: Reply("Clusters.", _ref("Clusters")), **_AUTH_REPLIES, **_UNAVAILABLE},
    ),
    Route(
        "GET", "/api/v1/runs", "runs", "Recent runs, newest first, with their steps", "viewer",
        {200: Reply("Runs.", _ref("Runs")), 400: _ERROR, **_AUTH_REPLIES, **_UNAVAILABLE},
        parameters=(
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": "how many runs (newest first)",
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": RUNS_LIMIT_MAX,
                    "default": PAGE_DEFAULT,
                },
            },
            {
                "name": "before",
                "in": "query",
                "required": False,
                "description": "a run id (the previous page's `next`): only runs that started before it",
                "schema": {"type": "string", "pattern": RUN_ID_PATTERN},
            },
        ),
    ),
    Route(
        "GET", "/api/v1/runs/{id}", "run", "One run's whole journal record", "viewer",
        {
            200: Reply("The journal record.", _ref("Run")),
            400: _ERROR,
            404: Reply("No such run.", _ref("Error")),
            **_AUTH_REPLIES,
            **_UNAVAILABLE,
        },
        parameters=(
            {
                "name": "id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": RUN_ID_PATTERN},
            },
        ),
    ),
    Route(
        "GET", "/api/v1/incidents", "incidents", "Incidents, newest first (one per cluster failure)",
        "viewer", {200: Reply("Incidents.", _ref("Incidents")), 400: _ERROR, **_AUTH_REPLIES, **_UNAVAILABLE},
        parameters=(
            {
                "name": "open",
                "in": "query",
                "required": False,
                "description": "true: only the open incidents",
                "schema": {"type": "boolean", "default": False},
            },
        ),
    ),
    Route(
        "POST", "/api/v1/commands", "command", "Run a command (the same set as `failover ctl`); audited",
        "viewer",
        {
            200: Reply("Done.", _ref("CommandResult")),
            400: _ERROR,
            401: _AUTH_REPLIES[401],
            403: Reply("The token's role is not enough for this command.", _ref("Error")),
            404: Reply("Unknown cluster, run or playbook.", _ref("Error")),
            409: Reply("Conflict (e.g. the run is not waiting for an approval).", _ref("Error")),
            413: Reply("Body too large.", _ref("Error")),
            500: Reply("The command failed.", _ref("Error")),
            **_UNAVAILABLE,
        },
        body=_ref("Command"),
        audited=True,
    ),
    Route(
        "GET", "/api/v1/events", "events",
        "Without `since`: server-sent events, `failover.events.>` and `failover.runs.>` live (`event:` "
        "cluster, system, run; `dropped` when a slow client lost events). With `since`: one JSON page of "
        "the history JetStream kept, oldest first; pass `next` as the following `since`",
        "viewer",
        {
            200: Reply(
                "An endless `text/event-stream`; with `since`, one page of history (JSON).",
                {"type": "string"},
                "text/event-stream",
                also=((JSON, _ref("EventsPage")),),
            ),
            400: _ERROR,
            **_AUTH_REPLIES,
            **_UNAVAILABLE,
        },
        parameters=EVENTS_PARAMETERS,
        query_token=True,
    ),
    Route(
        "GET", "/api/v1/readiness", "readiness_report",
        "Readiness (DESIGN §17): the last pass's result per failover playbook and cluster", "viewer",
        {200: Reply("The report.", _ref("ReadinessReport")), **_AUTH_REPLIES, **_UNAVAILABLE},
    ),
    Route(
        "GET", "/api/v1/openapi.json", "openapi", "This document", "viewer",
        {200: Reply("OpenAPI 3.1.", {"type": "object"}), **_AUTH_REPLIES},
    ),
)  # fmt: skip


_FORM = "application/x-www-form-urlencoded"
_CHAT_REPLIES = {
    400: Reply("Malformed request (not the platform's format).", _ref("Error")),
    401: Reply("Not verified (signature, timestamp window or token); audited.", _ref("Error")),
    404: Reply("This platform is not configured under `chatops:`.", _ref("Error")),
}
_MM_SOURCE = {403: Reply("Not from `chatops.mattermost.allowed_sources`; audited.", _ref("Error"))}
CHATOPS_ROUTES: tuple[Route, ...] = (
    Route(
        "POST", "/chatops/slack/commands", "chatops_slack_commands",
        "Slack slash command `/failover ...` (form; v0 signature); the `failover ctl` grammar", "viewer",
        {200: Reply("A Slack message (Block Kit), or an acknowledgement with the answer on response_url.",
                    {"type": "object"}), **_CHAT_REPLIES},
        tag="chatops", signed_by="slackSignature",
    ),
    Route(
        "POST", "/chatops/slack/interactions", "chatops_slack_interactions",
        "Slack `block_actions` (form field `payload`; v0 signature): Approve / Deny buttons", "viewer",
        {200: Reply("Accepted; the answer goes to the payload's response_url.", None), **_CHAT_REPLIES},
        tag="chatops", signed_by="slackSignature",
    ),
    Route(
        "POST", "/chatops/mattermost/commands", "chatops_mattermost_commands",
        "Mattermost slash command `/failover ...` (form; the command's token)", "viewer",
        {200: Reply("A Mattermost command response.", {"type": "object"}), **_CHAT_REPLIES, **_MM_SOURCE},
        tag="chatops", signed_by="mattermostToken",
    ),
    Route(
        "POST", "/chatops/mattermost/actions", "chatops_mattermost_actions",
        "Mattermost interactive-message button callback (JSON; our signed `context`)", "viewer",
        {200: Reply("A Mattermost action response (`update`, `ephemeral_text`).", {"type": "object"}),
         **_CHAT_REPLIES, **_MM_SOURCE},
        tag="chatops", signed_by="mattermostContext",
    ),
)  # fmt: skip
"""Served by `api.chatops.register_routes` (not the bearer-token wrapper): chat services sign instead."""
_CHAT_BODIES = {
    "chatops_slack_commands": _FORM,
    "chatops_slack_interactions": _FORM,
    "chatops_mattermost_commands": _FORM,
    "chatops_mattermost_actions": JSON,
}


def openapi_document(routes: Iterable[Route] = (*ROUTES, *CHATOPS_ROUTES)) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "operationId": route.operation,
            "summary": route.summary,
            "tags": [route.tag],
            "responses": {
                str(status): {
                    "description": reply.description,
                    **(
                        {
                            "content": {
                                reply.content_type: {"schema": reply.schema},
                                **{kind: {"schema": schema} for kind, schema in reply.also},
                            }
                        }
                        if reply.schema
                        else {}
                    ),
                }
                for status, reply in sorted(route.replies.items())
            },
        }
        if route.signed_by is not None:
            operation["security"] = [{route.signed_by: []}]
            operation["x-required-role"] = route.role
            operation["requestBody"] = {
                "required": True,
                "content": {_CHAT_BODIES.get(route.operation, _FORM): {"schema": {"type": "object"}}},
            }
        elif route.role is None:
            operation["security"] = []
        else:
            operation["security"] = [{"bearer": []}, *([{"accessToken": []}] if route.query_token else [])]
            operation["x-required-role"] = route.role
        if route.parameters:
            operation["parameters"] = list(route.parameters)
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {JSON: {"schema": route.body}}}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "failover",
            "version": __version__,
            "description": "Event-driven failover orchestrator. With `api.tokens` configured every route "
            "but /healthz, /readyz and /metrics needs a bearer token of at least the viewer role.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an `api.tokens` token"},
                "accessToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "access_token",
                    "description": "the same token, for browsers (EventSource, page loads)",
                },
                "slackSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Slack-Signature",
                    "description": "Slack's v0 signature with X-Slack-Request-Timestamp (5-minute window)",
                },
                "mattermostToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`Token <slash command token>` (or the form field `token`)",
                },
                "mattermostContext": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Failover-Context",
                    "description": "no header: the button's `context` (JSON body) carries our HMAC signature",
                },
            },
        },
    }
