"""Leader election with fencing (DESIGN §2.4, §5, §6b): one replica acts, every replica watches.

The lease is the `leader` key of KV `failover-leader`, whose bucket TTL is the lease TTL. A follower
takes it with `kv.create` (possible only once the key is gone: the leader died or stopped renewing);
its `term` is the revision at acquisition. The leader renews with compare-and-set of `{holder, term}`
against the revision it last wrote. It stops acting at TTL minus a margin after its last successful
renewal, by its own monotonic clock, so it has stepped down before anyone else can take the lease, even
when it cannot reach NATS to learn that. `fence()` raises for anything that would act without a
current lease: actuators and the run executor call it before every effect.

With an embedded NATS there is nobody to elect with: the single replica leads, and a second daemon on
the same `state_dir` is refused by an exclusive lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import structlog

from orchestrator.bus.client import Bus
from orchestrator.bus.kv import ConflictError
from orchestrator.core.errors import OrchestratorError, PermanentError

log = structlog.get_logger(__name__)

LEADER_KEY = "leader"


class NotLeader(PermanentError):
    """Refused: this replica does not hold a current lease (it may have been deposed)."""


Callback = Callable[[int], Awaitable[None]]


class Leadership:
    def __init__(
        self,
        bus: Bus | None,
        ttl_s: float = 10.0,
        renew_s: float = 2.0,
        margin_s: float = 2.0,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if margin_s >= ttl_s or renew_s >= ttl_s - margin_s:
            raise PermanentError("leadership: need renew_interval < lease_ttl - margin")
        self.bus = bus
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.margin_s = margin_s
        self.holder = holder or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self.term: int | None = None
        self._revision: int | None = None
        self._valid_until = float("-inf")
        self.on_elected: list[Callback] = []
        self.on_deposed: list[Callable[[], Awaitable[None]]] = []
        self.elected = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.term is not None and self.clock() < self._valid_until

    def fence(self) -> None:
        """Raise unless this replica holds a current lease: called before every effect."""
        if not self.is_leader:
            raise NotLeader(f"{self.holder} does not hold the leader lease (term {self.term}); not acting")

    def describe(self) -> dict[str, Any]:
        return {"holder": self.holder, "leader": self.is_leader, "term": self.term}

    async def run(self, stop: asyncio.Event) -> None:
        if self.bus is None:  # embedded NATS: the only replica
            self.term = 1
            self._valid_until = float("inf")
            await self._elected()
            await stop.wait()
            return
        try:
            while not stop.is_set():
                if self.term is not None and not self.is_leader:
                    await self._deposed("the lease ran out before a renewal succeeded")
                await (self._renew() if self.term is not None else self._acquire())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.renew_s)
        finally:
            if self.term is not None and self.bus is not None:
                await self._release()

    async def _acquire(self) -> None:
        assert self.bus is not None
        started = self.clock()
        try:
            revision = await Bus.kv_cas(self.bus.kv.leader, LEADER_KEY, self._value(None), None)
        except ConflictError:
            return  # someone leads
        except OrchestratorError as e:
            log.warning("leader.acquire_failed", error=str(e))
            return
        try:  # the term is the revision at acquisition; write it into the lease itself
            self._revision = await Bus.kv_cas(self.bus.kv.leader, LEADER_KEY, self._value(revision), revision)
        except OrchestratorError as e:
            log.warning("leader.acquire_failed", error=str(e))
            return
        self.term = revision
        self._valid_until = started + self.ttl_s - self.margin_s
        await self._elected()

    async def _renew(self) -> None:
        assert self.bus is not None
        started = self.clock()
        try:
            self._revision = await Bus.kv_cas(
                self.bus.kv.leader, LEADER_KEY, self._value(self.term), self._revision
            )
        except ConflictError:
            await self._deposed("another replica holds the lease now")
            return
        except OrchestratorError as e:
            log.warning(
                "leader.renew_failed", error=str(e), valid_for_s=round(self._valid_until - self.clock(), 2)
            )
            return
        self._valid_until = started + self.ttl_s - self.margin_s

    async def _release(self) -> None:
        """On a clean shutdown hand the lease over at once instead of making followers wait for the TTL."""
        assert self.bus is not None
        if self.is_leader:
            with contextlib.suppress(OrchestratorError):
                await Bus.kv_delete(self.bus.kv.leader, LEADER_KEY)
        self.term = None

    def _value(self, term: int | None) -> dict[str, Any]:
        return {"holder": self.holder, "term": term, "renewed_at": time.time()}

    async def _elected(self) -> None:
        assert self.term is not None
        log.info("leader.elected", holder=self.holder, term=self.term)
        self.elected.set()
        for callback in self.on_elected:
            await callback(self.term)

    async def _deposed(self, why: str) -> None:
        log.warning("leader.deposed", holder=self.holder, term=self.term, reason=why)
        self.term = None
        self._revision = None
        self._valid_until = float("-inf")
        self.elected.clear()
        for callback in self.on_deposed:
            await callback()


class StateDirLock:
    """An exclusive lock on `state_dir`: with an embedded NATS a second daemon there is refused."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "daemon.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise PermanentError(
                f"another daemon already runs on {self.path.parent} with an embedded NATS, which supports "
                "one replica only; configure nats.url (a NATS cluster with JetStream) to run several replicas"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
