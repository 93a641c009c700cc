"""PowerDNS driver: the A/AAAA RRset of one name through the PowerDNS Authoritative HTTP API.

`GET /api/v1/servers/<server_id>/zones/<zone>?rrset_name=<name>` reads the name's RRsets (and the zone's
`edited_serial`); `PATCH` on the zone with `changetype: REPLACE` (or `DELETE` for a type left empty)
writes them. Disabled records count as not served. Records that are not ours are written back as read,
but an RRset has one TTL: when we add ours it becomes `ttl` for them too (a removal keeps it).

Concurrent changes: the API has no conditional write (no ETag, no If-Match, no prerequisite), so this is
as far as it allows: each write is computed from a fresh read, and immediately before the PATCH the
RRset and the zone's `edited_serial` are read again and compared with what the change was computed
from. A difference is a `DnsConflict` (nothing written; the change is recomputed on top of theirs). What
remains is the one round trip between that check and the PATCH; a change that lands inside it is lost.
Where that matters, enable PowerDNS's RFC 2136 support (`dnsupdate=yes`, a TSIG key in the zone's
`TSIG-ALLOW-DNSUPDATE` metadata) and use the `rfc2136` driver, whose prerequisites the server enforces.

The check reads the whole zone (see `_fetch`), so answers are capped at MAX_BODY_BYTES (a bigger one is a
PermanentError naming the limit: put the name in a smaller zone, or use `rfc2136`) and a large one is
parsed in a worker thread, not on the event loop that runs detection.

Errors: connection errors, timeouts, 5xx and 429 (honouring Retry-After) are temporary, and so is a 2xx
whose body is not JSON: PowerDNS itself always answers JSON, so that is a proxy or captive portal in
between (an HTML error page sent as 200), which passes; 401/403 (the key), 404 (no such server or
zone), 422 (PowerDNS refused the RRset, its reason quoted) and other 4xx are permanent. The API key is
a SecretStr sent only in `X-API-Key`, and never part of a message.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any
from urllib.parse import quote

import aiohttp

from orchestrator.actuators.base import Fence, Term
from orchestrator.actuators.dns_rrset import DnsBalancer, DnsConflict, RRsetView, rdtype_of
from orchestrator.actuators.webhook import redacted
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError, TemporaryError, retry_after_s

TYPES = ("A", "AAAA")
_SNIPPET = 200
MAX_BODY_BYTES = 16 << 20
"""The largest answer read (16 MiB: a zone of about 100,000 records); PowerDNS's own limit is higher."""
OFF_LOOP_BYTES = 256 << 10
"""Answers above this are parsed in a worker thread (a few ms of the loop at most below it)."""


