"""Real DNS servers for the DNS balancer tests, each the test's own process on free loopback ports.

- `BindServer`: Debian's BIND 9 (`/usr/sbin/named -g`), a generated named.conf and a zone file for
  `example.test` with a TSIG key that may update the zone and transfer it.
- `PowerDnsServer`: Debian's `pdns_server` with the gsqlite3 backend (schema from the Debian package),
  its HTTP API on, the zone created through that API.

Under CI=true a missing binary fails the test (`conftest.require`), otherwise it skips.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message
import dns.name
import dns.rdatatype
import dns.tsig
import dns.update

from orchestrator.bus.embedded import free_port

ZONE = "example.test."
NAME = "www.example.test."
KEY_NAME = "failover."
NAMED = "/usr/sbin/named"
PDNS = "/usr/sbin/pdns_server"
PDNS_SCHEMAS = (
    Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql"),
    Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql"),
)


def named_binary() -> str | None:
    return shutil.which("named") or (NAMED if os.access(NAMED, os.X_OK) else None)


def pdns_binary() -> str | None:
    found = shutil.which("pdns_server") or (PDNS if os.access(PDNS, os.X_OK) else None)
    schema = next((p for p in PDNS_SCHEMAS if p.exists()), None)
    return found if schema is not None else None


def new_secret() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def _wait_port(port: int, proc: asyncio.subprocess.Process, log: Path, timeout_s: float = 10.0) -> None:
    """Until something accepts TCP on `port` (bounded); the server's log in the error otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if proc.returncode is not None:
            break
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start: {log.read_text()[-2000:]}")


async def _stop(proc: asyncio.subprocess.Process | None) -> None:
    if proc is None or proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        proc.kill()
        await proc.wait()


class BindServer:
    """named on 127.0.0.1:<port> serving example.test, updatable and transferable with one TSIG key."""

    def __init__(self, binary: str, work: Path, records: Mapping[str, list[str]], ttl: int = 30) -> None:
        self.binary = binary
        self.work = work
        self.records = records
        """Initial addresses of www, by cluster (every list becomes A/AAAA records)."""
        self.ttl = ttl
        self.port = free_port()
        self.secret = new_secret()
        self.algorithm = "hmac-sha256"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_files(self) -> Path:
        self.work.mkdir(parents=True, exist_ok=True)
        zone = self.work / "example.test.zone"
        lines = [
            "$TTL 300",
            "@ IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 30",
            "@ IN NS ns1.example.test.",
            "ns1 IN A 127.0.0.1",
            "other IN A 203.0.113.200",
        ]
        for addresses in self.records.values():
            for address in addresses:
                lines.append(f"www {self.ttl} IN {'AAAA' if ':' in address else 'A'} {address}")
        zone.write_text("\n".join(lines) + "\n")
        conf = self.work / "named.conf"
        conf.write_text(
            f"""
options {{
  directory "{self.work}";
  listen-on port {self.port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  pid-file "{self.work}/named.pid";
  session-keyfile "{self.work}/session.key";
  managed-keys-directory "{self.work}";
  recursion no;
  dnssec-validation no;
  notify no;
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm {self.algorithm}; secret "{self.secret}"; }};
zone "example.test" {{
  type primary;
  file "{zone}";
  allow-update {{ key "{KEY_NAME}"; }};
  allow-transfer {{ key "{KEY_NAME}"; }};
}};
"""
        )
        return conf

    async def start(self) -> None:
        conf = self.work / "named.conf"
        if not conf.exists():
            conf = self._write_files()
        log = self.work / "named.log"
        with log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary, "-g", "-c", str(conf), stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL
            )
        await _wait_port(self.port, self.proc, log)

    async def stop(self) -> None:
        await _stop(self.proc)
        self.proc = None

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        name = dns.name.from_text(KEY_NAME)
        return {name: dns.tsig.Key(name, self.secret, self.algorithm)}

    async def addresses(self) -> set[str]:
        """www's A and AAAA as BIND serves them now (asked with dnspython, TSIG-signed)."""
        found: set[str] = set()
        for rdtype in ("A", "AAAA"):
            query = dns.message.make_query(NAME, rdtype)
            query.use_tsig(self.keyring(), dns.name.from_text(KEY_NAME))
            response = await dns.asyncquery.tcp(query, "127.0.0.1", port=self.port, timeout=2)
            for rrset in response.answer:
                if rrset.rdtype == dns.rdatatype.from_text(rdtype):
                    found |= {r.address for r in rrset}
        return found

    async def ttl_of(self, rdtype: str = "A") -> int | None:
        query = dns.message.make_query(NAME, rdtype)
        response = await dns.asyncquery.tcp(query, "127.0.0.1", port=self.port, timeout=2)
        return next((int(r.ttl) for r in response.answer), None)

    async def by_hand(
        self, add: Sequence[str] = (), remove: Sequence[str] = (), ttl: int | None = None
    ) -> None:
        """What an operator's `nsupdate -y` would do: records added and removed, no prerequisite."""
        update = dns.update.UpdateMessage(ZONE, keyring=self.keyring(), keyname=dns.name.from_text(KEY_NAME))
        for address in remove:
            update.delete(NAME, "AAAA" if ":" in address else "A", address)
        for address in add:
            update.add(NAME, ttl if ttl is not None else self.ttl, "AAAA" if ":" in address else "A", address)
        response = await dns.asyncquery.tcp(update, "127.0.0.1", port=self.port, timeout=2)
        assert response.rcode() == 0, response


