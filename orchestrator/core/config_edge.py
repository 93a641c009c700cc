"""The members of an `external_dns` balancer: cluster -> the DNSEndpoint targets it owns.

external-dns publishes A, AAAA and CNAME records, so a cluster's targets are IP addresses or host names
(`eu.lb.example.com` for a cloud load balancer). As for the DNS drivers (`config_dns.split_dns_members`),
the lists move to `addresses` before the model is validated and `members` keeps one label per cluster
(the targets joined) for `failover plan` and the duplicate check; every target is written in one
canonical form (an address as Python prints it, a host name in lower case without the trailing dot), so
a target is recognised however the DNSEndpoint spells it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from orchestrator.core.config_dns import split_members

EXTERNAL_DNS = "external_dns"
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def canonical_target(value: object, where: str) -> str:
    """An IP address in its canonical form, or a host name lower-cased without its trailing dot."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: expected an IP address or a host name, got {value!r}")
    text = value.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.lower().rstrip(".")
    if not _HOST.match(name):
        raise ValueError(f"{where}: {value!r} is neither an IP address nor a host name")
    return name


def split_target_members(data: Any) -> Any:
    """For `driver: external_dns`, move `members` (cluster -> targets; one may be a plain string) to
    `addresses`, leaving `members` as cluster -> the targets joined. No target belongs to two clusters
    (draining one would take the other's traffic too)."""
    return split_members(
        data,
        (EXTERNAL_DNS,),
        canonical_target,
        misplaced="write an external_dns balancer's targets under members: {cluster: [targets]}",
        expected="IP addresses or host names",
        owned="a target",
    )
