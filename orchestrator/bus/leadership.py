"""Leader election with fencing (DESIGN §2.4, §5, §6b, §12): one replica acts, every replica watches.

The lease is the `leader` key of KV `failover-leader`, whose bucket TTL is the lease TTL. A follower
takes it with `kv.create` (possible only once the key is gone: the leader died or stopped renewing);
its `term` is the revision at acquisition. The leader renews with compare-and-set of `{holder, term}`
against the revision it last wrote. It stops acting at TTL minus a margin after its last successful
renewal, by its own monotonic clock, so it has stepped down before anyone else can take the lease, even
when it cannot reach NATS to learn that. `fence()` raises for anything that would act without a
current lease: actuators and the run executor call it right before every effect.

Liveness (§12):
- A leader that stepped down only because it could not reach NATS (or JetStream) keeps the term and the
  revision it holds. When NATS answers again it compare-and-sets that revision at once (woken by the
  reconnect, not after the TTL): if nobody wrote the lease meanwhile, it leads again under the same term.
- Election callbacks (persist the view, resume runs, catch up balancers) run in a task of their own, so
  the loop goes on renewing while they work: a slow balancer cannot cost the lease. Deposition cancels
  them before the deposed callbacks run.
- Every replica writes its vantage name into the lease it holds, and followers read it: the daemon's
  in-process probing is one vantage whatever the replicas are called (`daemon_vantages`).

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
from orchestrator.core.aio import wait_any
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
        vantage: str | None = None,
        deposed_timeout_s: float = 10.0,
    ) -> None:
        if margin_s >= ttl_s or renew_s >= ttl_s - margin_s:
            raise PermanentError("leadership: need renew_interval < lease_ttl - margin")
        self.bus = bus
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.margin_s = margin_s
        self.holder = holder or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self.vantage = vantage
        self.deposed_timeout_s = deposed_timeout_s
        self.term: int | None = None
        self._revision: int | None = None
        self._held: tuple[int, int] | None = None
        """(term, revision) kept after stepping down for lack of NATS: resumed by CAS when it answers."""
        self._valid_until = float("-inf")
        self.on_elected: list[Callback] = []
        self.on_deposed: list[Callable[[], Awaitable[None]]] = []
        self.elected = asyncio.Event()
        self.daemon_vantages: set[str] = {vantage} if vantage else set()
        """Vantage names the daemon's replicas report under, read from the leases they held."""
        self._callbacks: asyncio.Task[None] | None = None
        self.elections = 0
        self.resumptions = 0

    @property
    def _io_timeout_s(self) -> float:
        """Bound on one lease read or write: a call that hangs must not hold up the loop past a renewal."""
        return max(self.renew_s, 1.0)

    @property
    def is_leader(self) -> bool:
        return self.term is not None and self.clock() < self._valid_until

    def fence(self) -> None:
        """Raise unless this replica holds a current lease: called right before every effect."""
        if not self.is_leader:
            raise NotLeader(f"{self.holder} does not hold the leader lease (term {self.term}); not acting")

    def describe(self) -> dict[str, Any]:
        return {"holder": self.holder, "leader": self.is_leader, "term": self.term, "vantage": self.vantage}

    async def run(self, stop: asyncio.Event) -> None:
        if self.bus is None:  # embedded NATS: the only replica
            self.term = 1
            self._valid_until = float("inf")
            await self._elected()
            await stop.wait()
            await self._cancel_callbacks()
            return
        try:
            while not stop.is_set():
                self.bus.reconnected.clear()  # a reconnect during the step wakes the next one at once
                await self.step()
                await wait_any(stop, self.bus.reconnected, timeout_s=self.renew_s)
        finally:
            await self._cancel_callbacks()
            if self.term is not None and self.bus is not None:
                await self._release()
                await self._run_deposed()  # even when the loop died: nothing keeps acting on a stale term

    async def step(self) -> None:
        """One turn of the loop: renew, resume, or try to acquire."""
        assert self.bus is not None
        if self.term is not None and not self.is_leader:
            # our own clock says the lease may have run out: stop acting now, keep what we held
            assert self._revision is not None
            self._held = (self.term, self._revision)
            await self._deposed("the lease ran out before a renewal succeeded (NATS unreachable?)")
        if not self.bus.connected:
            return  # a write now would wait in nats-py's buffer and land late; the reconnect wakes us
        if self.term is not None:
            await self._renew()
        elif self._held is not None:
            await self._resume()
        else:
            await self._acquire()

    async def _acquire(self) -> None:
        assert self.bus is not None
        started = self.clock()
        try:
            revision = await self._cas(self._value(None), None)
        except ConflictError:
            await self._learn_holder()  # someone leads (perhaps we do: a renewal that landed late)
            return
        except (OrchestratorError, TimeoutError) as e:
            log.warning("leader.acquire_failed", error=str(e) or "timeout")
            return
        try:  # the term is the revision at acquisition; write it into the lease itself
            self._revision = await self._cas(self._value(revision), revision)
        except (OrchestratorError, TimeoutError) as e:
            log.warning("leader.acquire_failed", error=str(e))
            return
        self.term = revision
        self._valid_until = started + self.ttl_s - self.margin_s
        self.elections += 1
        await self._elected()

    async def _resume(self) -> None:
        """NATS answers again: if nobody wrote the lease since our last renewal, lead on, same term."""
        assert self.bus is not None and self._held is not None
        term, revision = self._held
        started = self.clock()
        try:
            self._revision = await self._cas(self._value(term), revision)
        except ConflictError:
            self._held = None
            await self._acquire()  # ours after all (a late renewal), expired (take it anew), or another's
            return
        except (OrchestratorError, TimeoutError) as e:
            log.info("leader.resume_failed", term=term, error=str(e) or "timeout")
            return
        await self._lead_again(term, started)

    async def _lead_again(self, term: int, started: float) -> None:
        self._held = None
        self.term = term
        self._valid_until = started + self.ttl_s - self.margin_s
        self.resumptions += 1
        log.info("leader.resumed", holder=self.holder, term=term)
        await self._elected()

    async def _cas(self, value: dict[str, Any], last: int | None) -> int:
        """A lease write, bounded: a write that hangs must not hold up the loop past a renewal."""
        assert self.bus is not None
        async with asyncio.timeout(self._io_timeout_s):
            return await Bus.kv_cas(self.bus.kv.leader, LEADER_KEY, value, last)

    async def _renew(self) -> None:
        assert self.bus is not None
        started = self.clock()
        try:
            self._revision = await self._cas(self._value(self.term), self._revision)
        except ConflictError:
            if await self._still_ours():
                return  # a renewal we gave up waiting for landed after all: same term, carry on
            self._held = None
            await self._deposed("another replica holds the lease now")
            return
        except (OrchestratorError, TimeoutError) as e:
            log.warning(
                "leader.renew_failed",
                error=str(e) or "timeout",
                valid_for_s=round(self._valid_until - self.clock(), 2),
            )
            return
        self._valid_until = started + self.ttl_s - self.margin_s

    async def _read_lease(self) -> tuple[dict[str, Any], int] | None:
        """The lease record and its revision, or None when absent, unreadable or not a record."""
        assert self.bus is not None
        try:
            async with asyncio.timeout(self._io_timeout_s):
                found = await Bus.kv_get(self.bus.kv.leader, LEADER_KEY)
        except (OrchestratorError, TimeoutError, ValueError):
            return None
        if found is None or not isinstance(found[0], dict):
            return None
        return found[0], found[1]

    async def _still_ours(self) -> bool:
        """After a lost compare-and-set: does the lease still name us under our term? (A renewal whose
        wait timed out can be applied later, moving the revision past the one we hold.)"""
        assert self.bus is not None
        found = await self._read_lease()
        if found is None:
            return False
        record, revision = found
        if record.get("holder") != self.holder or record.get("term") != self.term:
            return False
        self._revision = revision
        return True

    async def _learn_holder(self) -> None:
        """Read who leads: to know the vantage its in-process prober reports under, and to find out
        that it is us. A renewal sent just as NATS went away can wait in the client's buffer and land on
        reconnect, after we stepped down: the lease then names us with a revision we never saw. It is
        still our term, and nobody else can have held it since, so we lead on under it."""
        assert self.bus is not None
        started = self.clock()
        found = await self._read_lease()
        if found is None:
            return
        record, revision = found
        vantage = record.get("vantage")
        if isinstance(vantage, str) and vantage and len(self.daemon_vantages) < 1000:
            self.daemon_vantages.add(vantage)
        term = record.get("term")
        if record.get("holder") == self.holder and isinstance(term, int) and self.term is None:
            try:
                self._revision = await self._cas(self._value(term), revision)
            except (OrchestratorError, TimeoutError):
                return
            await self._lead_again(term, started)

    async def _release(self) -> None:
        """On a clean shutdown hand the lease over at once instead of making followers wait for the TTL."""
        assert self.bus is not None
        if self.is_leader and self.bus.connected:
            # only the revision we wrote: a delete that landed late must never remove a successor's lease
            with contextlib.suppress(OrchestratorError):
                await Bus.kv_delete(self.bus.kv.leader, LEADER_KEY, last=self._revision)
        self.term = None
        self._valid_until = float("-inf")

    def _value(self, term: int | None) -> dict[str, Any]:
        return {"holder": self.holder, "term": term, "renewed_at": time.time(), "vantage": self.vantage}

    async def _elected(self) -> None:
        assert self.term is not None
        term = self.term
        log.info("leader.elected", holder=self.holder, term=term)
        self.elected.set()
        await self._cancel_callbacks()
        self._callbacks = asyncio.get_running_loop().create_task(
            self._run_elected(term), name=f"leader-elected-{term}"
        )

    async def _run_elected(self, term: int) -> None:
        """The election callbacks, outside the lease loop; each bounds its own work."""
        for callback in self.on_elected:
            if not self.is_leader or self.term != term:
                return
            try:
                await callback(term)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("leader.elected_callback_failed", term=term)

    async def _cancel_callbacks(self) -> None:
        task, self._callbacks = self._callbacks, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _deposed(self, why: str) -> None:
        log.warning("leader.deposed", holder=self.holder, term=self.term, reason=why)
        self.term = None
        self._revision = None
        self._valid_until = float("-inf")
        self.elected.clear()
        await self._cancel_callbacks()
        await self._run_deposed()

    async def _run_deposed(self) -> None:
        for callback in self.on_deposed:
            try:
                async with asyncio.timeout(self.deposed_timeout_s):
                    await callback()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("leader.deposed_callback_failed")


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
