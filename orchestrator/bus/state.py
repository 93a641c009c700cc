"""Typed access to the `failover-state` KV bucket (DESIGN §5).

Original values are written with `kv.create`, so a second drain of an already drained cluster can never
overwrite the real original with 0; they are deleted only after a verified restore.
"""

from __future__ import annotations

import math
import time
from typing import Any

from orchestrator.bus.client import Bus

PAUSE_ALL = "pause"
PAUSE_CLUSTER_PREFIX = "pause.cluster."


def pause_key(cluster: str | None) -> str:
    """`pause` (all automation) or `pause.cluster.<c>`."""
    return f"{PAUSE_CLUSTER_PREFIX}{cluster}" if cluster else PAUSE_ALL


PAUSE_MAX_S = 30 * 86400.0
"""The longest `pause --for`: longer is refused; a pause meant to last is one without `for`."""
_LAST_TS = 253402300799.0
"""9999-12-31T23:59:59Z, the last instant a timestamp can be written as (RFC 3339, `datetime`)."""


def pause_until(value: Any) -> float | None:
    """A pause record's `until` as a timestamp that can be compared and written, or None: until resumed.

    Total on any record read back from KV: an `until` that is not a finite number (a string, a boolean,
    NaN, infinity) or lies past year 9999 means "until resumed". A pause only ever holds automation,
    so reading a damaged one as still in force is the safe side: it never starts a run, and `resume`
    lifts it.
    """
    return readable_timestamp(value.get("until") if isinstance(value, dict) else None)


def readable_timestamp(raw: Any) -> float | None:
    """`raw` as a Unix timestamp `rfc3339` can write, or None when it is not one."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    if not math.isfinite(raw) or not 0 <= raw <= _LAST_TS:
        return None
    return float(raw)


def pause_in_force(value: Any, now: float) -> bool:
    """A pause record holds until its `until` (None or unreadable: until resumed)."""
    if not isinstance(value, dict):
        return False
    until = pause_until(value)
    return until is None or until > now


def pause_record(value: dict[str, Any]) -> dict[str, Any]:
    """The record with its `until` made readable (`pause_until`), as every reader may format it."""
    return {**value, "until": pause_until(value)}


async def read_original_scale(kv: Any, cluster: str, namespace: str, kind: str, name: str) -> int | None:
    """The baseline replicas of a workload, from any handle on the state bucket (a stand-alone prober
    opens it read-only: its credential may not create or change buckets)."""
    found = await Bus.kv_get(kv, f"orig.scale.{cluster}.{namespace}.{kind.lower()}.{name}")
    return int(found[0]["replicas"]) if found else None


class StateStore:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    @property
    def _kv(self) -> Any:
        return self.bus.kv.state

    async def record_original_lb(self, balancer: str, cluster: str, weight: int) -> bool:
        return await Bus.kv_create(self._kv, f"orig.lb.{balancer}.{cluster}", {"weight": weight})

    async def original_lb(self, balancer: str, cluster: str) -> int | None:
        found = await Bus.kv_get(self._kv, f"orig.lb.{balancer}.{cluster}")
        return int(found[0]["weight"]) if found else None

    async def forget_original_lb(self, balancer: str, cluster: str) -> None:
        await Bus.kv_delete(self._kv, f"orig.lb.{balancer}.{cluster}")

    async def original_scale(self, cluster: str, namespace: str, kind: str, name: str) -> int | None:
        """Replicas recorded before our first scale-out (`orig.scale.<c>.<ns>.<kind>.<name>`)."""
        return await read_original_scale(self._kv, cluster, namespace, kind, name)

    async def get(self, key: str) -> Any:
        found = await Bus.kv_get(self._kv, key)
        return found[0] if found else None

    async def put(self, key: str, value: Any) -> None:
        await Bus.kv_put(self._kv, key, value)

    async def items(self, prefix: str) -> dict[str, Any]:
        return await Bus.kv_items(self._kv, prefix)

    async def desired_weights(self) -> dict[tuple[str, str], int]:
        """(balancer, cluster) -> the weight we set and hold (`desired.lb.<balancer>.<cluster>`)."""
        out: dict[tuple[str, str], int] = {}
        for key, value in (await self.items("desired.lb.")).items():
            _, _, balancer, cluster = key.split(".", 3)
            if isinstance(value, dict) and isinstance(value.get("weight"), int):
                out[(balancer, cluster)] = value["weight"]
        return out

    async def pause_for(self, cluster: str | None) -> tuple[str, dict[str, Any]] | None:
        """The pause in force for `cluster` (the global one first), as (key, record), or None."""
        now = time.time()
        for key in (pause_key(None), *([pause_key(cluster)] if cluster else [])):
            value = await self.get(key)
            if pause_in_force(value, now):
                return key, pause_record(value)
        return None

    async def create_if_absent(self, key: str, value: Any) -> bool:
        """kv.create: False when the key exists (an original already recorded is never overwritten)."""
        return await Bus.kv_create(self._kv, key, value)

    async def delete(self, key: str) -> None:
        await Bus.kv_delete(self._kv, key)


class MemoryStateStore(StateStore):
    """The same interface over a dict: for `failover plan` without a NATS to read from."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    async def record_original_lb(self, balancer: str, cluster: str, weight: int) -> bool:
        key = f"orig.lb.{balancer}.{cluster}"
        if key in self.data:
            return False
        self.data[key] = {"weight": weight}
        return True

    async def original_lb(self, balancer: str, cluster: str) -> int | None:
        found = self.data.get(f"orig.lb.{balancer}.{cluster}")
        return int(found["weight"]) if found else None

    async def forget_original_lb(self, balancer: str, cluster: str) -> None:
        self.data.pop(f"orig.lb.{balancer}.{cluster}", None)

    async def get(self, key: str) -> Any:
        return self.data.get(key)

    async def put(self, key: str, value: Any) -> None:
        self.data[key] = value

    async def create_if_absent(self, key: str, value: Any) -> bool:
        if key in self.data:
            return False
        self.data[key] = value
        return True

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)

    async def items(self, prefix: str) -> dict[str, Any]:
        return {k: v for k, v in self.data.items() if k.startswith(prefix)}
