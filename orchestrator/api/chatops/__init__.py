"""ChatOps (DESIGN §14): Slack and Mattermost slash commands and Approve / Deny buttons.

`ChatOpsApp` is what the runtime builds and the API serves: the four routes (`ROUTES`, also in the
OpenAPI document), and on the leader the `ApprovalPoster` that puts buttons on runs waiting for approval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import structlog
from aiohttp import web

from orchestrator.api.chatops.approvals import ApprovalPoster
from orchestrator.api.chatops.mattermost import MattermostRoutes
from orchestrator.api.chatops.service import ChatOps
from orchestrator.api.chatops.slack import SlackRoutes
from orchestrator.api.chatops.webapi import SlackWebApi
from orchestrator.api.commands import Commands
from orchestrator.bus.client import Bus
from orchestrator.bus.state import StateStore
from orchestrator.core.config import Config
from orchestrator.core.config_chatops import chatops_warnings
from orchestrator.playbooks.approvals import ApprovalBook
from orchestrator.playbooks.journal import BusJournal

__all__ = ["ChatOps", "ChatOpsApp", "register_routes"]

log = structlog.get_logger(__name__)


class ChatOpsApp:
    def __init__(
        self,
        config: Config,
        commands: Commands,
        bus: Bus,
        session: aiohttp.ClientSession,
        approvals: ApprovalBook,
        journal: BusJournal,
        store: StateStore,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.chatops = ChatOps(config, commands, bus, session, clock or time.time)
        slack = config.chatops.slack
        self.poster: ApprovalPoster | None = None
        if slack is not None and slack.bot_token is not None:
            web_api = SlackWebApi(session, slack.bot_token.get_secret_value(), slack.api_url, slack.timeout_s)
            self.poster = ApprovalPoster(config, web_api, approvals, journal, store)
        elif slack is not None:
            log.warning(
                "chatops.no_buttons",
                reason="chatops.slack.bot_token is not set: runs waiting for approval get no Approve / Deny "
                "buttons (`/failover approve RUN` still works)",
            )
        notifier_channels = {
            n.name: n.slack.channel
            for n in config.notifiers
            if n.driver == "slack" and n.slack is not None and n.slack.channel
        }
        for loc, warning in chatops_warnings(config.chatops, notifier_channels):
            log.warning("chatops.config_warning", where=".".join(map(str, loc)), reason=warning)
        for name in ("slack", "mattermost"):
            section = getattr(config.chatops, name)
            if section is not None and not section.channels:
                log.warning(
                    "chatops.no_channels",
                    platform=name,
                    reason=f"chatops.{name}.channels is empty: "
                    "every command is refused; list channel IDs, or `*` for every channel",
                )

    def kick(self) -> None:
        """A run event: a run may have started or stopped waiting for approval."""
        if self.poster is not None:
            self.poster.kick()

    async def run(self, stop: asyncio.Event, is_leader: Callable[[], bool]) -> None:
        """The leader's approval messages; returns at `stop` (nothing to do without a bot token)."""
        try:
            if self.poster is not None:
                await self.poster.run(stop, is_leader)
            else:
                await stop.wait()
        finally:
            await self.chatops.close()


def register_routes(app: web.Application, chatops: ChatOps | None) -> None:
    """`/chatops/slack/*` and `/chatops/mattermost/*`: always served (the OpenAPI document lists them);
    a platform that is not configured answers 404 saying so."""
    if chatops is None:

        async def unconfigured(_request: web.Request) -> web.StreamResponse:
            return web.json_response({"ok": False, "error": "chatops is not configured"}, status=404)

        for path in (
            "/chatops/slack/commands",
            "/chatops/slack/interactions",
            "/chatops/mattermost/commands",
            "/chatops/mattermost/actions",
        ):
            app.router.add_post(path, unconfigured, name=path.strip("/").replace("/", "_"))
        return
    slack, mattermost = SlackRoutes(chatops), MattermostRoutes(chatops)
    app.router.add_post("/chatops/slack/commands", slack.commands, name="chatops_slack_commands")
    app.router.add_post("/chatops/slack/interactions", slack.interactions, name="chatops_slack_interactions")
    app.router.add_post(
        "/chatops/mattermost/commands", mattermost.commands, name="chatops_mattermost_commands"
    )
    app.router.add_post("/chatops/mattermost/actions", mattermost.actions, name="chatops_mattermost_actions")
