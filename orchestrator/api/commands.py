"""Commands: the same set over NATS request/reply (`failover.cmd`), the HTTP API and `failover ctl`.

Every command is authorized by token and role (viewer < operator < admin) and written to
`failover.audit` with who, what, through which channel and the result, never the token. With no
`api.tokens` configured, commands run as `anonymous` with the admin role: that is for a laptop, and the
daemon says so at start.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from orchestrator.bus.client import Bus
from orchestrator.bus.state import PAUSE_ALL, PAUSE_MAX_S, StateStore, pause_key
from orchestrator.core import jsonlimits, redact, subjects
from orchestrator.core.config import Config
from orchestrator.core.durations import parse_duration
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.models import AuditRecord, SystemEvent, rfc3339
from orchestrator.playbooks.approvals import ROLES, ApprovalBook
from orchestrator.playbooks.incidents import IncidentBook, incident_view
from orchestrator.playbooks.journal import PAGE_DEFAULT, PAGE_MAX, UnknownRun
from orchestrator.playbooks.runner import Runner

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Caller:
    actor: str
    role: str
    via: str


def _forwarded_caller(body: dict[str, Any]) -> Caller:
    """The caller a follower authenticated: checked, since an answer's audit record names it."""
    actor, role, via = body.get("actor"), body.get("role"), body.get("via") or "follower"
    if not isinstance(actor, str) or not 0 < len(actor) <= 200:
        raise ValueError("actor must be a string of 1 to 200 characters")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not isinstance(via, str):
        raise ValueError("via must be a string")
    return Caller(actor, role, via[:40])


class CommandError(OrchestratorError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[Caller, dict[str, Any]], Awaitable[Any]]
RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REQUIRED_ROLE = {
    "status": "viewer",
    "clusters": "viewer",
    "runs": "viewer",
    "run": "viewer",
    "incidents": "viewer",
    "failover": "operator",
    "failback": "operator",
    "pause": "operator",
    "resume": "operator",
    "approve": "operator",
    "deny": "operator",
    "drill": "operator",
}


