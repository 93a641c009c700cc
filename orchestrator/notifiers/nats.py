"""The `nats` notifier: the notification's JSON (`Notification.body`) published on a subject of the
operator's choosing, for their own tooling to consume.

The notifiers layer sits beside `bus` and may not import it (import-linter layers), so the daemon hands
`build_notifier` its Bus's publish function. The subject is checked at config load to be concrete and
outside `failover.*` (`NatsNotifierConfig`): nothing published here can pass for our own events.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from orchestrator.core.config_drivers import NotifierConfig
from orchestrator.core.errors import PermanentError
from orchestrator.notifiers.base import Notification, Notifier

Publish = Callable[[str, bytes], Awaitable[None]]
Flush = Callable[[], Awaitable[None]]


class NatsNotifier(Notifier):
    def __init__(
        self, config: NotifierConfig, session: aiohttp.ClientSession, publish: Publish | None = None
    ) -> None:
        super().__init__(config, session)
        self.publish = publish
        self.flush: Flush | None = None
        """The connection's flush (a PING answered by the server), for `check`; set by whoever owns it."""

    async def send(self, note: Notification) -> dict[str, Any] | None:
        assert self.config.nats is not None
        if self.publish is None:
            raise PermanentError(f"notifier {self.name}: no NATS connection in this process")
        body = json.dumps(note.body(self.name), separators=(",", ":")).encode()
        # the Bus maps NATS failures onto TemporaryError/PermanentError already (bus.kv.nats_errors)
        await self.publish(self.config.nats.subject, body)
        return None

    async def check(self) -> str:
        """A flush: the NATS server answered a PING on the connection the notifications go out on. (That
        someone consumes the subject is not ours to know.)"""
        if self.flush is None:
            raise PermanentError(f"notifier {self.name}: no NATS connection in this process")
        await self.flush()
        return "NATS connection answers (flush)"
