"""Who may do what on the bus (DESIGN §12 "Bus trust"): the NATS permission blocks of the three roles.

One source for three readers: the embedded nats-server's generated configuration, the blocks the README
gives operators to paste into their own server's `authorization`, and the tests that run a real
nats-server with exactly those blocks. `failover.internal.cmd` carries commands a follower has already
authorized (`{actor, role}`, never a token): only the daemon role may publish or subscribe to it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import ssl
from pathlib import Path
from typing import Any

from orchestrator.core import subjects
from orchestrator.core.config_daemon import NatsConfig
from orchestrator.core.errors import PermanentError

INTERNAL_COMMANDS = subjects.INTERNAL_COMMANDS

KV_BUCKETS = (subjects.KV_LEADER, subjects.KV_RUNS, subjects.KV_STATE)


def prober_inbox(vantage: str) -> str:
    """A prober's reply prefix (`nats.inbox_prefix`): its credential may read only its own replies, not
    every `_INBOX` answer on the bus (run records, command answers)."""
    return f"_INBOX.prober-{vantage}"


def _kv_read(buckets: tuple[str, ...]) -> list[str]:
    """What a KV get needs: the bucket's stream info, and a direct or stored-message get."""
    allow = ["$JS.API.INFO"]
    for bucket in buckets:
        allow += [
            f"$JS.API.STREAM.INFO.KV_{bucket}",
            f"$JS.API.DIRECT.GET.KV_{bucket}.>",
            f"$JS.API.STREAM.MSG.GET.KV_{bucket}",
        ]
    return allow


def permissions(role: str, vantage: str | None = None) -> dict[str, Any]:
    """The `permissions` block of `role`: `daemon`, `prober` (bound to `vantage`) or `viewer`."""
    if role == "daemon":
        return {
            "publish": {
                "allow": [
                    "failover.>",  # health (in-process prober), events, runs, audit, commands
                    "$JS.API.>",  # streams, KV buckets, consumers
                    *(f"$KV.{bucket}.>" for bucket in KV_BUCKETS),
                    "$JS.ACK.>",
                    "$JS.FC.>",  # flow control of ordered consumers (KV watch, replay)
                    "_INBOX.>",  # answers to `failover.cmd` callers
                ]
            },
            "subscribe": {"allow": ["failover.>", "_INBOX.>"]},
        }
    if role == "prober":
        if not vantage:
            raise ValueError("a prober's permissions are bound to its vantage")
        return {
            "publish": {"allow": [f"{subjects.HEALTH_PREFIX}.{vantage}.>", *_kv_read((subjects.KV_STATE,))]},
            "subscribe": {"allow": [f"{prober_inbox(vantage)}.>"]},
        }
    if role == "viewer":
        return {
            "publish": {"allow": [subjects.COMMANDS, *_kv_read(KV_BUCKETS)]},
            "subscribe": {"allow": [subjects.EVENTS_ALL, subjects.RUNS_ALL, subjects.AUDIT, "_INBOX.>"]},
        }
    raise ValueError(f"unknown role {role!r} (daemon, prober, viewer)")


class EnvRef(str):
    """A value nats-server reads from its environment (`$NAME`, unquoted): the README's placeholders."""


def render(value: Any, indent: int = 0) -> str:
    """nats-server configuration syntax (JSON-like, one key per line), as the README shows it."""
    pad = "  " * indent
    if isinstance(value, EnvRef):
        return f"${value}"
    if isinstance(value, dict):
        lines = [f"{pad}  {key}: {render(item, indent + 1).lstrip()}" for key, item in value.items()]
        return "{\n" + "\n".join(lines) + f"\n{pad}}}"
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(item) for item in value) + "]"
    return json.dumps(value)


def user_block(role: str, vantage: str | None = None, **auth: str) -> str:
    """One entry of `authorization.users`: `auth` is `user`/`password` or `nkey`; the role's permissions."""
    return render({**auth, "permissions": permissions(role, vantage)})


