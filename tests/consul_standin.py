"""A local stand-in for the part of Consul's HTTP API the `consul` balancer uses (no Consul server can be
installed here): `GET /v1/config/<kind>/<name>` and `PUT /v1/config[?cas=<index>]`.

It enforces what Consul documents and does for these calls, with Consul's status codes and texts
(agent/config_endpoint.go, agent/http.go, agent/structs/config_entry_discoverychain.go):

- ACLs (default deny): the token comes in `X-Consul-Token`; an unknown token is 403 `ACL not found`, a
  token without the right is 403 `Permission denied: token with AccessorID '<id>' lacks permission
  'service:read|write' on "<service>"`; the secret is never echoed.
- A missing entry is 404 `Config entry not found for "service-splitter" / "<name>"`.
- A body that is not JSON, or a field Consul does not know, is 400 `Request decoding failed: ...`;
  an unparsable `cas` is a 500 with Go's `strconv.ParseUint` error.
- Weights are normalized to 0.01 (`NormalizeServiceSplitWeight`) and the entry validated
  (`ServiceSplitterConfigEntry.Validate`, `validateConfigEntryMeta`); a refusal is an HTTP 500 whose body
  is the validator's message, as Consul answers every error its RPC layer returns untyped
  (`the sum of all split weights must be 100, not 90.000000`).
- `?cas=<index>`: 0 stores only a new entry, another index only if it is the entry's ModifyIndex; the
  answer is the JSON `true` or `false`. Every store raises the index (CreateIndex kept).
- `protocol="tcp"` makes every write fail as Consul does for a service that is not http-based.

Faults for tests: `fail_next(n, status, body)`, `set_down()` (connection refused), `on_put` (a hook that
runs when a PUT arrives, before it is applied: a concurrent writer), and the request log.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from orchestrator.bus.embedded import free_port

SPLITTER = "service-splitter"
ENTRY_KEYS = {
    "Kind",
    "Name",
    "Namespace",
    "Partition",
    "Meta",
    "Splits",
    "CreateIndex",
    "ModifyIndex",
    "Hash",
}
SPLIT_KEYS = {
    "Weight",
    "Service",
    "ServiceSubset",
    "Namespace",
    "Partition",
    "RequestHeaders",
    "ResponseHeaders",
}


def float32(value: float) -> float:
    """What a Go float32 holds for `value`."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


def scale_weight(value: float) -> int:
    return round(float32(value) * 100.0)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    token: str | None
    status: int
    body: str