class PowerDnsBalancer(DnsBalancer):
    """The A/AAAA RRset of one name in a PowerDNS zone."""

    def __init__(self, config: LoadBalancerConfig, *, term: Term | None = None) -> None:
        if config.powerdns is None:
            raise PermanentError(f"balancer {config.name!r} has no 'powerdns:' section")
        self.settings = config.powerdns
        super().__init__(config, self.settings.name, self.settings.ttl, term=term)
        base = self.settings.api_url.rstrip("/")
        self.zone_url = (
            f"{base}/api/v1/servers/{quote(self.settings.server_id, safe='')}"
            f"/zones/{quote(self.settings.zone, safe='')}"
        )
        self.where = f"PowerDNS {redacted(base)}"
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"PowerDnsBalancer({self.name!r}, {redacted(self.settings.api_url)}, {self.settings.name})"

    def _clean(self, text: str) -> str:
        line = " ".join(text.split())[:_SNIPPET]
        key = self.settings.api_key.get_secret_value()
        return line.replace(key, "***") if key else line

    async def _request(self, method: str, url: str, body: object = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = self.settings.timeout_s
        headers = {"X-API-Key": self.settings.api_key.get_secret_value(), "Accept": "application/json"}
        try:
            async with self._session.request(
                method,
                url,
                data=None if body is None else json.dumps(body),
                headers={**headers, **({"Content-Type": "application/json"} if body is not None else {})},
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After", "")
                data = await self._read_capped(resp, method)
        except TimeoutError as e:
            raise TemporaryError(f"{self.what}: {self.where}: {method} timed out after {timeout:g}s") from e
        except aiohttp.ClientError as e:
            raise TemporaryError(f"{self.what}: {self.where}: {method} failed: {type(e).__name__}") from e
        if 200 <= status < 300:
            if not data.strip():
                return None
            try:
                if len(data) > OFF_LOOP_BYTES:
                    return await asyncio.to_thread(json.loads, data)
                return json.loads(data)
            except ValueError as e:  # UnicodeDecodeError included
                raise TemporaryError(
                    f"{self.what}: {self.where}: {method} answered HTTP {status} with a body that is not "
                    f"JSON (a proxy in between?): {self._clean(data.decode('utf-8', 'replace'))}"
                ) from e
        text = f"{self.what}: {self.where}: {method} answered HTTP {status}"
        reason = self._reason(data)
        if status >= 500 or status in (408, 429):
            raise TemporaryError(text + (f": {reason}" if reason else ""), delay_s=retry_after_s(retry_after))
        if status in (401, 403):
            raise PermanentError(f"{text}: the API key was refused (check powerdns.api_key)")
        if status == 404:
            raise PermanentError(f"{text}: no zone {self.settings.zone} on server {self.settings.server_id}")
        raise PermanentError(text + (f": {reason}" if reason else ""))

    async def _read_capped(self, resp: aiohttp.ClientResponse, method: str) -> bytes:
        """The body, refused beyond MAX_BODY_BYTES before it is all in memory."""
        limit = MAX_BODY_BYTES
        if (resp.content_length or 0) <= limit:
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > limit:
                    break
                chunks.append(chunk)
            else:
                return b"".join(chunks)
        raise PermanentError(
            f"{self.what}: {self.where}: {method} answered more than {limit >> 20} MiB, the limit: "
            f"put {self.settings.name} in a smaller zone, or use the rfc2136 driver"
        )

    def _reason(self, data: bytes) -> str:
        """PowerDNS's `{"error": "..."}`, or the start of whatever else it sent."""
        text = data.decode("utf-8", "replace")
        try:
            parsed = json.loads(text)
        except ValueError:
            return self._clean(text)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            return self._clean(parsed["error"])
        return self._clean(text)

    async def _fetch(self, whole: bool = False) -> tuple[dict[str, dict[str, Any]], object]:
        """type -> the RRset as PowerDNS stores it, for our name; and the zone's edited_serial.

        `whole` reads the whole zone: PowerDNS 4.7 leaves disabled records out of an `rrset_name`
        answer, and a REPLACE written from that would delete them. Reads for weights and drift only
        need the served records and take the filtered answer.
        """
        url = self.zone_url if whole else f"{self.zone_url}?rrset_name={quote(self.settings.name, safe='')}"
        zone = await self._request("GET", url)
        if not isinstance(zone, dict) or not isinstance(zone.get("rrsets"), list):
            raise PermanentError(f"{self.what}: {self.where}: the zone answer has no rrsets")
        found: dict[str, dict[str, Any]] = {}
        for rrset in zone["rrsets"]:
            if not isinstance(rrset, dict) or str(rrset.get("name", "")).lower() != self.settings.name:
                continue  # servers without the rrset_name filter send the whole zone
            if rrset.get("type") in TYPES and isinstance(rrset.get("records"), list):
                found[str(rrset["type"])] = rrset
        return found, zone.get("edited_serial", zone.get("serial"))

    def _view(self, rrsets: dict[str, dict[str, Any]], serial: object) -> RRsetView:
        records: dict[str, frozenset[str]] = {}
        ttls: dict[str, int] = {}
        for rdtype, rrset in rrsets.items():
            served = set()
            for record in rrset["records"]:
                if isinstance(record, dict) and not record.get("disabled"):
                    try:
                        served.add(str(ipaddress.ip_address(str(record.get("content", "")).strip())))
                    except ValueError as e:
                        raise PermanentError(
                            f"{self.what}: {rdtype} record {record.get('content')!r} is not an address"
                        ) from e
            if served:
                records[rdtype] = frozenset(served)
                ttl = rrset.get("ttl")
                ttls[rdtype] = ttl if isinstance(ttl, int) else 0
        # what is served and the zone's serial: the same from a filtered and a whole-zone answer
        version = (serial, sorted((t, sorted(a), ttls[t]) for t, a in records.items()))
        return RRsetView(records, ttls, version=version)

    async def read_rrset(self) -> RRsetView:
        return self._view(*await self._fetch())

    async def write_rrset(self, read: RRsetView, add: set[str], remove: set[str], fence: Fence) -> None:
        fence()  # a deposed leader does not even check: and again right before the PATCH
        rrsets, serial = await self._fetch(whole=True)
        if self._view(rrsets, serial).version != read.version:
            raise DnsConflict(
                f"{self.what}: the RRset or the zone changed since it was read; nothing was written, "
                "reading it again"
            )
        patch = []
        for rdtype in TYPES:
            ours_added = {a for a in add if rdtype_of(a) == rdtype}
            ours_removed = {a for a in remove if rdtype_of(a) == rdtype}
            if not ours_added and not ours_removed:
                continue
            old = rrsets.get(rdtype, {"records": [], "ttl": self.ttl_s})
            kept = []
            for record in old["records"]:
                content = str(record.get("content", "")).strip() if isinstance(record, dict) else ""
                try:
                    address = str(ipaddress.ip_address(content))
                except ValueError:
                    address = content
                if address in ours_removed or address in ours_added:
                    continue  # ours: removed, or put back enabled below
                kept.append({"content": content, "disabled": bool(record.get("disabled"))})
            new = kept + [{"content": a, "disabled": False} for a in sorted(ours_added)]
            ttl = self.ttl_s if ours_added or not isinstance(old.get("ttl"), int) else int(old["ttl"])
            if new:
                patch.append(
                    {
                        "name": self.settings.name,
                        "type": rdtype,
                        "ttl": ttl,
                        "changetype": "REPLACE",
                        "records": new,
                    }
                )
            else:
                patch.append({"name": self.settings.name, "type": rdtype, "changetype": "DELETE"})
        fence()  # after the reads, right before the write: a deposed leader sends nothing
        await self._request("PATCH", self.zone_url, {"rrsets": patch})

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
