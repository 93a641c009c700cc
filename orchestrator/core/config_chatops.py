"""`chatops:` (DESIGN §14): who may use Slack and Mattermost, from where, and where answers may go.

Split from `config_daemon` (which re-exports `ChatopsConfig` for the root config): the chat sections
carry their own identity rules (IDs, never names; an `actor` for whoever can decide), their own network
rules (`allowed_sources`, `response_url_prefixes`) and the warnings `validate` gives about them.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from orchestrator.core.config_fields import HttpUrlStr, Model, Seconds

ChatRole = Literal["viewer", "operator", "admin"]
Loc = tuple[str | int, ...]
_SLACK_USER = re.compile(r"^[UW][A-Z0-9]{2,20}$")
_SLACK_CHANNEL = re.compile(r"^[CGD][A-Z0-9]{2,20}$")
_MATTERMOST_ID = re.compile(r"^[a-z0-9]{26}$")


class ChatUser(Model):
    """A chat user's grant: `U0123ABC: operator`, or `U0123ABC: {role: operator, actor: alice}`."""

    role: ChatRole
    actor: str | None = Field(default=None, min_length=1, max_length=100)
    """Who this user is in approvals and the audit trail: the name of the person's API token (`alice`),
    so that the two-person rule sees one person whether they ask with `failover ctl` and approve in chat
    or the other way round. Required for operators and admins (who can ask and approve); a viewer's
    default is `slack:<id>` / `mattermost:<id>`."""

    @model_validator(mode="after")
    def _actor_for_deciders(self) -> ChatUser:
        if self.role != "viewer" and self.actor is None:
            article = "an" if self.role[0] in "aeiou" else "a"
            raise ValueError(
                f"{article} {self.role} needs actor: the name of this person's API token, so the "
                "two-person rule sees one person across chat and ctl (someone without a token: their name)"
            )
        return self


def _users(value: object) -> object:
    """`{ID: role}` is short for `{ID: {role: role}}`."""
    if isinstance(value, dict):
        return {k: {"role": v} if isinstance(v, str) else v for k, v in value.items()}
    return value


class _ChatBase(Model):
    users: dict[str, ChatUser] = {}
    """Who may use chat, by immutable user ID (never a display name, which anyone can change)."""
    channels: list[str] = []
    """Channel IDs commands are taken from; `["*"]` for every channel the app is in. Empty: none."""

    @field_validator("users", mode="before")
    @classmethod
    def _short_users(cls, value: object) -> object:
        return _users(value)

    @field_validator("response_url_prefixes", mode="after", check_fields=False)
    @classmethod
    def _prefixes(cls, value: list[str] | None) -> list[str] | None:
        for prefix in value or []:
            parts = urlsplit(prefix)
            if parts.scheme not in ("https", "http") or not parts.hostname or parts.username:
                raise ValueError(f"{prefix!r} is not an http(s) URL with a host")
            if not parts.path.endswith("/"):
                raise ValueError(f"{prefix!r} must end with / (so that it names a host and a path)")
        return value


