"""Webhook driver: any other load balancer, behind a small HTTP receiver that the user runs.

The protocol (DESIGN §4, §5):

- `GET <url>` answers 2xx with `{"weights": {"<cluster>": <int>, ...}}`: the weights in effect now.
- `POST <url>` with `{"v": 1, "balancer": "<name>", "weights": {...every member...}, "term": <int|null>}`
  sets them. Every member is listed, the ones not being changed with the value just read, so the body
  is an absolute target and a repeated POST is harmless. `term` is the leader's fencing term (DESIGN
  §6b): a receiver should refuse (403) a term lower than the highest it has seen. The leader's fence
  is also checked right before each POST (each attempt), so a deposed leader sends none at all.
- Both requests carry `X-Failover-Signature` and `X-Failover-Id` when a secret is configured (the GET
  signs its empty body; the scheme is in `core.signing`), plus the configured headers. Each attempt
  gets a fresh id, so a receiver can drop a replayed request.

Answers: 2xx is success; 5xx, 429 (honouring Retry-After), 408, timeouts and connection errors are
temporary and retried a bounded number of times inside the call; 409 means the receiver's state changed
under us and retries the whole read-merge-POST, like a Kubernetes conflict; any other status is a
PermanentError naming it. A POST is verified with a GET. Messages name the balancer and the receiver's
scheme, host and port only: never the secret, the path or the query (which may carry tokens).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from orchestrator.actuators.base import Balancer, Fence, Term, no_fence
from orchestrator.actuators.kube_lb import check_int, retry_temporary
from orchestrator.core import signing
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError, TemporaryError, retry_after_s

log = structlog.get_logger(__name__)

MAX_WEIGHT = 1_000_000
_SNIPPET = 200
"""How much of a refusal's body goes into the error message."""


class WebhookConflict(TemporaryError):
    """409 from the receiver: re-read its weights and POST again."""


def redacted(url: str) -> str:
    """`https://lb.example.com:8443`: enough to tell receivers apart, nothing that could be a credential."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


class WebhookBalancer(Balancer):
    """Weights kept by an external receiver that speaks the protocol above."""

    max_weight = MAX_WEIGHT

    def __init__(self, config: LoadBalancerConfig, *, term: Term | None = None) -> None:
        super().__init__(config)
        if config.webhook is None:
            raise PermanentError(f"balancer {config.name!r} has no 'webhook:' section")
        self.target = config.webhook
        self.term = term
        self.where = f"balancer {self.name}: webhook {redacted(self.target.url)}"
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"WebhookBalancer({self.name!r}, {redacted(self.target.url)})"

    def _secret(self) -> str | None:
        return None if self.target.secret is None else self.target.secret.get_secret_value()

    def _headers(self, body: bytes) -> dict[str, str]:
        headers = {**self.target.headers, "Accept": "application/json"}
        if body:
            headers["Content-Type"] = "application/json"
        secret = self._secret()
        if secret is not None:
            headers.update(signing.sign_headers(secret, body))
        return headers

    def _clean(self, text: str) -> str:
        """A one-line excerpt of a receiver's answer, with the secret blanked should it be echoed."""
        line = " ".join(text.split())[:_SNIPPET]
        secret = self._secret()
        return line.replace(secret, "***") if secret else line

    async def _request(self, method: str, body: bytes = b"") -> bytes:
        """One request (freshly signed); the answer's body on 2xx, else our error for the status."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = self.target.timeout_s
        try:
            async with self._session.request(
                method,
                self.target.url,
                data=body or None,
                headers=self._headers(body),
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                data = await resp.read()
                retry_after = resp.headers.get("Retry-After", "")
        except TimeoutError as e:
            raise TemporaryError(f"{self.where}: {method} timed out after {timeout:g}s") from e
        except aiohttp.ClientError as e:
            raise TemporaryError(f"{self.where}: {method} failed: {type(e).__name__}") from e
        if 200 <= status < 300:
            return data
        text = f"{self.where}: {method} answered HTTP {status}"
        excerpt = self._clean(data.decode("utf-8", "replace"))
        if status == 409:
            raise WebhookConflict(f"{text} (conflict)" + (f": {excerpt}" if excerpt else ""))
        if status >= 500 or status in (408, 429):
            raise TemporaryError(text, delay_s=retry_after_s(retry_after))
        raise PermanentError(text + (f": {excerpt}" if excerpt else ""))

    async def _fetch(self) -> dict[str, int]:
        data = await self._request("GET")
        try:
            reply: Any = json.loads(data)
        except ValueError as e:
            raise PermanentError(f"{self.where}: GET answered something that is not JSON") from e
        weights = reply.get("weights") if isinstance(reply, dict) else None
        if not isinstance(weights, dict):
            raise PermanentError(f'{self.where}: GET answered no "weights" object')
        found: dict[str, int] = {}
        for cluster in self.members:
            if cluster not in weights:
                raise PermanentError(f"{self.where}: the receiver reports no weight for cluster {cluster!r}")
            found[cluster] = check_int(weights[cluster], 0, None, f"{self.where}: weight of {cluster}")
        return found

    async def get_weights(self) -> dict[str, int]:
        return await retry_temporary(f"{self.where}: read", self._fetch)

    def _body(self, weights: Mapping[str, int]) -> bytes:
        term = self.term() if self.term is not None else None
        body = {"v": 1, "balancer": self.name, "weights": dict(weights), "term": term}
        return json.dumps(body, separators=(",", ":")).encode()

    async def set_weights(self, weights: Mapping[str, int], fence: Fence = no_fence) -> None:
        unknown = sorted(set(weights) - set(self.members))
        if unknown:
            raise PermanentError(f"balancer {self.name!r} has no member for cluster(s) {', '.join(unknown)}")
        targets = {
            cluster: check_int(weight, 0, MAX_WEIGHT, f"webhook weight of {cluster}")
            for cluster, weight in weights.items()
        }
        if not targets:
            return

        async def read_merge_post() -> None:
            current = await self._fetch()
            if all(current[cluster] == weight for cluster, weight in targets.items()):
                return
            desired = {cluster: targets.get(cluster, current[cluster]) for cluster in self.members}
            fence()  # each attempt, after its read
            await self._request("POST", self._body(desired))

        await retry_temporary(f"{self.where}: write", read_merge_post)
        current = await retry_temporary(f"{self.where}: read back", self._fetch)
        wrong = [
            f"{cluster}={current[cluster]} (wanted {weight})"
            for cluster, weight in targets.items()
            if current[cluster] != weight
        ]
        if wrong:
            raise TemporaryError(f"{self.where}: weights did not stick: " + ", ".join(wrong))
        log.info("lb.weights_written", balancer=self.name, weights=targets)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
