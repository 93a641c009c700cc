"""ChatOps (DESIGN §14): chat requests become `Commands.handle_as` calls, answered within Slack's 3 seconds.

One path for Slack and Mattermost once the request is verified: the user is looked up by immutable ID
(`chatops.<platform>.users`), the channel in `channels`, the text parsed with `failover ctl`'s grammar,
and the command run by `Commands.handle_as`, so chat shares the roles, the audit trail and the
forwarding to the leader with every other channel. A command that is not done within `ACK_S` is
acknowledged at once ("working on it") and answered on `response_url` when it is.

Every chat request leaves exactly one record in `failover.audit` (`via: slack` or `mattermost`, the
actor, and under `args.chat` the user's ID and name and the channel): `Commands` writes it for what it
audits (anything that changes something, and every refusal), this module for the rest (reads, usage
errors, unknown users or channels, unverified requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from orchestrator.api.chatops import render
from orchestrator.api.chatops.grammar import Parsed, UsageError, parse
from orchestrator.api.chatops.render import Reply
from orchestrator.api.chatops.verify import ReplayGuard
from orchestrator.api.chatops.webapi import FollowUps, follow_up_prefixes
from orchestrator.api.commands import REQUIRED_ROLE, Caller, Commands
from orchestrator.bus.client import Bus
from orchestrator.core import subjects
from orchestrator.core.config import Config
from orchestrator.core.config_chatops import ChatUser
from orchestrator.core.errors import OrchestratorError
from orchestrator.core.models import AuditRecord

log = structlog.get_logger(__name__)

ACK_S = 2.5
"""Slack wants an answer within 3 s: what takes longer is acknowledged, then answered on response_url."""
REFUSED_AUDITS_PER_MIN = 30
"""Unverified requests are audited up to this rate: a flood of forged requests must not flood the audit
stream (the rest are counted in a log line)."""

Deliver = Callable[[Reply], Awaitable[None]]


@dataclass(frozen=True)
class Who:
    """Who asked, where (as the verified request says)."""

    platform: str
    user_id: str
    user_name: str
    channel_id: str
    channel_name: str = ""

    def meta(self) -> dict[str, str]:
        return {"user": self.user_id, "name": self.user_name[:80], "channel": self.channel_id}

    def mention(self) -> str:
        return f"<@{self.user_id}>" if self.platform == "slack" else f"@{self.user_name}"


class ChatOps:
    def __init__(
        self,
        config: Config,
        commands: Commands,
        bus: Bus | None,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
        ack_s: float = ACK_S,
    ) -> None:
        self.config = config
        self.commands = commands
        self.bus = bus
        self.session = session
        self.clock = clock
        self.ack_s = ack_s
        self.follow_ups = {
            name: FollowUps(session, follow_up_prefixes(section))
            for name in ("slack", "mattermost")
            if (section := getattr(config.chatops, name)) is not None
        }
        """Per platform: each has its own `response_url` prefixes."""
        self.replays = ReplayGuard()
        self._background: set[asyncio.Future[Any]] = set()
        self._refused_window: tuple[float, int, int] = (0.0, 0, 0)

    @property
    def base_url(self) -> str | None:
        return self.config.api.external_url

    def _settings(self, platform: str) -> Any:
        return getattr(self.config.chatops, platform)

    # the shared path ------------------------------------------------------------------------------

    def authorize(self, who: Who) -> tuple[Caller | None, str | None]:
        """The caller, or a refusal naming what is missing (the user, the channel, or both)."""
        cfg = self._settings(who.platform)
        grant: ChatUser | None = cfg.users.get(who.user_id)
        missing = []
        if grant is None:
            missing.append(f"user {who.user_id} ({who.user_name}) is not in chatops.{who.platform}.users")
        if "*" not in cfg.channels and who.channel_id not in cfg.channels:
            place = f" (#{who.channel_name})" if who.channel_name else ""
            missing.append(f"channel {who.channel_id}{place} is not in chatops.{who.platform}.channels")
        if missing:
            return None, "; ".join(missing) + ": ask an admin to add it"
        assert grant is not None
        return Caller(grant.actor or f"{who.platform}:{who.user_id}", grant.role, who.platform), None

    async def run_text(self, who: Who, text: str, deliver: Deliver | None) -> Reply:
        """A slash command's text: the reply to send now. When the work outlasts `ack_s` and `deliver`
        is given (a response_url), the reply now is an acknowledgement and the answer goes to `deliver`."""
        try:
            parsed = parse(text)
        except UsageError as e:
            caller, refused = self.authorize(who)  # a stranger learns nothing of the grammar
            message = refused or str(e)
            await self.audit(who, caller, "(usage)", {"text": text[:200]}, f"error: {message}")
            return render.refusal(message)
        return await self.run(who, parsed, deliver)

    async def run(self, who: Who, parsed: Parsed, deliver: Deliver | None) -> Reply:
        caller, refusal = self.authorize(who)
        if caller is None:
            assert refusal is not None
            await self.audit(who, None, parsed.command, parsed.args, f"error: {refusal}")
            return render.refusal(refusal)
        if parsed.command == "help":
            await self.audit(who, caller, "help", {}, "ok")
            return render.help_reply()
        work = asyncio.ensure_future(self._execute(who, caller, parsed))
        done, _ = await asyncio.wait([work], timeout=self.ack_s)
        if done:
            return work.result()
        if deliver is None:  # nowhere to answer later: wait (a button click has its response_url anyway)
            return await work
        self.keep(asyncio.ensure_future(self._answer_later(work, deliver, parsed)))
        return Reply(
            f":hourglass_flowing_sand: Working on `{render.escape(parsed.text())}`; the answer follows here.",
            ephemeral=True,
        )

    async def _execute(self, who: Who, caller: Caller, parsed: Parsed) -> Reply:
        args = {**parsed.args, "chat": who.meta()}
        answer = await self.commands.handle_as(caller, parsed.command, args)
        if REQUIRED_ROLE.get(parsed.command) == "viewer" and answer.get("ok"):
            await self.audit(who, caller, parsed.command, parsed.args, "ok")  # Commands audits the rest
        reply = render.reply_for(parsed, answer, self.base_url)
        reply.context = f"{who.mention()} ran `/failover {render.escape(parsed.text())}`"
        return reply

    async def _answer_later(self, work: asyncio.Future[Reply], deliver: Deliver, parsed: Parsed) -> None:
        try:
            reply = await work
        except Exception as e:  # handle_as never raises; a bug still answers
            log.error("chatops.failed", command=parsed.command, error=repr(e))
            reply = render.refusal(f"{parsed.text()}: internal error (logged)")
        try:
            await deliver(reply)
        except OrchestratorError as e:
            log.warning("chatops.follow_up_failed", command=parsed.command, error=str(e))

    def response_url(self, platform: str, url: str) -> str:
        """`url` when follow-ups may go there, else "" (the answer then comes in the HTTP response)."""
        if not url:
            return ""
        if self.follow_ups[platform].allowed(url):
            return url
        log.warning(
            "chatops.response_url_refused",
            platform=platform,
            reason=f"not under chatops.{platform}.response_url_prefixes",
        )
        return ""

    def keep(self, task: asyncio.Future[Any]) -> None:
        """Hold a background answer (a click, a late reply) until done; cancelled at shutdown."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        tasks, self._background = list(self._background), set()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)

    # audit ------------------------------------------------------------------------------------------

    async def audit(
        self, who: Who, caller: Caller | None, command: str, args: dict[str, Any], result: str
    ) -> None:
        grant: ChatUser | None = self._settings(who.platform).users.get(who.user_id)
        if caller is not None:
            actor = caller.actor
        else:  # refused: a known user (an unlisted channel) is still named as the person they are
            actor = grant.actor if grant is not None and grant.actor else f"{who.platform}:{who.user_id}"
        record = AuditRecord(
            actor=actor,
            via=who.platform,
            command=command,
            args={**args, "chat": who.meta()},
            result=result[:500],
        )
        await self._publish(record)

    async def audit_unverified(
        self, platform: str, reason: str, remote: str | None, command: str = "(unverified request)"
    ) -> None:
        """A request that failed verification (or came from a source not allowed): audited, at most
        `REFUSED_AUDITS_PER_MIN` a minute, never acted on. The first record after a minute that dropped
        some says how many (`args.not_audited`), so the trail shows a flood happened."""
        now = self.clock()
        start, count, dropped = self._refused_window
        carried = 0
        if now - start >= 60:
            if dropped:
                log.warning("chatops.unverified_not_audited", platform=platform, count=dropped)
            start, count, carried, dropped = now, 0, dropped, 0
        if count >= REFUSED_AUDITS_PER_MIN:
            self._refused_window = (start, count, dropped + 1)
            return
        self._refused_window = (start, count + 1, dropped)
        args: dict[str, Any] = {"remote": remote or "unknown"}
        if carried:
            args["not_audited"] = carried
        record = AuditRecord(
            actor="unauthenticated",
            via=platform,
            command=command,
            args=args,
            result=f"error: {reason}",
        )
        await self._publish(record)

    async def _publish(self, record: AuditRecord) -> None:
        log.info("audit", actor=record.actor, via=record.via, command=record.command, result=record.result)
        if self.bus is None:
            return
        try:
            await self.bus.publish_durable(subjects.AUDIT, record.to_json())
        except OrchestratorError as e:
            log.error("audit.publish_failed", error=str(e))
