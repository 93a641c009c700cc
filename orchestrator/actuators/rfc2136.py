"""RFC 2136 driver: dynamic DNS updates signed with TSIG, sent to the zone's primary (BIND, Knot, PowerDNS).

Reads ask the primary itself over TCP (its answer is the zone as it is now, never a cache): the name's A
and AAAA, or with `read: axfr` a zone transfer, which gives both types from one version of the zone.
Queries are TSIG-signed too, so a wrong key shows at the first read, not at the first failover.

Each UPDATE carries the RRset as read as its prerequisite (RFC 2136 §2.4.2, "RRset exists
(value dependent)", or §2.4.3 "RRset does not exist" for a type that had no records), then deletes and
adds single records. The server applies all of it or nothing: when someone changed the RRset since our
read it answers NXRRSET and nothing is written; that is a `DnsConflict`, and the read-modify-write starts
again from their version. Records that are not ours, other types at the name, and the rest of the zone
are never part of an update; but an RRset has one TTL (RFC 2181 §5.2), so adding our records at `ttl`
sets the TTL of the records not ours in that RRset too (a removal leaves it). A CNAME at the name is a
configuration error (PermanentError naming it): the server would ignore our A/AAAA adds (RFC 2136
§3.4.2.2), and every change would end in "did not stick".

Errors: a refused connection, a timeout, SERVFAIL and an answer that does not parse or does not match
the question (a middlebox mangling one answer; the next is usually fine) are temporary (retried); TSIG
errors (BADKEY, BADSIG, BADTIME), REFUSED (the key may not update the name), NOTAUTH and NOTZONE are
permanent and say what to check. Messages name the key, never its secret (nor the dnspython keyring or
messages, whose repr carries it). dnspython's asyncio API keeps the loop free.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.tsig
import dns.update
import dns.xfr
import dns.zone

from orchestrator.actuators.base import Fence, Term
from orchestrator.actuators.dns_rrset import DnsBalancer, DnsConflict, RRsetView, rdtype_of
from orchestrator.core.config_dns import split_server
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import PermanentError, TemporaryError

TYPES = ("A", "AAAA")
CONFLICT_RCODES = {dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.YXDOMAIN}


class Rfc2136Balancer(DnsBalancer):
    """The A/AAAA RRset of one name, changed by signed dynamic updates."""

    def __init__(self, config: LoadBalancerConfig, *, term: Term | None = None) -> None:
        if config.rfc2136 is None:
            raise PermanentError(f"balancer {config.name!r} has no 'rfc2136:' section")
        self.settings = config.rfc2136
        super().__init__(config, self.settings.name, self.settings.ttl, term=term)
        self.host, self.port = split_server(self.settings.server)
        self.zone = dns.name.from_text(self.settings.zone)
        self.dns_name = dns.name.from_text(self.settings.name)
        tsig = self.settings.tsig
        self.key_name = dns.name.from_text(tsig.name) if tsig else None
        self.keyring = (
            {self.key_name: dns.tsig.Key(self.key_name, tsig.secret.get_secret_value(), tsig.algorithm)}
            if tsig and self.key_name
            else None
        )

    def __repr__(self) -> str:
        return f"Rfc2136Balancer({self.name!r}, {self.settings.server}, {self.settings.name})"

    @property
    def key(self) -> str:
        return f"TSIG key {self.key_name}" if self.key_name else "no TSIG key"

    async def _address(self) -> str:
        """The server's IP address (a host name is resolved at each call: the primary may move)."""
        try:
            return str(ipaddress.ip_address(self.host))
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM
            )
        except OSError as e:
            raise TemporaryError(f"{self.what}: cannot resolve server {self.host}: {e}") from e
        return str(infos[0][4][0])

    def _tsig_error(self, e: Exception) -> PermanentError:
        key = self.key
        if isinstance(e, dns.tsig.PeerBadKey):
            text = f"the server does not know {key} (BADKEY): check tsig.name and tsig.algorithm"
        elif isinstance(e, dns.tsig.PeerBadSignature):
            text = (
                f"the server refused the signature of {key} (BADSIG): tsig.secret differs from the server's"
            )
        elif isinstance(e, dns.tsig.PeerBadTime | dns.tsig.BadTime):
            text = f"TSIG time check failed with {key} (BADTIME): this host's clock and the server's differ"
        elif isinstance(e, dns.message.UnknownTSIGKey):
            text = f"the answer is signed with a key we do not have (we sign with {key})"
        else:
            text = f"the answer fails TSIG verification with {key} ({type(e).__name__}): check tsig.secret"
        return PermanentError(f"{self.what}: {text}")

    def _cname_error(self, target: str) -> PermanentError:
        return PermanentError(
            f"{self.what} is a CNAME (to {target}): the server ignores A/AAAA updates at a CNAME; point the "
            "balancer's name at the name that holds the addresses, or replace the CNAME by them"
        )

    async def _exchange(self, message: dns.message.Message, what: str) -> dns.message.Message:
        where = await self._address()
        timeout = self.settings.timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await dns.asyncquery.tcp(message, where, timeout=timeout, port=self.port)
        except (TimeoutError, dns.exception.Timeout) as e:
            raise TemporaryError(
                f"{self.what}: {what} to {self.settings.server} timed out after {timeout:g}s"
            ) from e
        except (dns.tsig.PeerError, dns.tsig.BadSignature, dns.tsig.BadTime, dns.message.UnknownTSIGKey) as e:
            raise self._tsig_error(e) from e
        except (ConnectionError, EOFError, OSError) as e:
            raise TemporaryError(
                f"{self.what}: {what} to {self.settings.server} failed: {type(e).__name__}"
            ) from e
        except (dns.query.BadResponse, dns.exception.FormError) as e:
            raise TemporaryError(
                f"{self.what}: {what} to {self.settings.server}: malformed or mismatched answer "
                f"({type(e).__name__})"
            ) from e
        except dns.exception.DNSException as e:
            raise PermanentError(
                f"{self.what}: {what} to {self.settings.server} failed: {type(e).__name__}: {e}"
            ) from e

    def _rcode_error(self, rcode: dns.rcode.Rcode, what: str) -> TemporaryError | PermanentError:
        name = dns.rcode.to_text(rcode)
        text = f"{self.what}: the server answered the {what} with {name}"
        if rcode == dns.rcode.SERVFAIL:
            return TemporaryError(text)
        if rcode == dns.rcode.REFUSED:
            grantee = self.key if self.key_name else "this host's address (no tsig: configured)"
            hint = (
                f"allow-update / update-policy must grant {grantee} on {self.settings.name}"
                if what == "update"
                else f"allow-query / allow-transfer must allow {self.key}"
            )
            return PermanentError(f"{text}: {hint}")
        if rcode == dns.rcode.NOTAUTH:
            return PermanentError(
                f"{text}: not authoritative for {self.settings.zone}, or {self.key} refused"
            )
        if rcode == dns.rcode.NOTZONE:
            return PermanentError(f"{text}: {self.settings.name} is not in zone {self.settings.zone}")
        return PermanentError(text)

    async def read_rrset(self) -> RRsetView:
        if self.settings.read == "axfr":
            return await self._read_axfr()
        answers = await asyncio.gather(*(self._query(t) for t in TYPES))
        records = {t: a for t, (a, _) in zip(TYPES, answers, strict=True) if a}
        ttls = {t: ttl for t, (a, ttl) in zip(TYPES, answers, strict=True) if a}
        return RRsetView(records, ttls)

    async def _query(self, rdtype: str) -> tuple[frozenset[str], int]:
        query = dns.message.make_query(self.dns_name, rdtype)
        query.flags &= ~dns.flags.RD
        if self.keyring is not None and self.key_name is not None:
            query.use_tsig(self.keyring, self.key_name)
        response = await self._exchange(query, f"{rdtype} query")
        rcode = response.rcode()
        cname = response.get_rrset(response.answer, self.dns_name, dns.rdataclass.IN, dns.rdatatype.CNAME)
        if cname is not None and response.flags & dns.flags.AA:  # NXDOMAIN when its target does not exist
            raise self._cname_error(str(cname[0].target))
        if rcode == dns.rcode.NXDOMAIN:
            return frozenset(), 0
        if rcode != dns.rcode.NOERROR:
            raise self._rcode_error(rcode, "query")
        if not response.flags & dns.flags.AA:
            raise PermanentError(
                f"{self.what}: {self.settings.server} is not authoritative for {self.settings.zone}: "
                "point `server` at the zone's primary"
            )
        rrset = response.get_rrset(
            response.answer, self.dns_name, dns.rdataclass.IN, dns.rdatatype.from_text(rdtype)
        )
        if rrset is None:
            return frozenset(), 0
        return frozenset(str(ipaddress.ip_address(r.address)) for r in rrset), int(rrset.ttl)

    async def _read_axfr(self) -> RRsetView:
        zone = dns.zone.Zone(self.zone)
        query, _ = dns.xfr.make_query(
            zone,
            keyring=self.keyring,
            keyname=self.key_name,
            keyalgorithm=self.settings.tsig.algorithm if self.settings.tsig else dns.tsig.default_algorithm,
        )
        where = await self._address()
        timeout = self.settings.timeout_s
        try:
            async with asyncio.timeout(timeout):
                await dns.asyncquery.inbound_xfr(
                    where, zone, query, port=self.port, timeout=timeout, lifetime=timeout
                )
        except (TimeoutError, dns.exception.Timeout) as e:
            raise TemporaryError(f"{self.what}: zone transfer timed out after {timeout:g}s") from e
        except dns.xfr.TransferError as e:
            raise self._rcode_error(e.rcode, "zone transfer") from e
        except (dns.tsig.PeerError, dns.tsig.BadSignature, dns.tsig.BadTime, dns.message.UnknownTSIGKey) as e:
            raise self._tsig_error(e) from e
        except (ConnectionError, EOFError, OSError) as e:
            raise TemporaryError(f"{self.what}: zone transfer failed: {type(e).__name__}") from e
        except dns.exception.DNSException as e:
            raise PermanentError(f"{self.what}: zone transfer failed: {e}") from e
        cname = zone.get_rdataset(self.dns_name, "CNAME")
        if cname:
            raise self._cname_error(str(cname[0].target))
        records: dict[str, frozenset[str]] = {}
        ttls: dict[str, int] = {}
        for rdtype in TYPES:
            rdataset = zone.get_rdataset(self.dns_name, rdtype)
            if rdataset:
                records[rdtype] = frozenset(str(ipaddress.ip_address(r.address)) for r in rdataset)
                ttls[rdtype] = int(rdataset.ttl)
        soa = zone.get_rdataset(self.zone, "SOA")
        return RRsetView(records, ttls, version=soa[0].serial if soa else None)

    async def write_rrset(self, read: RRsetView, add: set[str], remove: set[str], fence: Fence) -> None:
        update = dns.update.UpdateMessage(self.zone)
        if self.keyring is not None and self.key_name is not None:
            update.use_tsig(self.keyring, self.key_name)
        for rdtype in TYPES:
            present = read.records.get(rdtype)
            if present:  # exactly these records, no more and no fewer (RFC 2136 §2.4.2)
                update.present(self.dns_name, dns.rdataset.from_text("IN", rdtype, 0, *sorted(present)))
            else:
                update.absent(self.dns_name, rdtype)
        for address in sorted(remove):
            update.delete(self.dns_name, rdtype_of(address), address)
        for address in sorted(add):
            update.add(self.dns_name, self.ttl_s, rdtype_of(address), address)
        fence()  # after the read, right before the write: a deposed leader sends nothing
        response = await self._exchange(update, "update")
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        if rcode in CONFLICT_RCODES:
            raise DnsConflict(
                f"{self.what}: the RRset changed since it was read ({dns.rcode.to_text(rcode)}); "
                "nothing was written, reading it again"
            )
        raise self._rcode_error(rcode, "update")
