"""KV helpers that speak our errors: JSON values, revisions, create-if-absent and compare-and-set.

Split from `client` so the mapping of nats KV exceptions onto TemporaryError / ConflictError sits in
one place; `Bus` keeps them as static methods (`Bus.kv_get(...)`), which is how callers use them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from orchestrator.bus import records
from orchestrator.core.aio import gather_bounded
from orchestrator.core.errors import PermanentError, TemporaryError

log = structlog.get_logger(__name__)


class ConflictError(PermanentError):
    """A compare-and-set lost: another writer (another leader) changed the value first."""


EXPECTED = (
    nats.js.errors.KeyNotFoundError,
    nats.js.errors.KeyDeletedError,
    nats.js.errors.KeyWrongLastSequenceError,
    nats.js.errors.NoKeysError,
)
"""Outcomes of a KV call that callers handle themselves (absent key, lost compare-and-set, no keys)."""


@contextlib.contextmanager
def nats_errors(what: str) -> Iterator[None]:
    """Map whatever nats-py raises onto our roots (DESIGN §12, liveness).

    Every JetStream error is temporary: while a NATS cluster elects a JetStream meta leader or a stream
    leader, the same call answers 503 (`ServiceUnavailableError`), "no responders"
    (`NoStreamResponseError`), 404 or a timeout for a few seconds, and then works again. Only a 400 (the
    request itself is wrong) is permanent. Callers handle the expected outcomes (a missing key, a lost
    compare-and-set) before this.
    """
    try:
        yield
    except EXPECTED:
        raise
    except nats.js.errors.BadRequestError as e:
        raise PermanentError(f"{what} refused: {e}") from e
    except (nats.errors.Error, TimeoutError, OSError) as e:
        raise TemporaryError(f"{what} failed: {type(e).__name__} {e}".strip()) from e


async def kv_get(kv: KeyValue, key: str) -> tuple[Any, int] | None:
    """JSON value and revision, or None when absent or deleted."""
    try:
        with nats_errors(f"KV get {key}"):
            entry = await kv.get(key)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None
    if entry.value is None:
        return None
    revision = int(entry.revision or 0)
    try:
        value = json.loads(entry.value)
    except (ValueError, RecursionError) as e:  # not JSON (UnicodeDecodeError is a ValueError)
        reason: str | None = f"not JSON: {type(e).__name__}"
    else:
        reason = records.check(kv._name, key, value)
    if reason is not None:
        await quarantine(kv, key, bytes(entry.value), revision, reason)
        return None
    return value, revision


QuarantineHook = Callable[[str, str, bytes, int, str], Awaitable[None]]
QUARANTINE_ATTR = "_failover_quarantine"


def set_quarantine(kv: KeyValue, hook: QuarantineHook) -> None:
    """Where `kv_get` sends a bad record of this bucket (the Bus that opened it sets this)."""
    setattr(kv, QUARANTINE_ATTR, hook)


async def quarantine(kv: KeyValue, key: str, raw: bytes, revision: int, reason: str) -> None:
    """A bad record is moved aside and reported by the bucket's hook; without one it is only logged.
    Never raises: the caller goes on as if the key were absent."""
    log.error("kv.bad_record", bucket=kv._name, key=key, revision=revision, reason=reason)
    hook = getattr(kv, QUARANTINE_ATTR, None)
    if hook is None:
        return
    try:
        await hook(kv._name, key, raw, revision, reason)
    except Exception:  # reporting a bad record must not become a second failure
        log.exception("kv.quarantine_failed", bucket=kv._name, key=key)


async def kv_put(kv: KeyValue, key: str, value: Any) -> int:
    with nats_errors(f"KV put {key}"):
        return int(await kv.put(key, json.dumps(value, separators=(",", ":")).encode()))


async def kv_create(kv: KeyValue, key: str, value: Any) -> bool:
    """Write only if absent (records the value before our first change). False if it existed."""
    try:
        with nats_errors(f"KV create {key}"):
            await kv.create(key, json.dumps(value, separators=(",", ":")).encode())
    except nats.js.errors.KeyWrongLastSequenceError:
        return False
    return True


async def kv_cas(kv: KeyValue, key: str, value: Any, last: int | None) -> int:
    """Compare-and-set: create when `last` is None, else update only if the revision is still
    `last`. Returns the new revision; raises ConflictError when someone else wrote in between."""
    data = json.dumps(value, separators=(",", ":")).encode()
    try:
        with nats_errors(f"KV write {key}"):
            if last is None:
                return int(await kv.create(key, data))
            return int(await kv.update(key, data, last=last))
    except nats.js.errors.KeyWrongLastSequenceError as e:
        raise ConflictError(f"KV {key}: written by someone else (expected revision {last})") from e


KV_READS_AT_ONCE = 32
"""Gets in flight when listing a prefix: a daemon's start reads `cluster.<name>` for every cluster, and
10,000 gets one after the other took seconds."""
SUBJECTS_PAGE = 100_000
"""How many subjects one stream-info answer lists; past that, the slower listing."""


async def kv_keys(kv: KeyValue, prefix: str) -> list[str]:
    """The keys starting with `prefix` (`cluster.`; `pause` for `pause` and `pause.cluster.x`), deleted ones
    included (`kv_get` says None for those), from the stream's subject list: one JetStream answer.

    nats-py's `kv.keys()` makes a consumer per call and, measured here, about once in 300 calls ends
    before the first key, so an empty answer could not be told from an empty bucket: a daemon starting
    on such an answer would forget every persisted cluster state. The stream's own count does not race.
    """
    pre = kv._pre  # the bucket's subject prefix, `$KV.<bucket>.` (nats-py keeps it private)
    token = prefix if not prefix or prefix.endswith(".") else ""  # `pause` also lists `pause.cluster.x`
    with nats_errors(f"KV keys {prefix}"):
        info = await kv._js.stream_info(kv._stream, subjects_filter=f"{pre}{token}>")
    subjects = info.state.subjects or {}
    if len(subjects) < SUBJECTS_PAGE:
        keys = (subject.removeprefix(pre) for subject in subjects)
        return [key for key in keys if key.startswith(prefix)]
    try:  # a very large bucket: the consumer-based listing, filtered by the caller
        with nats_errors("KV keys"):
            return [key for key in await kv.keys() if key.startswith(prefix)]
    except nats.js.errors.NoKeysError:
        return []


async def kv_entries(kv: KeyValue, prefix: str) -> dict[str, tuple[Any, int]]:
    """Every live key under `prefix` (dot-separated, e.g. `cluster.`) with its JSON value and revision."""
    keys = sorted(await kv_keys(kv, prefix))
    found = await gather_bounded([partial(kv_get, kv, key) for key in keys], KV_READS_AT_ONCE)
    return {key: entry for key, entry in zip(keys, found, strict=True) if entry is not None}


async def kv_items(kv: KeyValue, prefix: str) -> dict[str, Any]:
    """Every live key under `prefix` with its JSON value."""
    return {key: value for key, (value, _revision) in (await kv_entries(kv, prefix)).items()}


async def kv_delete(kv: KeyValue, key: str, last: int | None = None) -> None:
    """Delete `key`; with `last`, only while its revision is still `last` (else ConflictError)."""
    try:
        with nats_errors(f"KV delete {key}"):
            await kv.delete(key, last=last)
    except nats.js.errors.KeyNotFoundError:
        return
    except nats.js.errors.KeyWrongLastSequenceError as e:
        raise ConflictError(f"KV {key}: written by someone else (expected revision {last})") from e
