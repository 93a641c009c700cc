"""The `rfc2136` and `powerdns` balancer sections (DESIGN §16), and DNS members: cluster -> addresses.

Split from `config_drivers` so the DNS rules (names, TSIG keys, addresses) sit together. DNS has no
weights: a balancer is the address RRset (A and AAAA) of one name, and each member cluster owns a list of
addresses in it. `members` keeps the shape every driver shares (cluster -> one label, shown by `failover
plan` and checked for duplicates by `validate`), so the lists are moved to `addresses` before the model
is validated (`split_dns_members`), with every address parsed and written in its canonical form.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from orchestrator.core.config_fields import HttpUrlStr, Model, Seconds

DNS_DRIVERS = ("rfc2136", "powerdns")

TsigAlgorithm = Literal[
    "hmac-sha256",
    "hmac-sha384",
    "hmac-sha512",
    "hmac-sha224",
    "hmac-sha1",
    "hmac-md5",
    "hmac-sha256-128",
    "hmac-sha384-192",
    "hmac-sha512-256",
]
"""What dnspython signs with (GSS-TSIG needs Kerberos and is not offered); hmac-sha256 is BIND's
`tsig-keygen` default and what RFC 8945 recommends."""


def fqdn(value: str) -> str:
    """A domain name in the absolute form DNS messages use: lower case, one trailing dot."""
    name = value.strip().lower().rstrip(".")
    labels = name.split(".")
    if not name or any(not 0 < len(label) <= 63 for label in labels) or len(name) > 253:
        raise ValueError(f"{value!r} is not a domain name")
    if any(c.isspace() or c in "\\\"'();" for c in name):
        raise ValueError(f"{value!r} is not a domain name")
    return name + "."


def in_zone(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


class TsigKey(Model):
    """The TSIG key the server knows (`key "failover." {...}` in named.conf, `allow-update { key ...; }`)."""

    name: str = Field(min_length=1)
    algorithm: TsigAlgorithm = "hmac-sha256"
    secret: SecretStr
    """Base64, as `tsig-keygen` prints it; checked here so a pasted fragment fails at validation."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return fqdn(value)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        try:
            raw = base64.b64decode(value.get_secret_value().strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("secret must be base64 (as tsig-keygen prints it)") from None
        if len(raw) < 16:
            raise ValueError(f"secret decodes to {len(raw)} bytes; use at least 16 (tsig-keygen: 32)")
        return value


class Rfc2136Lb(Model):
    """Dynamic updates (RFC 2136) signed with TSIG, sent to the zone's primary: BIND, Knot, PowerDNS."""

    server: str = Field(min_length=1)
    """`host:port` of the primary (`10.0.0.53:53`, `[2001:db8::53]:53`; port 53 when omitted)."""
    zone: str
    name: str
    """The one name whose A/AAAA RRset is this balancer."""
    ttl: int = Field(default=30, ge=0, le=86400)
    """Seconds resolvers may cache the answer: also how long a drain takes to reach every client."""
    tsig: TsigKey | None = None
    """Without it updates are unsigned: only for a server that allows updates by address."""
    read: Literal["query", "axfr"] = "query"
    """`query` asks the server for the name's A and AAAA; `axfr` transfers the zone (both types from one
    version of the zone; needs `allow-transfer` for the key), for servers where queries are limited."""
    timeout_s: Seconds = Field(default=2.0, alias="timeout", gt=0)

    @field_validator("zone", "name")
    @classmethod
    def _fqdn(cls, value: str) -> str:
        return fqdn(value)

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        host, port = split_server(value)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @model_validator(mode="after")
    def _name_in_zone(self) -> Rfc2136Lb:
        if not in_zone(self.name, self.zone):
            raise ValueError(f"name {self.name} is not in zone {self.zone}")
        return self


class PowerDnsLb(Model):
    """The PowerDNS Authoritative HTTP API (`api=yes`, `webserver=yes`)."""

    api_url: HttpUrlStr
    """The webserver's base (`http://pdns:8081`); requests go to `<api_url>/api/v1/servers/...`."""
    api_key: SecretStr
    server_id: str = Field(default="localhost", min_length=1)
    zone: str
    name: str
    ttl: int = Field(default=30, ge=0, le=86400)
    timeout_s: Seconds = Field(default=5.0, alias="timeout", gt=0)

    @field_validator("zone", "name")
    @classmethod
    def _fqdn(cls, value: str) -> str:
        return fqdn(value)

    @model_validator(mode="after")
    def _name_in_zone(self) -> PowerDnsLb:
        if not in_zone(self.name, self.zone):
            raise ValueError(f"name {self.name} is not in zone {self.zone}")
        return self


def split_server(value: str) -> tuple[str, int]:
    """`host:port` -> (host, port); `[v6]:port`, a bare host or a bare IPv6 address take port 53."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected [address]:port, got {value!r}")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""  # a bare host, or a bare IPv6 address
    if not host:
        raise ValueError(f"expected host:port, got {value!r}")
    try:
        port = int(port_text) if port_text else 53
    except ValueError:
        raise ValueError(f"port must be a number, got {port_text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    return host, port


def canonical_address(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected an IP address, got {value!r}")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not an IPv4 or IPv6 address") from None


def split_dns_members(data: Any) -> Any:
    """For a DNS driver, move `members` (cluster -> addresses) to `addresses` and leave `members` as
    cluster -> the addresses joined (`192.0.2.10, 2001:db8::10`), the label plans print.

    A single address may be written as a string. Every address is canonical (`2001:DB8::0:1` is
    `2001:db8::1`, as the server answers it), a cluster has at least one, and no address belongs to two
    clusters (a drain of one would take the other's traffic too).
    """
    return split_members(
        data,
        DNS_DRIVERS,
        canonical_address,
        misplaced="write a DNS balancer's addresses under members: {cluster: [addresses]}",
        expected="IP addresses",
        owned="an address",
    )


def split_members(
    data: Any,
    drivers: tuple[str, ...],
    canonical: Callable[[object, str], str],
    *,
    misplaced: str,
    expected: str,
    owned: str,
) -> Any:
    """For a balancer of one of `drivers`, move `members` (cluster -> a list, or one string) to
    `addresses` in `canonical` form, leaving `members` as cluster -> the list joined.

    Shared by the DNS drivers and external_dns (`config_edge.split_target_members`); the wording is
    theirs: `misplaced` when `addresses` is written by hand, `expected` names what a list holds and
    `owned` one item with its article ("an address"), for the error when two clusters list the same one.
    """
    if not isinstance(data, dict) or data.get("driver") not in drivers:
        return data
    if "addresses" in data:
        raise ValueError(misplaced)
    members = data.get("members")
    if not isinstance(members, dict):
        return data  # the model says what is wrong with it
    addresses: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for cluster, value in members.items():
        where = f"members.{cluster}"
        listed = [value] if isinstance(value, str) else value
        if not isinstance(listed, list) or not listed:
            raise ValueError(f"{where}: expected a list of {expected}, got {value!r}")
        unique: list[str] = []
        for item in listed:
            address = canonical(item, where)
            if address in owner and owner[address] != cluster:
                raise ValueError(f"{where}: {address} is also {owned} of {owner[address]}")
            owner[address] = str(cluster)
            if address not in unique:
                unique.append(address)
        addresses[str(cluster)] = unique
    return {
        **data,
        "members": {cluster: ", ".join(listed) for cluster, listed in addresses.items()},
        "addresses": addresses,
    }
