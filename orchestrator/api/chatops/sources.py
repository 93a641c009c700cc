"""Where a chat request came from, for `chatops.mattermost.allowed_sources`.

Mattermost does not sign its button callbacks: the clicker's user ID is whatever the sender wrote. The
one sender whose word counts is the Mattermost server, so its requests are taken from its addresses
only. Behind an ingress the peer is the proxy: `X-Forwarded-For` is believed only when the peer is one
of `trusted_proxies`, and then read from the right, skipping trusted proxies, so a client cannot put a
Mattermost address in front of the list and be believed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_HOPS_MAX = 20
"""More addresses than this in X-Forwarded-For is not a real proxy chain: refused."""


def networks(items: Iterable[str]) -> list[Network]:
    """The config's addresses and CIDRs (validated at load) as networks."""
    return [ipaddress.ip_network(item, strict=False) for item in items]


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [2001:db8::1]:443
        text = text[1 : text.index("]")]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: Address, nets: list[Network]) -> bool:
    return any(address.version == net.version and address in net for net in nets)


def client_address(request: web.BaseRequest, trusted_proxies: Iterable[str]) -> Address | None:
    """The sender's address: the peer, or when the peer is a trusted proxy, the rightmost address in
    `X-Forwarded-For` (every copy of the header, in order) that is not a trusted proxy. None when that
    cannot be told (no peer address, an entry that is not an address, an implausibly long chain)."""
    peername = request.transport.get_extra_info("peername") if request.transport is not None else None
    peer = _address(str(peername[0])) if isinstance(peername, tuple) and peername else None
    if peer is None:
        return None
    proxies = networks(trusted_proxies)
    if not proxies or not _within(peer, proxies):
        return peer
    hops = [h for value in request.headers.getall("X-Forwarded-For", []) for h in value.split(",")]
    if len(hops) > FORWARDED_HOPS_MAX:
        return None
    current = peer
    for hop in reversed(hops):
        if not _within(current, proxies):
            break
        parsed = _address(hop)
        if parsed is None:
            return None
        current = parsed
    return current


def source_refusal(request: web.BaseRequest, allowed: list[str], trusted_proxies: list[str]) -> str | None:
    """Why this request's source is refused, or None when `allowed` is empty or holds the source."""
    if not allowed:
        return None
    address = client_address(request, trusted_proxies)
    if address is None:
        return "the sender's address cannot be told (X-Forwarded-For unreadable)"
    if _within(address, networks(allowed)):
        return None
    return f"{address} is not in chatops.mattermost.allowed_sources"