class PowerDnsServer:
    """pdns_server with a fresh SQLite database; the API on 127.0.0.1:<api_port>, DNS on <port>."""

    def __init__(self, binary: str, work: Path, records: Mapping[str, list[str]], ttl: int = 30) -> None:
        self.binary = binary
        self.work = work
        self.records = records
        self.ttl = ttl
        self.port = free_port()
        self.api_port = free_port()
        self.api_key = base64.b64encode(os.urandom(18)).decode()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def zone_url(self) -> str:
        return f"{self.api_url}/api/v1/servers/localhost/zones/{ZONE}"

    async def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        db = self.work / "pdns.sqlite3"
        fresh = not db.exists()
        if fresh:
            schema = next(p for p in PDNS_SCHEMAS if p.exists())
            with contextlib.closing(sqlite3.connect(db)) as conn:
                conn.executescript(schema.read_text())
                conn.commit()
        log = self.work / "pdns.log"
        args = [
            "--no-config",
            "--daemon=no",
            "--guardian=no",
            "--disable-syslog",
            "--write-pid=no",
            f"--socket-dir={self.work}",
            "--launch=gsqlite3",
            f"--gsqlite3-database={db}",
            "--local-address=127.0.0.1",
            f"--local-port={self.port}",
            "--api=yes",
            f"--api-key={self.api_key}",
            "--webserver=yes",
            "--webserver-address=127.0.0.1",
            f"--webserver-port={self.api_port}",
            "--webserver-allow-from=127.0.0.0/8",
            "--cache-ttl=0",
            "--negquery-cache-ttl=0",
            "--query-cache-ttl=0",
            "--zone-cache-refresh-interval=0",
        ]
        with log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary, *args, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL
            )
        await _wait_port(self.api_port, self.proc, log)
        if fresh:
            await self._create_zone()

    async def _create_zone(self) -> None:
        rrsets = []
        for rdtype in ("A", "AAAA"):
            listed = [
                a
                for addresses in self.records.values()
                for a in addresses
                if (":" in a) == (rdtype == "AAAA")
            ]
            if listed:
                rrsets.append(
                    {
                        "name": NAME,
                        "type": rdtype,
                        "ttl": self.ttl,
                        "changetype": "REPLACE",
                        "records": [{"content": a, "disabled": False} for a in listed],
                    }
                )
        body = {"name": ZONE, "kind": "Native", "nameservers": ["ns1.example.test."], "rrsets": rrsets}
        status, text = await self.api("POST", f"{self.api_url}/api/v1/servers/localhost/zones", body)
        assert status == 201, text

    async def api(self, method: str, url: str, body: object = None) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                url,
                json=body,
                headers={"X-API-Key": self.api_key},
                timeout=aiohttp.ClientTimeout(total=5),
            ) as resp,
        ):
            return resp.status, await resp.text()

    async def stop(self) -> None:
        await _stop(self.proc)
        self.proc = None

    async def addresses(self) -> set[str]:
        """www's A and AAAA as pdns answers them on DNS now (asked with dnspython)."""
        found: set[str] = set()
        for rdtype in ("A", "AAAA"):
            query = dns.message.make_query(NAME, rdtype)
            response = await dns.asyncquery.tcp(query, "127.0.0.1", port=self.port, timeout=2)
            for rrset in response.answer:
                if rrset.rdtype == dns.rdatatype.from_text(rdtype):
                    found |= {r.address for r in rrset}
        return found

    async def by_hand(self, rdtype: str, addresses: list[str], ttl: int | None = None) -> None:
        """What an operator's `pdnsutil replace-rrset` / API call would do: the RRset replaced."""
        body = {
            "rrsets": [
                {
                    "name": NAME,
                    "type": rdtype,
                    "ttl": ttl if ttl is not None else self.ttl,
                    "changetype": "REPLACE",
                    "records": [{"content": a, "disabled": False} for a in addresses],
                }
            ]
        }
        status, text = await self.api("PATCH", self.zone_url, body)
        assert status == 204, text


def closed_port() -> int:
    """A loopback port nothing listens on (for 'the server is down')."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def running(server: BindServer | PowerDnsServer) -> AsyncIterator[None]:
    await server.start()
    try:
        yield
    finally:
        await server.stop()
