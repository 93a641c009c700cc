"""Approve / Deny buttons in Slack for every run that waits for an approval (DESIGN §14), on the leader.

The runner (playbooks layer) knows nothing of chat: a run waiting at an `approval` step is in the
leader's `ApprovalBook`, and its journal entry says what is asked, of whom, until when. The leader's
`ApprovalPoster` looks there whenever a run event kicks it (and every `interval_s` regardless): a waiting
run without a message gets one, in its incident's Slack thread (the receipt a Slack notifier keeps in the
incident record) or in `chatops.slack.channel`; a message whose run no longer waits is updated in place
(`chat.update`) to say who approved or denied it and when, or that it timed out.

Which message belongs to which run is kept in KV (`chatops.approval.<run>`), so a new leader, resuming
the run, neither posts a second message nor leaves the first one showing live buttons. When Slack fails
(429, 5xx, a refused token), the buttons are late or missing, never the approval: `approve RUN` works by
every other channel, and the poster tries again with a growing delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog

from orchestrator.api.chatops.render import Reply, actor_text, cut, escape, mentions, slack_message, when
from orchestrator.api.chatops.slack import APPROVE, DENY
from orchestrator.api.chatops.webapi import SlackWebApi
from orchestrator.bus.state import StateStore
from orchestrator.core.config import Config
from orchestrator.core.errors import OrchestratorError, PermanentError
from orchestrator.playbooks.approvals import ApprovalBook
from orchestrator.playbooks.incidents import IncidentBook
from orchestrator.playbooks.journal import UNFINISHED, BusJournal

log = structlog.get_logger(__name__)

PREFIX = "chatops.approval."
INTERVAL_S = 2.0
RETRY_MAX_S = 60.0


def _message_record(value: Any) -> dict[str, str] | None:
    """A KV record as we wrote it, or None (whatever else is there is not acted on)."""
    if not isinstance(value, dict):
        return None
    fields = ("channel", "ts", "step")
    if not all(isinstance(value.get(k), str) and 0 < len(value[k]) <= 100 for k in fields):
        return None
    return {k: value[k] for k in fields}


class ApprovalPoster:
    def __init__(
        self,
        config: Config,
        web: SlackWebApi,
        book: ApprovalBook,
        journal: BusJournal,
        store: StateStore,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.web = web
        self.book = book
        self.journal = journal
        self.store = store
        self.incidents = IncidentBook(store)
        self.interval_s = interval_s
        self.clock = clock
        self._kick = asyncio.Event()
        self._retry: dict[str, tuple[float, float]] = {}
        """run -> (not before, last delay): Slack failures back off per run."""
        self.people: dict[str, str] = {}
        """actor -> Slack user ID (`chatops.slack.users`' `actor`): shown as a mention in messages."""
        slack = config.chatops.slack
        for user_id, grant in sorted(slack.users.items()) if slack is not None else []:
            if grant.actor:
                self.people.setdefault(grant.actor, user_id)

    def kick(self) -> None:
        self._kick.set()

    async def run(self, stop: asyncio.Event, is_leader: Callable[[], bool]) -> None:
        while not stop.is_set():
            if is_leader():
                try:
                    await self.sync()
                except OrchestratorError as e:  # NATS away: next round
                    log.warning("chatops.approvals_sync_failed", error=str(e))
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    waits = [asyncio.ensure_future(self._kick.wait()), asyncio.ensure_future(stop.wait())]
                    try:
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for w in waits:
                            w.cancel()

    async def sync(self) -> None:
        pending = set(self.book.pending())
        posted = {k.removeprefix(PREFIX): v for k, v in (await self.store.items(PREFIX)).items()}
        for run_id in sorted(pending - set(posted)):
            if self._due(run_id):
                await self._attempt(run_id, self._post(run_id))
        for run_id, value in posted.items():
            record = _message_record(value)
            if record is None:
                log.warning("chatops.bad_approval_record", run=run_id)
                await self.store.delete(f"{PREFIX}{run_id}")
            elif run_id not in pending and self._due(run_id):
                await self._attempt(run_id, self._close(run_id, record))

    def _due(self, run_id: str) -> bool:
        return self._retry.get(run_id, (0.0, 0.0))[0] <= self.clock()

    async def _attempt(self, run_id: str, work: Any) -> None:
        try:
            await work
            self._retry.pop(run_id, None)
        except OrchestratorError as e:
            delay = min(RETRY_MAX_S, max(self.interval_s, self._retry.get(run_id, (0.0, 0.0))[1] * 2))
            delay = max(delay, getattr(e, "delay_s", None) or 0.0)
            self._retry[run_id] = (self.clock() + delay, delay)
            log.warning("chatops.approval_message_failed", run=run_id, error=str(e), retry_in_s=delay)

    # posting ----------------------------------------------------------------------------------------

    async def _post(self, run_id: str) -> None:
        record = await self.journal.read(run_id)
        if record is None:
            return
        found = _waiting_step(record)
        if found is None:
            return  # not journalled as waiting yet: the next round
        step_id, entry = found
        event = record.get("event") or {}
        cluster = str(event.get("cluster") or "")
        where = await self._where(cluster)
        if where is None:
            raise PermanentError(
                f"run {run_id} waits for approval but its incident has no Slack thread and "
                "chatops.slack.channel is not set: approve with `/failover approve RUN`"
            )
        channel, thread = where
        message = slack_message(self._asking(run_id, record, entry))
        body: dict[str, Any] = {"channel": channel, "text": message["text"], "blocks": message["blocks"]}
        if thread:
            body["thread_ts"] = thread
        answer = await self.web.call("chat.postMessage", body)
        ts = answer.get("ts")
        if not isinstance(ts, str):
            raise PermanentError("Slack chat.postMessage: no ts in the answer")
        await self.store.put(
            f"{PREFIX}{run_id}", {"channel": str(answer.get("channel") or channel), "ts": ts, "step": step_id}
        )
        log.info("chatops.approval_posted", run=run_id, channel=channel, thread=bool(thread))

    async def _where(self, cluster: str) -> tuple[str, str | None] | None:
        """(channel, thread ts): the incident's Slack thread when a Slack notifier started one."""
        incident = await self.incidents.open_for(cluster) if cluster else None
        slack_notifiers = {n.name for n in self.config.notifiers if n.driver == "slack"}
        for name, receipt in sorted(((incident or {}).get("receipts") or {}).items()):
            if name in slack_notifiers and isinstance(receipt, dict):
                channel, ts = receipt.get("channel"), receipt.get("ts")
                if isinstance(channel, str) and isinstance(ts, str):
                    return channel, ts
        cfg = self.config.chatops.slack
        return (cfg.channel, None) if cfg is not None and cfg.channel else None

    def _asking(self, run_id: str, record: dict[str, Any], entry: dict[str, Any]) -> Reply:
        raw = entry.get("params")
        params: dict[str, Any] = raw if isinstance(raw, dict) else {}
        summary = str(params.get("summary") or f"run {run_id} ({record.get('playbook')}) asks for approval")
        approvers = params.get("approvers") or []
        needed = params.get("min_approvals") or 1
        initiator = record.get("actor")
        lines = [
            f"*Run* `{escape(run_id)}` ({escape(str(record.get('playbook')))})"
            + (f", asked by {actor_text(str(initiator), self.people)}" if initiator else ""),
            f"*Who may approve*: {escape(', '.join(map(str, approvers)) or 'any operator')}"
            + (f" — {needed} distinct approvals" if needed != 1 else "")
            + (
                " — not the person who asked"
                if params.get("distinct_from_initiator", True) and initiator
                else ""
            ),
        ]
        if isinstance(entry.get("until"), int | float):
            lines.append(f"*Decide before* {when(entry['until'])}")
        reply = Reply(f":raised_hand: *Approval needed*: {mentions(cut(summary, 500))}", lines)
        reply.buttons = [
            {"action": APPROVE, "label": "Approve", "value": run_id, "style": "primary"},
            {"action": DENY, "label": "Deny", "value": run_id, "style": "danger"},
        ]
        return reply

    # closing ----------------------------------------------------------------------------------------

    async def _close(self, run_id: str, posted: dict[str, str]) -> None:
        record = await self.journal.read(run_id)
        outcome = (
            _outcome(record, posted["step"], self.people)
            if record is not None
            else "the run is gone from the journal"
        )
        if outcome is None:
            return  # still waiting in the journal (a new leader resumes it shortly): leave the buttons
        lines = [
            f"*Run* `{escape(run_id)}`" + (f" ({escape(str(record.get('playbook')))})" if record else "")
        ]
        entry = ((record or {}).get("steps") or {}).get(posted["step"])
        params = entry.get("params") if isinstance(entry, dict) else None
        if isinstance(params, dict) and params.get("summary"):  # the question stays with its answer
            lines.append(f"*Asked*: {mentions(cut(str(params['summary']), 500))}")
        reply = Reply(outcome, lines)
        message = slack_message(reply)
        body = {
            "channel": posted["channel"],
            "ts": posted["ts"],
            "text": message["text"],
            "blocks": message["blocks"],
        }
        try:
            await self.web.call("chat.update", body)
        except PermanentError as e:  # the message was deleted: nothing left to update
            log.warning("chatops.approval_update_refused", run=run_id, error=str(e))
        await self.store.delete(f"{PREFIX}{run_id}")
        log.info("chatops.approval_closed", run=run_id, outcome=outcome)


def _waiting_step(record: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    steps = record.get("steps")
    for step_id, entry in steps.items() if isinstance(steps, dict) else []:
        if isinstance(entry, dict) and entry.get("waiting_approval") and entry.get("status") == "running":
            return str(step_id), entry
    return None


def _outcome(record: dict[str, Any], step_id: str, people: dict[str, str]) -> str | None:
    """What the approval step came to, as the message's new first line; None while it still waits."""
    entry = (record.get("steps") or {}).get(step_id)
    entry = entry if isinstance(entry, dict) else {}
    status = entry.get("status")
    raw = entry.get("result")
    result: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if status in ("pending", "running") and record.get("status") in UNFINISHED:
        return None
    if status == "succeeded" and result.get("approved"):
        who = ", ".join(actor_text(str(a), people) for a in result.get("approvals") or [result.get("by")])
        return f":white_check_mark: *Approved* by {who} at {when(result.get('at'))}"
    if status == "succeeded" and result.get("timed_out"):
        return ":hourglass: *No decision in time*: the run went ahead (on_timeout: proceed)"
    error = str(entry.get("error") or record.get("error") or "")
    if error.startswith("denied by "):
        who = error.removeprefix("denied by ")
        at = when(entry.get("finished_at") or record.get("finished_at"))
        return f":x: *Denied* by {actor_text(who, people)} at {at}"
    if "no approval within" in error:
        return f":hourglass: *Timed out*: {escape(error)} — the run was aborted"
    return f":heavy_minus_sign: *No longer waiting*: run {escape(str(record.get('status')))}" + (
        f" ({escape(error[:300])})" if error else ""
    )