@dataclass
class ConsulStandIn:
    tokens: dict[str, tuple[str, set[str]]] = field(default_factory=dict)
    """secret -> (AccessorID, rights such as {"service:read", "service:write"})."""
    protocol: str = "http"
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    on_put: Callable[[], None] | None = None
    index: int = 10
    port: int = field(default_factory=free_port)
    _faults: list[tuple[int, str]] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control ---------------------------------------------------------------------------------------

    def put_entry(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Store an entry directly (an operator's `consul config write`), raising the index."""
        self.index += 1
        stored = {k: v for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex")}
        stored["Kind"] = SPLITTER
        old = self.entries.get(stored["Name"])
        stored["CreateIndex"] = old["CreateIndex"] if old else self.index
        stored["ModifyIndex"] = self.index
        self.entries[stored["Name"]] = stored
        return stored

    def fail_next(self, count: int, status: int = 500, body: str = "No cluster leader") -> None:
        self._faults.extend([(status, body)] * count)

    def puts(self) -> list[Request]:
        return [r for r in self.requests if r.method == "PUT"]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/v1/config", self._apply)
        app.router.add_route("*", "/v1/config/{kind}/{name}", self._get)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def set_down(self, down: bool) -> None:
        await (self.stop() if down else self.start())

    # -- the API ---------------------------------------------------------------------------------------

    def _answer(
        self, request: web.Request, status: int, body: str, content_json: bool = False
    ) -> web.Response:
        self.requests.append(
            Request(
                request.method,
                request.path,
                dict(request.query),
                request.headers.get("X-Consul-Token"),
                status,
                body,
            )
        )
        content_type = "application/json" if content_json else "text/plain"
        return web.Response(status=status, text=body, content_type=content_type)

    def _acl(self, request: web.Request, right: str, service: str) -> str | None:
        """The 403 text for this request, or None when the token may."""
        secret = request.headers.get("X-Consul-Token", "")
        if not secret:
            holder = "anonymous token"
            rights: set[str] = set()
        elif secret not in self.tokens:
            return "ACL not found"
        else:
            accessor, rights = self.tokens[secret]
            holder = f"token with AccessorID '{accessor}'"
        if right in rights:
            return None
        return f"Permission denied: {holder} lacks permission '{right}' on \"{service}\""

    def _fault(self, request: web.Request) -> web.Response | None:
        if self._faults:
            status, body = self._faults.pop(0)
            return self._answer(request, status, body)
        return None

    async def _get(self, request: web.Request) -> web.Response:
        if (fault := self._fault(request)) is not None:
            return fault
        kind, name = request.match_info["kind"], request.match_info["name"]
        if request.method != "GET":
            return self._answer(request, 405, f"method {request.method} not allowed")
        denied = self._acl(request, "service:read", name)
        if denied:
            return self._answer(request, 403, denied)
        entry = self.entries.get(name) if kind == SPLITTER else None
        if entry is None:
            return self._answer(request, 404, f'Config entry not found for "{kind}" / "{name}"')
        return self._answer(request, 200, json.dumps(entry), content_json=True)

    async def _apply(self, request: web.Request) -> web.Response:
        if (fault := self._fault(request)) is not None:
            return fault
        if request.method != "PUT":
            return self._answer(request, 405, f"method {request.method} not allowed")
        try:
            raw = json.loads(await request.text())
        except ValueError as e:
            return self._answer(request, 400, f"Request decoding failed: {e}")
        problem = self._decode_problem(raw)
        if problem:
            return self._answer(request, 400, f"Request decoding failed: {problem}")
        name = str(raw.get("Name") or "")
        denied = self._acl(request, "service:write", name)
        if denied:
            return self._answer(request, 403, denied)
        cas_text = request.query.get("cas")
        cas: int | None = None
        if cas_text is not None and cas_text != "":
            if not cas_text.isdigit():
                return self._answer(request, 500, f'strconv.ParseUint: parsing "{cas_text}": invalid syntax')
            cas = int(cas_text)
        for split in raw.get("Splits") or []:  # Normalize: weights to 0.01
            split["Weight"] = scale_weight(float(split.get("Weight", 0))) / 100
        invalid = self._validate(raw)
        if invalid:
            return self._answer(request, 500, invalid)
        if self.on_put is not None:
            hook, self.on_put = self.on_put, None
            hook()  # someone else writes while this PUT is on its way
        current = self.entries.get(name)
        if cas is not None and (current["ModifyIndex"] if current else 0) != cas:
            return self._answer(request, 200, "false", content_json=True)
        self.put_entry(raw)
        return self._answer(request, 200, "true", content_json=True)

    @staticmethod
    def _decode_problem(raw: Any) -> str | None:
        if not isinstance(raw, dict):
            return "config entry must be an object"
        if raw.get("Kind") != SPLITTER:
            return f"invalid config entry kind: {raw.get('Kind')}"
        unknown = sorted(set(raw) - ENTRY_KEYS)
        splits = raw.get("Splits")
        if splits is not None and not isinstance(splits, list):
            return "'Splits': source data must be an array or slice, got map"
        for i, split in enumerate(splits or []):
            if not isinstance(split, dict):
                return f"'Splits[{i}]': expected a map, got '{type(split).__name__}'"
            unknown += [f"Splits[{i}].{k}" for k in sorted(set(split) - SPLIT_KEYS)]
            weight = split.get("Weight", 0)
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
                got = type(weight).__name__
                return f"'Splits[{i}].Weight' expected type 'float32', got unconvertible type '{got}'"
        meta = raw.get("Meta")
        if meta is not None and not (
            isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
        ):
            return "'Meta' expected a map[string]string"
        if unknown:
            return f"invalid config key {unknown[0]!r}".replace("'", '"')
        return None

    def _validate(self, entry: dict[str, Any]) -> str | None:
        """ServiceSplitterConfigEntry.Validate, and the protocol check of the discovery chain."""
        name = entry.get("Name") or ""
        if not name:
            return "Name is required"
        splits = entry.get("Splits") or []
        if not splits:
            return "no splits configured"
        meta = entry.get("Meta") or {}
        meta_errors = ["Meta exceeds maximum element count 64"] if len(meta) > 64 else []
        for key, value in meta.items():
            if len(key) > 128:
                meta_errors.append(f'Meta key "{key}" exceeds maximum length 128')
            if len(value) > 512:
                meta_errors.append(f'Meta value for key "{key}" exceeds maximum length 512')
        if meta_errors:
            listed = "".join(f"\t* {e}\n" for e in meta_errors)
            return f"{len(meta_errors)} error{'s' if len(meta_errors) > 1 else ''} occurred:\n{listed}\n"
        seen: set[tuple[str, str, str, str]] = set()
        for split in splits:
            key = (
                split.get("Service") or name,
                split.get("ServiceSubset") or "",
                split.get("Namespace") or "default",
                split.get("Partition") or "default",
            )
            if key in seen:
                return (
                    "split destination occurs more than once: "
                    f'service="{key[0]}", subset="{key[1]}", namespace="{key[2]}", partition="{key[3]}"'
                )
            seen.add(key)
        total = sum(scale_weight(float(s.get("Weight", 0))) for s in splits)
        if total != 10000:
            return f"the sum of all split weights must be 100, not {float32(total / 100):f}"
        if self.protocol != "http":
            return (
                f'discovery chain "{name}" uses a protocol "{self.protocol}" that does not permit '
                "advanced routing or splitting behavior"
            )
        return None
