"""Signed webhooks: `X-Failover-Signature` and `X-Failover-Id` (DESIGN §5, README "Webhook signatures").

Outgoing webhooks (notifications, the webhook balancer) sign with them so receivers can check origin and
reject replays; `verify` is the receiver side, used by our tests and offered to integrators.

    X-Failover-Id: <32 lowercase hex digits, fresh for every request>
    X-Failover-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">,
                          v2=<hex HMAC-SHA256 of "<t>.<id>.<body>">          (one line, no spaces)

The timestamp bounds a replay to the tolerance window; the id, covered by `v2`, lets a receiver drop a
request it has already seen inside that window. `v1` is the original scheme, still sent so receivers
written before ids keep working; a receiver that dedupes must check `v2`, or a replay could swap the id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

HEADER = "X-Failover-Signature"
ID_HEADER = "X-Failover-Id"

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_ID = re.compile(r"[0-9a-f]{32}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _mac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None, message_id: str | None = None) -> str:
    """The signature header; with `message_id`, `v2` covers it too."""
    t = int(time.time()) if timestamp is None else timestamp
    header = f"t={t},v1={_mac(secret, f'{t}.'.encode() + body)}"
    if message_id is not None:
        header += f",v2={_mac(secret, f'{t}.{message_id}.'.encode() + body)}"
    return header


def sign_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Both headers for one request, with a fresh random id."""
    message_id = secrets.token_hex(16)
    return {ID_HEADER: message_id, HEADER: sign(secret, body, timestamp, message_id)}


def verify(
    secret: str,
    body: bytes,
    header: str,
    tolerance_s: int = 300,
    now: float | None = None,
    message_id: str | None = None,
) -> bool:
    """True when `header` is a valid signature of `body` no older (or newer) than `tolerance_s`.

    With `message_id` (the request's `X-Failover-Id`), `v2` must sign it: pass it when deduplicating on
    the id. Total: any header, body or id that is not a valid signature answers False, never raises.
    """
    try:
        if not isinstance(header, str) or not isinstance(body, bytes | bytearray | memoryview):
            return False
        parts: dict[str, str] = {}
        for item in header.split(","):
            key, sep, value = item.strip().partition("=")
            if not sep or key in parts:
                return False
            parts[key] = value
        stamp = parts.get("t", "")
        if not _TIMESTAMP.fullmatch(stamp):
            return False
        t = int(stamp)
        current = time.time() if now is None else now
        if not abs(current - t) <= tolerance_s:  # also False for a NaN clock
            return False
        if message_id is None:
            given, message = parts.get("v1", ""), f"{t}.".encode() + bytes(body)
        else:
            if not isinstance(message_id, str) or not _ID.fullmatch(message_id):
                return False
            given, message = parts.get("v2", ""), f"{t}.{message_id}.".encode() + bytes(body)
        if not _DIGEST.fullmatch(given):
            return False
        return hmac.compare_digest(_mac(secret, message).encode(), given.encode())
    except (TypeError, ValueError, UnicodeError, OverflowError):
        return False
