"""`X-Failover-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (DESIGN §5).

Outgoing webhooks (notifications, the webhook balancer) sign with it so receivers can check origin and
reject replays; `verify` is the receiver side, used by our tests and offered to integrators.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Failover-Signature"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance_s: int = 300, now: float | None = None) -> bool:
    """True when the header is a valid signature of `body` no older than `tolerance_s`."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        t = int(parts["t"])
        given = parts["v1"]
    except (ValueError, KeyError):
        return False
    current = time.time() if now is None else now
    if abs(current - t) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)
