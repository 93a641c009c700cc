"""Who sent a chat request: Slack's v0 signature, Mattermost's command token, our signed button context.

Every check is constant-time (`hmac.compare_digest`) and runs on the raw bytes before anything else is
parsed, so nothing unverified is acted on. A refusal says which check failed (for the audit trail and the
401), never the secret or the expected value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

SLACK_WINDOW_S = 300.0
"""Slack: a request stamped more than 5 minutes before or after our clock is refused (replays)."""
CONTEXT_TTL_S = 3600.0
"""Our Mattermost button contexts expire after an hour (the shipped approval waits 10 minutes): a
context captured from a message cannot be posted back once the run it names has long been decided."""
REPLAY_ENTRIES_MAX = 20_000
"""Signed Slack requests remembered for the window; only requests with a valid signature are stored,
so the bound is for a flood from Slack itself, not from strangers."""


class Unverified(Exception):
    """The request is not provably from the chat service; the message names the failed check."""


def _ascii(value: str) -> bytes:
    """`value` as bytes, or Unverified: a credential is ASCII, and a header or JSON string may carry
    anything (a lone surrogate from `\\udcff`, a byte above 0x7f) that must be a 401, not a 500."""
    if not value.isascii():
        raise Unverified("a credential holds characters that are not ASCII")
    return value.encode("ascii")


def _one(headers: Mapping[str, str], name: str) -> str | None:
    """A header that must appear at most once: two copies (a proxy appending, a forger hoping the
    second is checked) are refused rather than one of them picked."""
    getall = getattr(headers, "getall", None)
    values = list(getall(name, [])) if getall is not None else [v for v in [headers.get(name)] if v]
    if len(values) > 1:
        raise Unverified(f"more than one {name} header")
    return values[0] if values else None


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    """`v0=` + hex HMAC-SHA256 of `v0:<timestamp>:<body>` (Slack's "Verifying requests from Slack")."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify_slack(
    secret: str, headers: Mapping[str, str], body: bytes, now: float, replays: ReplayGuard | None = None
) -> None:
    """Raise Unverified unless `X-Slack-Signature` is the v0 signature of `body` and
    `X-Slack-Request-Timestamp` is within 5 minutes of `now`, either way (and, given `replays`, the
    request was not accepted before)."""
    timestamp = _one(headers, "X-Slack-Request-Timestamp")
    signature = _one(headers, "X-Slack-Signature")
    if not timestamp or not signature:
        missing = [
            h
            for h, v in (("X-Slack-Request-Timestamp", timestamp), ("X-Slack-Signature", signature))
            if not v
        ]
        raise Unverified(f"missing {' and '.join(missing)}")
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise Unverified("X-Slack-Request-Timestamp is not a Unix time")
    skew = now - int(timestamp)
    if abs(skew) > SLACK_WINDOW_S:
        when = "old" if skew > 0 else "ahead of our clock"
        raise Unverified(
            f"request timestamp is {abs(skew):.0f}s {when} (the window is {SLACK_WINDOW_S:.0f}s)"
        )
    expected = slack_signature(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), _ascii(signature.strip())):
        raise Unverified("signature does not match (wrong signing secret, or the body was altered)")
    if replays is not None:
        replays.check(timestamp, signature, now)


def verify_token(expected: str, given: str | None) -> None:
    """Mattermost's slash-command token (form field `token`, or `Authorization: Token <t>`)."""
    if not given or not given.isascii() or not hmac.compare_digest(expected.encode(), given.encode()):
        raise Unverified("missing or wrong slash-command token")


def sign_context(
    secret: str, context: dict[str, Any], now: float | None = None, ttl_s: float = CONTEXT_TTL_S
) -> dict[str, Any]:
    """`context` with an expiry and our signature, for a Mattermost button: Mattermost posts it back
    verbatim when the button is clicked, and anyone who can reach the URL could post one too."""
    body = {**context, "exp": int((now if now is not None else time.time()) + ttl_s)}
    return {**body, "sig": _context_mac(secret, body)}


def verify_context(secret: str, context: Any, now: float) -> dict[str, Any]:
    """The context without its signature, or Unverified."""
    if not isinstance(context, dict) or not isinstance(context.get("sig"), str):
        raise Unverified("the action context carries no signature")
    body = {k: v for k, v in context.items() if k != "sig"}
    if not hmac.compare_digest(_context_mac(secret, body).encode(), _ascii(context["sig"])):
        raise Unverified("the action context's signature does not match")
    exp = body.get("exp")
    if not isinstance(exp, int) or exp < now:
        raise Unverified("the action context has expired")
    return body


def _context_mac(secret: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    mac = hmac.new(secret.encode(), b"failover-mm-action:" + canonical, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


class ReplayGuard:
    """Signed Slack requests seen within the timestamp window, so a captured request (say
    `/failover failover us-east --force`) cannot be sent again while its timestamp is still accepted.

    Per replica: a request replayed to another replica behind the same load balancer is not caught here
    (the README says so). Keyed by (timestamp, signature): the signature covers the body, and Slack's
    requests carry a fresh `trigger_id`, so two genuine requests never share one."""

    def __init__(self, window_s: float = SLACK_WINDOW_S, max_entries: int = REPLAY_ENTRIES_MAX) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, timestamp: str, signature: str, now: float) -> None:
        """Remember this request; Unverified when it was seen within the window (both ways: +/- 5 min)."""
        while self._seen and next(iter(self._seen.values())) < now - 2 * self.window_s:
            self._seen.popitem(last=False)
        key = (timestamp, signature.strip())
        if key in self._seen:
            raise Unverified("replayed request: this timestamp and signature were already accepted")
        self._seen[key] = now
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
