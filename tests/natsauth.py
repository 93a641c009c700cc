"""Helpers for the bus security tests: a real nats-server configured with the README's permission
blocks (the same `orchestrator.bus.natsauth` source), and raw clients holding one credential."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient

from orchestrator.bus import natsauth
from orchestrator.bus.embedded import EmbeddedNats

VANTAGE = "eu-prober"


@dataclass
class Secured:
    server: EmbeddedNats
    passwords: dict[str, str]
    errors: list[str]

    def url(self, user: str, password: str | None = None) -> str:
        return f"nats://{user}:{password or self.passwords[user]}@127.0.0.1:{self.server.port}"

    @asynccontextmanager
    async def client(self, user: str, **options: Any) -> AsyncIterator[NatsClient]:
        """A raw nats-py client as `user`; permission errors the server sends land in `self.errors`."""

        async def on_error(e: Exception) -> None:
            self.errors.append(str(e))

        nc = await nats.connect(
            f"nats://127.0.0.1:{self.server.port}",
            user=user,
            password=self.passwords[user],
            error_cb=on_error,
            allow_reconnect=False,
            **options,
        )
        try:
            yield nc
        finally:
            await nc.close()


@asynccontextmanager
async def secured_server(work: Path) -> AsyncIterator[Secured]:
    """nats-server whose users are the three roles, each with exactly its README permission block."""
    passwords = {name: secrets.token_urlsafe(24) for name in ("daemon", VANTAGE, "viewer")}
    users = [
        natsauth.user_block("daemon", user="daemon", password=passwords["daemon"]),
        natsauth.user_block("prober", VANTAGE, user=VANTAGE, password=passwords[VANTAGE]),
        natsauth.user_block("viewer", user="viewer", password=passwords["viewer"]),
    ]
    server = EmbeddedNats(work / "nats", config=natsauth.server_config(users))
    await server.start()
    try:
        yield Secured(server, passwords, [])
    finally:
        await server.stop()


async def server_with(work: Path, config: str) -> EmbeddedNats:
    server = EmbeddedNats(work / "nats", config=config)
    await server.start()
    return server


async def settle(nc: NatsClient) -> None:
    """A round trip: everything this client sent before has reached the server (and been refused)."""
    await nc.flush(timeout=2)
    await asyncio.sleep(0)