def readme_blocks() -> dict[str, str]:
    """The blocks the README documents, with placeholders an operator replaces."""
    return {
        "daemon": user_block("daemon", user="failover", password=EnvRef("FAILOVER_NATS_PASSWORD")),
        "prober": user_block("prober", "eu-prober", user="eu-prober", password=EnvRef("PROBER_EU_PASSWORD")),
        "viewer": user_block("viewer", user="viewer", password=EnvRef("VIEWER_NATS_PASSWORD")),
    }


def server_config(users: list[str], extra: str = "") -> str:
    """A nats-server configuration with these `authorization.users` entries (from `user_block`): with
    users configured the server refuses anonymous clients."""
    return "authorization {\n  users = [\n" + ",\n".join(users) + "\n  ]\n}\n" + extra


def write_secret(path: Path, value: str) -> None:
    """Create `path` with mode 0600 from the start (never world-readable, even for an instant)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


def generated_password(path: Path) -> str:
    """The password stored at `path`, made (256 bits, 0600) on first use and reused across restarts."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if len(value) < 32:
        value = secrets.token_urlsafe(32)
        write_secret(path, value + "\n")
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return value


def embedded_config(auth_dir: Path) -> tuple[str, dict[str, str]]:
    """The embedded server's configuration and the generated passwords by user (`daemon`, `viewer`).

    The daemon connects as `daemon`; `viewer` is there for a person watching with the `nats` CLI
    (`auth/viewer.password`). Nothing else can connect: a stand-alone prober needs `nats.url`."""
    passwords = {role: generated_password(auth_dir / f"{role}.password") for role in ("daemon", "viewer")}
    users = [user_block(role, user=role, password=pw) for role, pw in passwords.items()]
    return server_config(users), passwords


# the client side: connect options and what may be shown of a URL ------------------------------------


def _tls_context(cfg: NatsConfig) -> ssl.SSLContext | None:
    if cfg.tls is None:
        return None
    try:
        ctx = ssl.create_default_context(cafile=cfg.tls.ca and os.path.expanduser(cfg.tls.ca))
        if cfg.tls.cert:
            ctx.load_cert_chain(
                os.path.expanduser(cfg.tls.cert), cfg.tls.key and os.path.expanduser(cfg.tls.key)
            )
    except (OSError, ssl.SSLError) as e:
        raise PermanentError(f"nats.tls: cannot load the CA or client certificate: {e}") from e
    return ctx


_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


def redact_url(text: str) -> str:
    """`nats://user:secret@host` → `nats://***@host`, in a URL or in any message that quotes one."""
    return _USERINFO.sub("***@", text)


def _secret_file(path: str, what: str) -> str:
    try:
        value = Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise PermanentError(f"nats.{what}: cannot read {path}: {e.strerror or type(e).__name__}") from e
    if not value:
        raise PermanentError(f"nats.{what}: {path} is empty")
    return value


def connect_options(cfg: NatsConfig) -> dict[str, Any]:
    """nats-py's connect options for the configured authentication; secrets read from files here, so
    a rotated file is picked up at the next connect."""
    options: dict[str, Any] = {"inbox_prefix": cfg.inbox_prefix}
    if cfg.creds:
        options["user_credentials"] = os.path.expanduser(cfg.creds)
    if cfg.nkey:
        options["nkeys_seed_str"] = _secret_file(cfg.nkey, "nkey")
    if cfg.user:
        options["user"] = cfg.user
    if cfg.password:
        options["password"] = cfg.password.get_secret_value()
    elif cfg.password_file:
        options["password"] = _secret_file(cfg.password_file, "password_file")
    if cfg.token:
        options["token"] = cfg.token.get_secret_value()
    elif cfg.token_file:
        options["token"] = _secret_file(cfg.token_file, "token_file")
    tls = _tls_context(cfg)
    if tls:
        options["tls"] = tls
        if cfg.tls and cfg.tls.server_name:
            options["tls_hostname"] = cfg.tls.server_name
    return options
