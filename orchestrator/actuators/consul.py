"""Consul driver: the weights of one `service-splitter` config entry, through Consul's HTTP API.

The seed's Consul mesh-gateway approach: each cluster is one split of the service (`web-eu`, or a
subset, `web/eu`), and Consul's splitter shares the service's traffic between them. Consul wants the
splits' `Weight`s to sum to exactly 100 (in 0.01 steps, `ServiceSplitterConfigEntry.Validate`), while
our contract is absolute per-cluster targets that a restore puts back exactly. So, as in the Istio
driver, native weights are *relative*, 0..100 per cluster: a write turns them into percentages by
largest remainder in hundredths (`istio.split_percent`: 100/100/100 is written 33.34/33.33/33.33,
draining one of three leaves 50/50), splits that are not members keep their weight, and the relative
weights meant are stored in the entry's `Meta` (`failover-weights`); a read returns them only while the
splits are still their normalization, so a hand edit shows up as drift.

Writes are check-and-set: `GET /v1/config/service-splitter/<name>` gives the entry and its
`ModifyIndex`, `PUT /v1/config?cas=<ModifyIndex>` answers `true`, or `false` when someone wrote the
entry since (a conflict: read again and recompute, never overwrite). The ACL token goes in
`X-Consul-Token` and never into a message.

Errors, classified here (STYLE 10): no connection, a timeout, 429 and 5xx are temporary, except a 500
whose text is one of the entry validation errors (Consul answers those with 500 and the validator's
message, as it does every RPC error it cannot type); 403 (`Permission denied`, `ACL not found`) and
400 (`Request decoding failed`) are permanent, with Consul's message.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog

from orchestrator.actuators.base import Balancer, Fence, Term, no_fence
from orchestrator.actuators.istio import lay_out_members
from orchestrator.actuators.kube_lb import check_int, retry_temporary
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError, TemporaryError, retry_after_s

log = structlog.get_logger(__name__)

KIND = "service-splitter"
META_KEY = "failover-weights"
META_VALUE_MAX = 512
"""Consul's limit on one Meta value (`metaValueMaxLength`)."""
SCALE = 100
"""Weights are percentages in 0.01 steps: we compute in hundredths."""
TOTAL = 100 * SCALE
RELATIVE_MAX = 100
VALIDATION_MARKERS = (
    "the sum of all split weights must be 100",
    "split destination occurs more than once",
    "no splits configured",
    "Name is required",
    "Meta exceeds maximum element count",
    'Meta key "',
    'Meta value for key "',
    "does not permit advanced routing or splitting",
    "inconsistent protocols",
    "Request decoding failed",
)
"""Texts of Consul's config entry validation errors, which it answers with HTTP 500."""
_SNIPPET = 300


class ConsulConflict(TemporaryError):
    """The check-and-set PUT answered false: the entry changed since we read it."""


def split_key(entry_name: str, split: Mapping[str, Any]) -> str:
    """`service` or `service/subset`, a split's destination as members name it (no Service = the
    entry's own service, as Consul reads it)."""
    service = split.get("Service") or entry_name
    subset = split.get("ServiceSubset") or ""
    return f"{service}/{subset}" if subset else str(service)


def scaled(weight: object) -> int:
    """A split's weight in hundredths, rounded as Consul's `scaleWeight` does."""
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise PermanentError(f"split weight {weight!r} is not a number")
    return round(float(weight) * SCALE)