class SlackChatops(_ChatBase):
    """`/failover ...` slash commands and Approve / Deny buttons (DESIGN §14)."""

    signing_secret: SecretStr
    """The app's signing secret: every request is verified with it (v0 signature) before anything else."""
    bot_token: SecretStr | None = None
    """A bot token (`xoxb-...`, `chat:write`) to post Approve / Deny buttons in the incident's thread and
    update them; without it, runs are approved with `/failover approve RUN`. Usually the same Slack app
    (and token) as the `slack` notifier, so the buttons land in the thread that notifier started."""
    api_url: HttpUrlStr = "https://slack.com/api"
    """The Web API base; configurable so tests can point it at a local receiver."""
    channel: str | None = None
    """Where approval buttons go when the run's incident has no Slack thread (a channel ID)."""
    timeout_s: Seconds = Field(default=5.0, alias="timeout", gt=0)
    response_url_prefixes: list[str] = ["https://hooks.slack.com/"]
    """Where `response_url` follow-ups may go: Slack's own host. A request's `response_url` elsewhere is
    not followed (the answer then comes in the HTTP response, or not at all for a click)."""

    @field_validator("signing_secret", "bot_token")
    @classmethod
    def _filled(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("empty: an unset ${VAR}? (the value is never shown)")
        return value

    @model_validator(mode="after")
    def _ids(self) -> SlackChatops:
        for user in self.users:
            if not _SLACK_USER.match(user):
                raise ValueError(f"users: {user!r} is not a Slack user ID (U0123ABC): names can change")
        for channel in [*self.channels, *([self.channel] if self.channel else [])]:
            if channel != "*" and not _SLACK_CHANNEL.match(channel):
                raise ValueError(f"{channel!r} is not a Slack channel ID (C0123ABC; `*` for every channel)")
        if self.channel and "*" not in self.channels and self.channel not in self.channels:
            raise ValueError(
                f"channel {self.channel} is not in channels: approval buttons posted there would be "
                "refused when clicked; add it to channels"
            )
        return self


class MattermostChatops(_ChatBase):
    """A Mattermost slash command (`/failover ...`) and its interactive-message buttons."""

    token: SecretStr
    """The slash command's token (Integrations > Slash Commands): every command must carry it."""
    action_secret: SecretStr
    """Signs the `context` of our buttons (HMAC): a button callback is honoured only with our signature.
    Any random string (`openssl rand -hex 32`); never sent to Mattermost."""
    callback_url: HttpUrlStr | None = None
    """How Mattermost reaches `/chatops/mattermost/actions` (default: `api.external_url` + that path)."""
    site_url: HttpUrlStr | None = None
    """The Mattermost server's Site URL: its `response_url`s start with it (the default prefix)."""
    response_url_prefixes: list[str] | None = None
    """Where `response_url` follow-ups may go (default: `site_url` + `/`; neither: none are followed)."""
    allowed_sources: list[str] = []
    """Addresses or CIDRs the Mattermost server posts from: its requests (commands and button clicks) are
    refused from anywhere else. Mattermost does not sign button callbacks, so the clicker's user ID is
    only as good as the sender; without this list anyone who can reach the route and holds a button's
    context can click as anyone (a warning at start and in `validate`)."""
    trusted_proxies: list[str] = []
    """Proxies (ingress controllers) whose `X-Forwarded-For` is believed, for `allowed_sources`."""

    @field_validator("allowed_sources", "trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR (192.0.2.10, 10.0.0.0/8)") from None
        return value

    @field_validator("token", "action_secret")
    @classmethod
    def _filled(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("empty: an unset ${VAR}? (the value is never shown)")
        return value

    @model_validator(mode="after")
    def _ids(self) -> MattermostChatops:
        for user in self.users:
            if not _MATTERMOST_ID.match(user):
                raise ValueError(f"users: {user!r} is not a Mattermost user ID (26 characters): names change")
        for channel in self.channels:
            if channel != "*" and not _MATTERMOST_ID.match(channel):
                raise ValueError(f"{channel!r} is not a Mattermost channel ID (26 characters; `*`: all)")
        return self


class ChatopsConfig(Model):
    """`chatops:` (DESIGN §14): served on `/chatops/slack/*` and `/chatops/mattermost/*`."""

    slack: SlackChatops | None = None
    mattermost: MattermostChatops | None = None


def chatops_warnings(chatops: ChatopsConfig, notifier_channels: dict[str, str]) -> list[tuple[Loc, str]]:
    """What `validate` and the daemon's start warn about: settings that load but leave a hole.
    `notifier_channels`: each Slack bot notifier's name -> its channel (where the incident threads,
    and so the approval buttons, are)."""
    out: list[tuple[Loc, str]] = []
    slack, mattermost = chatops.slack, chatops.mattermost
    if slack is not None and "*" not in slack.channels:
        for name, channel in sorted(notifier_channels.items()):
            if channel not in slack.channels:
                out.append(
                    (
                        ("chatops", "slack", "channels"),
                        f"the incident channel {channel} of notifier {name} is not in "
                        "chatops.slack.channels: Approve / Deny buttons posted in its threads would be "
                        "refused when clicked",
                    )
                )
    if mattermost is not None and not mattermost.allowed_sources:
        out.append(
            (
                ("chatops", "mattermost"),
                "allowed_sources is not set: Mattermost does not sign button callbacks, so anyone who can "
                "reach /chatops/mattermost/actions with a button's context can click it as any user; "
                "list the Mattermost server's addresses",
            )
        )
    return out
