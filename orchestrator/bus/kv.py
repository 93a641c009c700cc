"""KV helpers that speak our errors: JSON values, revisions, create-if-absent and compare-and-set.

Split from `client` so the mapping of nats KV exceptions onto TemporaryError / ConflictError sits in
one place; `Bus` keeps them as static methods (`Bus.kv_get(...)`), which is how callers use them.
"""

from __future__ import annotations

import json
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from orchestrator.core.errors import PermanentError, TemporaryError


class ConflictError(PermanentError):
    """A compare-and-set lost: another writer (another leader) changed the value first."""


async def kv_get(kv: KeyValue, key: str) -> tuple[Any, int] | None:
    """JSON value and revision, or None when absent or deleted."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    except nats.errors.TimeoutError as e:
        raise TemporaryError(f"KV get {key} timed out") from e
    if entry.value is None:
        return None
    return json.loads(entry.value), int(entry.revision or 0)


async def kv_put(kv: KeyValue, key: str, value: Any) -> int:
    try:
        return int(await kv.put(key, json.dumps(value, separators=(",", ":")).encode()))
    except nats.errors.TimeoutError as e:
        raise TemporaryError(f"KV put {key} timed out") from e


async def kv_create(kv: KeyValue, key: str, value: Any) -> bool:
    """Write only if absent (records the value before our first change). False if it existed."""
    try:
        await kv.create(key, json.dumps(value, separators=(",", ":")).encode())
    except nats.js.errors.KeyWrongLastSequenceError:
        return False
    except nats.errors.TimeoutError as e:
        raise TemporaryError(f"KV create {key} timed out") from e
    return True


async def kv_cas(kv: KeyValue, key: str, value: Any, last: int | None) -> int:
    """Compare-and-set: create when `last` is None, else update only if the revision is still
    `last`. Returns the new revision; raises ConflictError when someone else wrote in between."""
    data = json.dumps(value, separators=(",", ":")).encode()
    try:
        if last is None:
            return int(await kv.create(key, data))
        return int(await kv.update(key, data, last=last))
    except nats.js.errors.KeyWrongLastSequenceError as e:
        raise ConflictError(f"KV {key}: written by someone else (expected revision {last})") from e
    except nats.errors.TimeoutError as e:
        raise TemporaryError(f"KV write {key} timed out") from e


async def kv_entries(kv: KeyValue, prefix: str) -> dict[str, tuple[Any, int]]:
    """Every live key under `prefix` (dot-separated, e.g. `cluster.`) with its JSON value and revision."""
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return {}
    except nats.errors.TimeoutError as e:
        raise TemporaryError("KV keys timed out") from e
    out: dict[str, tuple[Any, int]] = {}
    for key in keys:
        if key.startswith(prefix):
            found = await kv_get(kv, key)
            if found is not None:
                out[key] = found
    return out


async def kv_items(kv: KeyValue, prefix: str) -> dict[str, Any]:
    """Every live key under `prefix` with its JSON value."""
    return {key: value for key, (value, _revision) in (await kv_entries(kv, prefix)).items()}


async def kv_delete(kv: KeyValue, key: str) -> None:
    try:
        await kv.delete(key)
    except nats.js.errors.KeyNotFoundError:
        return
    except nats.errors.TimeoutError as e:
        raise TemporaryError(f"KV delete {key} timed out") from e