class ConsulBalancer(Balancer):
    """The splits of one service-splitter entry whose destinations are the members; relative weights."""

    max_weight = RELATIVE_MAX

    def __init__(self, config: LoadBalancerConfig, *, term: Term | None = None) -> None:
        super().__init__(config, term=term)  # the term is unused: check-and-set fences the writes
        if config.consul is None:
            raise PermanentError(f"balancer {config.name!r} has no 'consul:' section")
        self.section = config.consul
        self.service = self.section.service
        self.base = self.section.address.rstrip("/")
        self.where = f"balancer {self.name}: Consul {KIND} {self.service!r}"
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ConsulBalancer({self.name!r}, {self.base}, {self.service!r})"

    def member_label(self, cluster: str) -> str:
        return f"{self.service}: {self.members[cluster]}"

    # HTTP ------------------------------------------------------------------------------------------

    def _token(self) -> str | None:
        token = self.section.token
        return None if token is None else token.get_secret_value()

    def _params(self, **extra: str) -> dict[str, str]:
        params = dict(extra)
        for key, value in (
            ("dc", self.section.datacenter),
            ("ns", self.section.namespace),
            ("partition", self.section.partition),
        ):
            if value:
                params[key] = value
        return params

    def _clean(self, text: str) -> str:
        """One line of Consul's answer, with the token blanked should it ever be echoed."""
        line = " ".join(text.split())[:_SNIPPET]
        token = self._token()
        return line.replace(token, "***") if token else line

    def _ssl(self) -> ssl.SSLContext | None:
        if self.section.ca is None:
            return None
        try:
            return ssl.create_default_context(cafile=self.section.ca)
        except (OSError, ssl.SSLError) as e:
            raise PermanentError(f"{self.where}: cannot load the CA bundle {self.section.ca}: {e}") from e

    async def _request(
        self, method: str, path: str, params: Mapping[str, str], body: bytes | None = None
    ) -> tuple[int, str]:
        """One request; (status, text) for any answer, our TemporaryError when there is none."""
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl() or True))
        headers = {"Accept": "application/json"}
        token = self._token()
        if token is not None:
            headers["X-Consul-Token"] = token
        if body is not None:
            headers["Content-Type"] = "application/json"
        timeout = self.section.timeout_s
        try:
            async with self._session.request(
                method,
                f"{self.base}{path}",
                params=params,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                text = await resp.text(errors="replace")
                status, retry_after = resp.status, resp.headers.get("Retry-After")
        except TimeoutError as e:
            raise TemporaryError(f"{self.where}: {method} timed out after {timeout:g}s") from e
        except aiohttp.ClientError as e:
            raise TemporaryError(f"{self.where}: {method} {self.base} failed: {type(e).__name__}") from e
        if 200 <= status < 300:
            return status, text
        raise self._error(method, status, text, retry_after)

    def _error(self, method: str, status: int, text: str, retry_after: str | None) -> Exception:
        excerpt = self._clean(text)
        message = f"{self.where}: {method} answered HTTP {status}" + (f": {excerpt}" if excerpt else "")
        if status == 403:
            return PermanentError(f"{message} (the ACL token is unknown or lacks the right)")
        if status == 404:
            return PermanentError(message)
        if status == 500 and any(marker in text for marker in VALIDATION_MARKERS):
            return PermanentError(f"{message} (Consul refused the entry)")
        if status >= 500 or status in (408, 429):
            return TemporaryError(message, delay_s=retry_after_s(retry_after))
        return PermanentError(message)

    async def read(self) -> dict[str, Any]:
        """The entry as stored now (one try), `ModifyIndex` included."""
        path = f"/v1/config/{KIND}/{quote(self.service, safe='')}"
        _, text = await self._request("GET", path, self._params())
        try:
            entry = json.loads(text)
        except ValueError as e:
            raise PermanentError(f"{self.where}: GET answered something that is not JSON") from e
        if not isinstance(entry, dict) or not isinstance(entry.get("Splits"), list):
            raise PermanentError(f"{self.where}: GET answered no config entry with Splits")
        if isinstance(entry.get("ModifyIndex"), bool) or not isinstance(entry.get("ModifyIndex"), int):
            raise PermanentError(f"{self.where}: GET answered no ModifyIndex")
        return entry

    # Weights ---------------------------------------------------------------------------------------

    def _positions(self, splits: list[Any]) -> dict[str, int]:
        """cluster -> index of its split; a member with no split, or several, is a PermanentError."""
        positions: dict[str, int] = {}
        for cluster, member in self.members.items():
            found = [
                i
                for i, s in enumerate(splits)
                if isinstance(s, dict) and split_key(self.service, s) == member
            ]
            if len(found) != 1:
                what = "no split" if not found else f"{len(found)} splits"
                raise PermanentError(f"{self.where} has {what} {member!r} (member for cluster {cluster!r})")
            positions[cluster] = found[0]
        return positions

    def _layout(self, splits: list[Any], relative: Mapping[str, int]) -> list[int]:
        """Every split's weight in hundredths, carrying these relative member weights."""
        positions = self._positions(splits)
        return lay_out_members(
            [scaled(s.get("Weight", 0)) if isinstance(s, dict) else 0 for s in splits],
            positions,
            relative,
            TOTAL,
            f"{self.where}: the splits that are not members already take over 100",
            lambda remaining: (
                f"{self.where}: refusing to set every member to 0 "
                f"({remaining / SCALE:g}% of the traffic would have no split)"
            ),
        )

    def _intended(self, entry: Mapping[str, Any]) -> dict[str, int] | None:
        raw = (entry.get("Meta") or {}).get(META_KEY)
        try:
            data = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        intended: dict[str, int] = {}
        for cluster, member in self.members.items():
            weight = data.get(member)
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= RELATIVE_MAX:
                return None
            intended[cluster] = weight
        return intended

    def weights_in(self, entry: Mapping[str, Any]) -> dict[str, int]:
        splits: list[Any] = entry["Splits"]
        positions = self._positions(splits)
        actual = [scaled(s.get("Weight", 0)) if isinstance(s, dict) else 0 for s in splits]
        intended = self._intended(entry)
        if intended is not None:
            try:
                if self._layout(splits, intended) == actual:
                    return intended
            except PermanentError:
                pass  # the Meta cannot describe these splits any more: the splits are the truth
        return {cluster: round(actual[i] / SCALE) for cluster, i in positions.items()}

    def with_weights(self, entry: Mapping[str, Any], targets: Mapping[str, int]) -> dict[str, Any]:
        """The entry to PUT: the members' splits re-weighted, our Meta updated, the rest as read."""
        relative = {**self.weights_in(entry), **targets}
        splits = [dict(s) if isinstance(s, dict) else s for s in entry["Splits"]]
        layout = self._layout(splits, relative)
        for i in self._positions(splits).values():
            share = layout[i]
            splits[i]["Weight"] = share // SCALE if share % SCALE == 0 else share / SCALE
        meta = dict(entry.get("Meta") or {})
        meta[META_KEY] = json.dumps(
            {self.members[c]: w for c, w in relative.items()}, sort_keys=True, separators=(",", ":")
        )
        if len(meta[META_KEY]) > META_VALUE_MAX:
            raise PermanentError(
                f"{self.where}: the weights record would exceed Consul's limit of {META_VALUE_MAX} "
                "characters for a Meta value"
            )
        new = {k: v for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex")}
        new.update(Kind=KIND, Name=entry.get("Name") or self.service, Splits=splits, Meta=meta)
        return new

    async def get_weights(self) -> dict[str, int]:
        return self.weights_in(await retry_temporary(f"{self.where}: read", self.read))

    async def set_weights(self, weights: Mapping[str, int], fence: Fence = no_fence) -> None:
        unknown = sorted(set(weights) - set(self.members))
        if unknown:
            raise PermanentError(f"balancer {self.name!r} has no member for cluster(s) {', '.join(unknown)}")
        targets = {c: check_int(w, 0, RELATIVE_MAX, "Consul relative weight") for c, w in weights.items()}
        if not targets:
            return

        async def read_modify_write() -> None:
            entry = await self.read()
            new = self.with_weights(entry, targets)
            unchanged = {k: v for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex")}
            if new == unchanged:
                return
            fence()  # each attempt, after its read: no write from a replica that stopped leading
            body = json.dumps(new).encode()
            params = self._params(cas=str(entry["ModifyIndex"]))
            _, text = await self._request("PUT", "/v1/config", params, body)
            if text.strip() != "true":
                raise ConsulConflict(f"{self.where}: changed since it was read (check-and-set refused)")

        await retry_temporary(f"{self.where}: write", read_modify_write)
        current = self.weights_in(await retry_temporary(f"{self.where}: read back", self.read))
        wrong = [f"{c}={current[c]} (wanted {w})" for c, w in targets.items() if current[c] != w]
        if wrong:
            raise TemporaryError(f"{self.where}: weights did not stick: " + ", ".join(wrong))
        log.info("lb.weights_written", balancer=self.name, service=self.service, weights=targets)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