class Commands:
    def __init__(
        self,
        config: Config,
        bus: Bus,
        runner: Runner,
        store: StateStore,
        approvals: ApprovalBook,
        resume_detector: Callable[[str], Awaitable[None]],
        status: Callable[[], dict[str, Any]],
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self.config = config
        redact.register_config(config)  # before any run or answer: its secrets are redacted everywhere
        self.is_leader = is_leader
        self.bus = bus
        self.runner = runner
        self.store = store
        self.approvals = approvals
        self.resume_detector = resume_detector
        self.status = status
        self.on_drill: Callable[[str, bool], None] | None = None
        """Told of each `drill` announcement (cluster, started?): a drill's failover is practice, which
        the daemon leaves out of its detection-latency histogram."""
        self._subscription: Any = None
        self.handlers: dict[str, Handler] = {
            "status": self._status,
            "clusters": self._clusters,
            "runs": self._runs,
            "run": self._run,
            "incidents": self._incidents,
            "failover": self._failover,
            "failback": self._failback,
            "pause": self._pause,
            "resume": self._resume,
            "approve": self._approve,
            "deny": self._deny,
            "drill": self._drill,
        }

    def authenticate(self, token: str | None, via: str) -> Caller:
        tokens = self.config.api.tokens
        if not tokens:
            return Caller("anonymous", "admin", via)
        if token:
            for i, entry in enumerate(tokens):
                if hmac.compare_digest(entry.token.get_secret_value().encode(), token.encode()):
                    return Caller(entry.name or f"token-{i + 1}", entry.role, via)
        raise CommandError("a valid token is required", 401)

    async def handle(self, command: str, args: dict[str, Any], token: str | None, via: str) -> dict[str, Any]:
        """Authenticate, then authorize, run and audit (`handle_as`). Never raises: the answer says ok or
        error. Every replica authenticates its own callers (it has the same `api.tokens`), so a token
        never leaves the process that received it."""
        try:
            caller = self.authenticate(token, via)
        except CommandError as e:
            answer: dict[str, Any] = {"ok": False, "error": str(e), "status": e.status}
            await self._audit(None, command, args, answer, via)
            return answer
        return await self.handle_as(caller, command, args, forward=via != "nats")

    async def handle_as(
        self, caller: Caller, command: str, args: dict[str, Any], forward: bool = True
    ) -> dict[str, Any]:
        """Authorize an authenticated caller, run, audit.

        On a follower, anything but a read is forwarded to the leader as `{actor, role}` over
        `failover.internal.cmd`, which only daemon credentials may use (approvals wait in the leader's
        process and only its runner acts); the leader checks the role again and audits it."""
        if forward and not self.is_leader() and REQUIRED_ROLE.get(command) != "viewer":
            return await self._forward(caller, command, args)
        try:
            handler = self.handlers.get(command)
            if handler is None:
                raise CommandError(f"unknown command {command!r} (known: {', '.join(sorted(self.handlers))})")
            needed = "admin" if args.get("force") else REQUIRED_ROLE[command]
            if ROLES.index(caller.role) < ROLES.index(needed):
                raise CommandError(
                    f"{command} needs the {needed} role; {caller.actor} has {caller.role}", 403
                )
            result = await handler(caller, args)
            answer: dict[str, Any] = {"ok": True, "result": result}
        except CommandError as e:
            answer = {"ok": False, "error": str(e), "status": e.status}
        except OrchestratorError as e:
            answer = {"ok": False, "error": str(e), "status": 500}
        except Exception as e:  # a bug must still answer, and be audited like any failed command
            trace = "".join(traceback.format_exception(e))
            log.error("commands.failed", command=command, error=repr(e), trace=trace)
            answer = {"ok": False, "error": "internal error (logged)", "status": 500}
        if REQUIRED_ROLE.get(command) != "viewer" or not answer["ok"]:
            await self._audit(caller, command, args, answer, caller.via)
        return answer

    async def _forward(self, caller: Caller, command: str, args: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(
            {
                "command": command,
                "args": args,
                "actor": caller.actor,
                "role": caller.role,
                "via": f"{caller.via} via follower",
            }
        )
        try:
            reply = await self.bus.request(subjects.INTERNAL_COMMANDS, body.encode(), timeout_s=10)
        except OrchestratorError:
            return {"ok": False, "error": "no leader answered; try again in a few seconds", "status": 503}
        try:  # whoever answered may not be our leader: anything but a command answer is an error
            answer: Any = jsonlimits.loads(reply)
        except ValueError:
            answer = None
        status = answer.get("status", 500) if isinstance(answer, dict) else None
        if not (
            isinstance(answer, dict)
            and isinstance(answer.get("ok"), bool)
            and (answer["ok"] or (isinstance(status, int) and 400 <= status <= 599))
        ):
            log.warning("commands.bad_forward_answer", command=command)
            return {"ok": False, "error": "the reply is not a command answer; try again", "status": 503}
        return answer

    async def _audit(
        self, caller: Caller | None, command: str, args: dict[str, Any], answer: dict[str, Any], via: str
    ) -> None:
        record = AuditRecord(
            actor=caller.actor if caller else "unauthenticated",
            via=via,
            command=command,
            args={k: v for k, v in args.items() if k != "token"},
            result="ok" if answer["ok"] else f"error: {answer['error']}",
            runs=_started(answer),
        )
        log.info("audit", actor=record.actor, via=via, command=command, result=record.result)
        try:
            await self.bus.publish_durable(subjects.AUDIT, record.to_json())
        except OrchestratorError as e:
            log.error("audit.publish_failed", error=str(e))

    async def serve_nats(self) -> None:
        """Answer `failover.cmd` (`{command, args, token}`: external callers, authenticated here) and
        `failover.internal.cmd` (`{command, args, actor, role, via}`: a follower's, already authenticated;
        only daemon credentials may publish there) with `{ok, result | error}`."""

        async def on_request(msg: Any, internal: bool) -> None:
            try:
                if len(msg.data) > jsonlimits.MAX_BYTES:
                    raise ValueError(f"larger than {jsonlimits.MAX_BYTES // 1024} KiB")
                body = jsonlimits.loads(msg.data)  # bad UTF-8, bad JSON, too deep: ValueError
                if not isinstance(body, dict) or not isinstance(body.get("command"), str):
                    raise ValueError("expected {command, args, token}")
                args = body.get("args") or {}
                if not isinstance(args, dict):
                    raise ValueError("args must be an object")
                if internal:
                    answer = await self.handle_as(
                        _forwarded_caller(body), body["command"], args, forward=False
                    )
                else:
                    token = body.get("token")
                    if token is not None and not isinstance(token, str):
                        raise ValueError("token must be a string")
                    answer = await self.handle(body["command"], args, token, "nats")
            except ValueError as e:
                answer = {"ok": False, "error": f"bad request: {e}", "status": 400}
            except Exception as e:  # an exception here would leave the asker without an answer
                log.error("commands.failed", error=repr(e), trace="".join(traceback.format_exception(e)))
                answer = {"ok": False, "error": "internal error (logged)", "status": 500}
            # the reply subject is the asker's choice: answer only into an inbox, never into KV or events
            if msg.reply and str(msg.reply).startswith("_INBOX."):
                try:
                    await self.bus.publish(msg.reply, json.dumps(answer, default=str).encode())
                except OrchestratorError as e:  # the asker times out and may ask again
                    log.warning("commands.reply_failed", error=str(e))
            elif msg.reply:
                log.warning("commands.reply_refused", reason="reply subject is not an _INBOX subject")

        async def external(msg: Any) -> None:
            await on_request(msg, internal=False)

        async def forwarded(msg: Any) -> None:
            await on_request(msg, internal=True)

        if self._subscription is None:  # only the leader answers: approvals wait in its process
            self._subscription = [
                await self.bus.subscribe(subjects.COMMANDS, external),
                await self.bus.subscribe(subjects.INTERNAL_COMMANDS, forwarded),
            ]

    async def stop_serving(self) -> None:
        subscriptions, self._subscription = self._subscription or [], None
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    # handlers ------------------------------------------------------------------------------------

    def _cluster_arg(self, args: dict[str, Any]) -> str:
        cluster = args.get("cluster")
        if not isinstance(cluster, str) or cluster not in {c.name for c in self.config.clusters}:
            raise CommandError(f"unknown cluster {cluster!r}", 404)
        return cluster

    async def _status(self, caller: Caller, args: dict[str, Any]) -> Any:
        return self.status()

    async def _clusters(self, caller: Caller, args: dict[str, Any]) -> Any:
        return self.runner.clusters()  # the view playbook templates see: name, state, labels, weight

    async def _runs(self, caller: Caller, args: dict[str, Any]) -> Any:
        """One page of runs, newest first, as `GET /api/v1/runs`: `next` is the `before` of the next."""
        limit, before = args.get("limit", PAGE_DEFAULT), args.get("before")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= PAGE_MAX:
            raise CommandError(f"limit must be an integer from 1 to {PAGE_MAX}", 400)
        if before is not None and not (isinstance(before, str) and RUN_ID.match(before)):
            raise CommandError(f"before: not a run id: {str(before)[:40]!r}", 400)
        try:
            page = await self.runner.journal.page(limit, before)
        except UnknownRun as e:
            raise CommandError(str(e), 400) from e
        keys = ("id", "playbook", "status", "key", "created_at", "finished_at", "error")
        runs = [{k: r.get(k) for k in keys} for r in page.runs]
        return {"runs": redact.redact(runs), "next": page.next}  # viewers read it: no secret

    async def _run(self, caller: Caller, args: dict[str, Any]) -> Any:
        run_id = str(args.get("id", ""))
        if not RUN_ID.match(run_id):  # it becomes a KV key: no wildcards, no dots
            raise CommandError(f"not a run id: {run_id[:40]!r}", 400)
        record = await self.runner.journal.read(run_id)
        if record is None:
            raise CommandError(f"no run {args.get('id')!r}", 404)
        return redact.redact(record)  # viewers read it: no secret, whatever an older writer journalled

    async def _incidents(self, caller: Caller, args: dict[str, Any]) -> Any:
        """Incidents, newest first, as `GET /api/v1/incidents` (`open: true`: the open ones only)."""
        open_only = args.get("open", False)
        if not isinstance(open_only, bool):
            raise CommandError("open must be true or false", 400)
        records = await IncidentBook(self.store).all(open_only=open_only)
        return {"incidents": redact.redact([incident_view(r) for r in records])}

    async def _manual(self, caller: Caller, args: dict[str, Any], kind: str) -> Any:
        cluster = self._cluster_arg(args)
        matching = [
            lp
            for lp in self.runner.playbooks.values()
            if lp.playbook.on.event == "manual" and lp.playbook.name.startswith(f"manual-{kind}")
        ]
        if not matching:
            raise CommandError(f"no playbook with on.event manual named manual-{kind}* is loaded", 404)
        event = {
            "type": "manual",
            "command": kind,
            "cluster": cluster,
            "actor": caller.actor,
            "force": bool(args.get("force")),  # --force (admin) skips the approval and overrides guards
            "ts": rfc3339(time.time()),
            "id": f"cmd-{int(time.time() * 1000)}",
        }
        ids = [
            await self.runner.submit(lp, event, force=bool(args.get("force")), actor=caller.actor)
            for lp in matching
        ]
        return {"runs": [i for i in ids if i]}

    async def _failover(self, caller: Caller, args: dict[str, Any]) -> Any:
        return await self._manual(caller, args, "drain")

    async def _failback(self, caller: Caller, args: dict[str, Any]) -> Any:
        return await self._manual(caller, args, "restore")

    async def _pause(self, caller: Caller, args: dict[str, Any]) -> Any:
        until = None
        if args.get("for"):
            try:
                seconds = parse_duration(args["for"])
            except ValueError as e:
                raise CommandError(str(e)) from None
            if not 0 < seconds <= PAUSE_MAX_S:  # `pause --for 99999999999d` was stored, then broke readers
                raise CommandError(
                    f"--for must be more than 0s and at most {PAUSE_MAX_S / 86400:g}d; to pause until "
                    "resumed, omit it"
                )
            until = time.time() + seconds
        key = pause_key(self._cluster_arg(args) if args.get("cluster") else None)
        await self.store.put(key, {"by": caller.actor, "at": time.time(), "until": until})
        return {"paused": key, "until": rfc3339(until) if until else None}

    async def _resume(self, caller: Caller, args: dict[str, Any]) -> Any:
        key = pause_key(self._cluster_arg(args) if args.get("cluster") else None)
        await Bus.kv_delete(self.bus.kv.state, key)
        if key == PAUSE_ALL:
            await self.resume_detector(caller.actor)  # also lifts an observer-guard freeze
        return {"resumed": key}

    async def _drill(self, caller: Caller, args: dict[str, Any]) -> Any:
        """`failover drill` announces itself: `drill.started` / `drill.finished` system events (the
        command is audited like every other), so a drill is never mistaken for an incident."""
        phase, fault = str(args.get("phase")), str(args.get("fault"))
        if phase not in ("started", "finished") or fault not in ("scale-to-zero", "deny-ingress"):
            raise CommandError(
                "drill: phase is started or finished; fault is scale-to-zero or deny-ingress", 400
            )
        cluster = self._cluster_arg(args)
        outcome = args.get("outcome")
        kind = f"drill.{phase}"
        detail: dict[str, Any] = {
            "cluster": cluster,
            "fault": fault,
            "by": caller.actor,
            **{k: args[k] for k in ("outcome", "recovery_s", "timeline") if k in args},
        }
        reason = f"{fault} drill on {cluster} by {caller.actor} {phase}" + (f": {outcome}" if outcome else "")
        if self.on_drill is not None:
            self.on_drill(cluster, phase == "started")
        await self.bus.publish_durable(
            subjects.SYSTEM_EVENTS, SystemEvent(type=kind, reason=reason, detail=detail).to_json()
        )
        return {"event": kind}

    async def _decide(self, caller: Caller, args: dict[str, Any], approved: bool) -> Any:
        run_id = str(args.get("run") or args.get("id") or "")
        verdict = self.approvals.decide(run_id, approved, caller.actor, caller.role)
        if verdict.error:  # refused (a self-approval included): `handle` audits it
            raise CommandError(verdict.error, verdict.status)
        return {
            "run": run_id,
            "approved": approved,
            "by": caller.actor,
            "approvals": list(verdict.approvals),
            "needed": verdict.needed,
            "decided": verdict.final,
        }

    async def _approve(self, caller: Caller, args: dict[str, Any]) -> Any:
        return await self._decide(caller, args, True)

    async def _deny(self, caller: Caller, args: dict[str, Any]) -> Any:
        return await self._decide(caller, args, False)


def _started(answer: dict[str, Any]) -> list[str]:
    """The run ids a command's answer names (`failover`, `failback`), for the audit record."""
    result = answer.get("result") if answer.get("ok") else None
    runs = result.get("runs") if isinstance(result, dict) else None
    return [str(r) for r in runs] if isinstance(runs, list) else []


async def forced_by_audit(bus: Bus, record: dict[str, Any]) -> bool:
    """Whether the audit stream holds the successful admin command that started this run with `force`
    (a resumed run keeps `force` only then: DESIGN §12)."""
    try:
        created = datetime.fromisoformat(str(record.get("created_at")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return False
    found = await bus.audited_run(str(record.get("id")), time.time() - created + 300)
    return bool(found and found.get("result") == "ok" and (found.get("args") or {}).get("force") is True)
