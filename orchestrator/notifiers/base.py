"""The notifier interface and the signed webhook driver; the other drivers have their own modules.

Errors are classified here, at the boundary: connection problems, timeouts and 5xx/429 are
TemporaryError (the step retries), other 4xx are PermanentError. Secrets and webhook URLs never appear
in errors or logs: only the notifier's name does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from orchestrator.core import signing
from orchestrator.core.config_drivers import NotifierConfig, WebhookTarget
from orchestrator.core.errors import PermanentError, TemporaryError, retry_after_s
from orchestrator.core.models import rfc3339, utc_now

Severity = Literal["info", "warning", "error", "critical"]


@dataclass(frozen=True)
class Notification:
    summary: str
    severity: Severity = "info"
    details: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    playbook: str | None = None
    cluster: str | None = None
    dedup_key: str | None = None
    incident: str | None = None
    """The incident this belongs to (`inc-<cluster>-<n>`, DESIGN §13): the dedup key everywhere."""
    incident_state: str | None = None
    """Where the incident is: opened, drained, scaled, waiting_approval, step_failed, resolved..."""
    resolve: bool = False
    """The incident is over (`notify` with `resolve: true`, the failback playbooks)."""
    links: dict[str, str] = field(default_factory=dict)
    """`run` and `incident` URLs under `api.external_url`, when it is set."""
    thread: dict[str, Any] | None = None
    """What this notifier answered for the incident's first message (its receipt: a Slack `ts`, an
    email Message-ID...), kept in the incident record, so later messages join that thread."""

    def body(self, notifier: str) -> dict[str, Any]:
        return {
            "v": 1,
            "notifier": notifier,
            "severity": self.severity,
            "summary": self.summary,
            "details": self.details,
            "run_id": self.run_id,
            "playbook": self.playbook,
            "cluster": self.cluster,
            "dedup_key": self.dedup_key,
            "incident": self.incident,
            "incident_state": self.incident_state,
            "resolve": self.resolve,
            "links": self.links,
            "ts": rfc3339(utc_now()),
        }


class Notifier:
    def __init__(self, config: NotifierConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.name = config.name
        self.session = session

    async def send(self, note: Notification) -> dict[str, Any] | None:
        """Deliver `note`; return a receipt to keep for the incident's later messages (a thread id), or
        None. Temporary problems raise TemporaryError (the step retries), others PermanentError."""
        raise NotImplementedError

    async def check(self) -> str:
        """Whether this notifier could deliver now, without sending anything (`failover check`, DESIGN
        §17); returns what was proven, in words. Raises TemporaryError (unreachable, timed out, 5xx) or
        PermanentError (refused: bad credentials) like `send`, never naming a secret or a secret URL."""
        raise NotImplementedError

    async def _reachable(self, url: str, timeout_s: float, what: str) -> str:
        """HEAD `url`, following no redirect: any HTTP answer but a 5xx proves DNS, TCP, TLS and an HTTP
        server behind the URL (a 405 or 404 to a HEAD is an answer: receivers only take POSTs). It does
        not prove the receiver would accept a message: only a message would."""
        try:
            async with self.session.head(
                url, timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False
            ) as resp:
                status = resp.status
        except TimeoutError as e:
            raise TemporaryError(f"notifier {self.name}: {what}: no answer within {timeout_s:g}s") from e
        except aiohttp.ClientError as e:
            raise TemporaryError(f"notifier {self.name}: {what}: {type(e).__name__}") from e
        if status >= 500 and status != 501:  # 501: HEAD not implemented, which is an answer
            raise TemporaryError(f"notifier {self.name}: {what}: HTTP {status}")
        return f"{what} answers (HTTP {status} to HEAD; nothing sent)"

    async def _post(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> None:
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                if resp.status < 300:
                    return
                status, delay = resp.status, retry_after_s(resp.headers.get("Retry-After"))
        except TimeoutError as e:
            raise TemporaryError(f"notifier {self.name}: timed out after {timeout_s:g}s") from e
        except aiohttp.ClientError as e:
            raise TemporaryError(f"notifier {self.name}: {type(e).__name__}") from e
        if status >= 500 or status == 429:
            raise TemporaryError(f"notifier {self.name}: HTTP {status}", delay_s=delay)
        raise PermanentError(f"notifier {self.name}: HTTP {status}")


class WebhookNotifier(Notifier):
    """POSTs the notification as JSON, signed when a secret is configured (with an `X-Failover-Id` the
    receiver can dedupe replays on; `core.signing`)."""

    async def send(self, note: Notification) -> dict[str, Any] | None:
        target: WebhookTarget = self.config.webhook  # type: ignore[assignment]
        body = json.dumps(note.body(self.name), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **target.headers}
        if target.secret is not None:
            headers.update(signing.sign_headers(target.secret.get_secret_value(), body))
        await self._post(target.url, body, headers, target.timeout_s)
        return None

    async def check(self) -> str:
        target: WebhookTarget = self.config.webhook  # type: ignore[assignment]
        return await self._reachable(target.url, target.timeout_s, "webhook")


# The driver modules import this one (Notifier, Notification): they are imported here, at the end.
from orchestrator.notifiers.alertmanager import AlertmanagerNotifier  # noqa: E402
from orchestrator.notifiers.email import EmailNotifier  # noqa: E402
from orchestrator.notifiers.nats import NatsNotifier, Publish  # noqa: E402
from orchestrator.notifiers.pagerduty import PagerDutyNotifier  # noqa: E402
from orchestrator.notifiers.slack import SlackNotifier  # noqa: E402
from orchestrator.notifiers.teams import TeamsNotifier  # noqa: E402

_DRIVERS: dict[str, type[Notifier]] = {"webhook": WebhookNotifier, "slack": SlackNotifier}
_DRIVERS["email"] = EmailNotifier
_DRIVERS["nats"] = NatsNotifier
_DRIVERS["teams"] = TeamsNotifier
_DRIVERS["pagerduty"] = PagerDutyNotifier
_DRIVERS["alertmanager"] = AlertmanagerNotifier


def build_notifier(
    config: NotifierConfig, session: aiohttp.ClientSession, publish: Publish | None = None
) -> Notifier:
    """`publish` is the daemon's Bus publish, for the `nats` driver (this layer may not import the bus)."""
    try:
        notifier = _DRIVERS[config.driver](config, session)
    except KeyError:
        raise PermanentError(f"notifier driver {config.driver!r} is not available in this version") from None
    if isinstance(notifier, NatsNotifier):
        notifier.publish = publish
    return notifier
