"""HAProxy driver: server weights through the runtime API of every instance of one balancer.

The runtime API is a line protocol on a TCP or unix socket: one command per connection, the reply read
to EOF (DESIGN §11). Success of `set weight` is an empty line and any other text is an error, so errors
are classified here, at the boundary: sockets and timeouts are temporary, refusals are permanent.
Runtime weights are lost on a reload unless the instance loads a server-state file; the reconciler
re-asserts desired weights on the instances it finds reverted, and only on those.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog

from orchestrator.actuators.base import (
    Balancer,
    Fence,
    InstanceWeights,
    Term,
    combined_error,
    no_fence,
)
from orchestrator.bus.leadership import NotLeader
from orchestrator.core.config_drivers import LoadBalancerConfig
from orchestrator.core.errors import OrchestratorError, PermanentError, TemporaryError

log = structlog.get_logger(__name__)

T = TypeVar("T")

MAX_WEIGHT = 256
"""HAProxy refuses absolute weights above 256 ("Absolute weight can only be between 0 and 256")."""

# HAProxy's own identifier alphabet; anything else (spaces, ';', newlines) could smuggle in a command.
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
_GET_WEIGHT_RE = re.compile(r"^(\d+) \(initial (\d+)\)$")
_STATE_COLUMNS = ("srv_name", "srv_addr", "srv_op_state", "srv_admin_state", "srv_uweight", "srv_iweight")


@dataclass(frozen=True)
class ServerState:
    """One row of `show servers state`: what the instance runs now, not what its config file says."""

    backend: str
    name: str
    addr: str
    port: int | None
    op_state: int
    """0 stopped, 1 starting, 2 running, 3 stopping (health checks decide)."""
    admin_state: int
    """Bit mask of maintenance / drain flags set by an operator, the config or DNS; 0 is none."""
    weight: int
    """The user weight, the one `set weight` changes."""
    initial_weight: int
    """The weight from the config file, which a reload without a state file goes back to."""

    @property
    def running(self) -> bool:
        return self.op_state == 2


def _check_name(kind: str, value: str) -> str:
    if not _NAME_RE.match(value):
        raise PermanentError(f"invalid HAProxy {kind} name {value!r}")
    return value


def check_weight(weight: object) -> int:
    """Refuse anything but an int in 0..256 before it reaches an instance (bool is not a weight)."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        raise PermanentError(f"HAProxy weight must be an integer in 0..{MAX_WEIGHT}, got {weight!r}")
    return weight


class HAProxyAdmin:
    """The runtime API of one HAProxy instance, at `tcp://host:port` or `unix:///path`."""

    def __init__(self, address: str, timeout_s: float) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._unix_path: str | None = None
        self._host = ""
        self._port = 0
        if address.startswith("unix://"):
            self._unix_path = address.removeprefix("unix://")
        elif address.startswith("tcp://"):
            host, sep, port = address.removeprefix("tcp://").rpartition(":")
            if not sep or not host or not port.isdigit():
                raise PermanentError(f"expected tcp://host:port, got {address!r}")
            self._host, self._port = host.strip("[]"), int(port)
        else:
            raise PermanentError(f"expected tcp://host:port or unix:///path, got {address!r}")
        if self._unix_path == "":
            raise PermanentError(f"expected unix:///path, got {address!r}")

    def __repr__(self) -> str:
        return f"HAProxyAdmin({self.address!r})"

    async def command(self, cmd: str) -> str:
        """Send one command on a fresh connection and return the whole reply.

        A connection per command is what the API expects without `prompt` mode, and it leaves no
        half-read stream behind when a timeout fires.
        """
        if "\n" in cmd or "\r" in cmd:
            raise PermanentError(f"a runtime API command is one line, got {cmd!r}")
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._unix_path is not None:
                    reader, writer = await asyncio.open_unix_connection(self._unix_path)
                else:
                    reader, writer = await asyncio.open_connection(self._host, self._port)
                try:
                    writer.write(cmd.encode() + b"\n")
                    await writer.drain()
                    data = await reader.read()
                finally:
                    writer.close()
                    # Wait for the socket to be really closed so none outlives its event loop.
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError as e:
            raise TemporaryError(
                f"haproxy {self.address}: no reply to {cmd!r} within {self.timeout_s}s"
            ) from e
        except OSError as e:
            raise TemporaryError(f"haproxy {self.address}: {cmd!r} failed: {e}") from e
        return data.decode("utf-8", errors="replace")

    async def set_weight(self, backend: str, server: str, weight: int) -> None:
        """Set an absolute weight; HAProxy's refusal text (no such server, static algorithm) is kept."""
        cmd = f"set weight {_check_name('backend', backend)}/{_check_name('server', server)} "
        reply = await self.command(cmd + str(check_weight(weight)))
        if reply.strip():
            raise PermanentError(f"haproxy {self.address}: set weight {backend}/{server}: {reply.strip()}")
        log.info("haproxy.weight_set", instance=self.address, backend=backend, server=server, weight=weight)

    async def get_weight(self, backend: str, server: str) -> int:
        """The current weight, parsed from `75 (initial 100)`."""
        cmd = f"get weight {_check_name('backend', backend)}/{_check_name('server', server)}"
        reply = (await self.command(cmd)).strip()
        match = _GET_WEIGHT_RE.match(reply)
        if match is None:
            raise PermanentError(f"haproxy {self.address}: get weight {backend}/{server}: {reply}")
        return int(match.group(1))

    async def _state_table(self, backend: str) -> tuple[dict[str, int], list[str]]:
        """`show servers state` of one backend: column name -> position, and the rows.

        Columns are looked up by the header's names because their set grows between HAProxy versions.
        """
        reply = await self.command(f"show servers state {_check_name('backend', backend)}")
        lines = [line for line in reply.splitlines() if line.strip()]
        if not lines or lines[0].strip() != "1":
            text = " ".join(lines).strip() or "empty reply"
            raise PermanentError(f"haproxy {self.address}: show servers state {backend}: {text}")
        if len(lines) < 2 or not lines[1].startswith("#"):
            raise PermanentError(f"haproxy {self.address}: show servers state {backend}: no header line")
        columns = lines[1].lstrip("#").split()
        missing = [c for c in _STATE_COLUMNS if c not in columns]
        if missing:
            raise PermanentError(f"haproxy {self.address}: show servers state lacks {', '.join(missing)}")
        return {name: i for i, name in enumerate(columns)}, lines[2:]

    async def servers_state(self, backend: str) -> dict[str, ServerState]:
        """Every server of a backend by name, read from `show servers state` (one call, one snapshot)."""
        at, rows = await self._state_table(backend)
        be, name, addr, port_at = at.get("be_name"), at["srv_name"], at["srv_addr"], at.get("srv_port")
        op, admin, weight, initial = (at[c] for c in _STATE_COLUMNS[2:])
        servers: dict[str, ServerState] = {}
        for line in rows:
            row = line.split()  # by position: a row as a dict cost 3x per server
            try:
                if be is not None and row[be] != backend:
                    continue
                port = row[port_at] if port_at is not None else None
                state = ServerState(
                    backend=backend,
                    name=row[name],
                    addr=row[addr],
                    port=int(port) if port is not None and port.isdigit() else None,
                    op_state=int(row[op]),
                    admin_state=int(row[admin]),
                    weight=int(row[weight]),
                    initial_weight=int(row[initial]),
                )
            except (IndexError, ValueError) as e:
                raise PermanentError(f"haproxy {self.address}: unexpected state row {line!r}") from e
            servers[state.name] = state
        return servers

    async def server_weights(self, backend: str) -> dict[str, int]:
        """server -> current weight, from the same snapshot as `servers_state` without the rest of
        each row: what every drain, restore and reconcile pass reads (a third of the cost at 5,000
        servers)."""
        at, rows = await self._state_table(backend)
        be, name, weight = at.get("be_name"), at["srv_name"], at["srv_uweight"]
        out: dict[str, int] = {}
        for line in rows:
            row = line.split()
            try:
                if be is None or row[be] == backend:
                    out[row[name]] = int(row[weight])
            except (IndexError, ValueError) as e:
                raise PermanentError(f"haproxy {self.address}: unexpected state row {line!r}") from e
        return out


async def _on_all(instances: Sequence[HAProxyAdmin], calls: Sequence[Awaitable[T]]) -> list[T]:
    """Await one call per instance concurrently; report every instance's failure, not just the first.

    A NotLeader (the fence refused a write) is passed on as it is; then a PermanentError anywhere wins
    (retrying will not fix a refusal); otherwise the failure is temporary.
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, NotLeader):
            raise result
    failures: list[OrchestratorError] = []
    values: list[T] = []
    for result in results:
        if isinstance(result, OrchestratorError):
            failures.append(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            values.append(result)
    if failures:
        raise combined_error(failures)
    return values


class HAProxyBalancer(Balancer):
    """One HAProxy backend whose servers are the clusters, on every configured instance."""

    max_weight = MAX_WEIGHT

    def __init__(self, config: LoadBalancerConfig, *, term: Term | None = None) -> None:
        super().__init__(config, term=term)
        if config.haproxy is None:
            raise PermanentError(f"balancer {config.name!r} has no 'haproxy:' section")
        self.backend = config.haproxy.backend
        self.instances = [HAProxyAdmin(address, config.haproxy.timeout_s) for address in config.haproxy.admin]

    async def _instance_weights(self, instance: HAProxyAdmin) -> dict[str, int]:
        servers = await instance.server_weights(self.backend)
        weights: dict[str, int] = {}
        for cluster, server in self.members.items():
            found = servers.get(server)
            if found is None:
                raise PermanentError(
                    f"haproxy {instance.address}: backend {self.backend!r} has no server {server!r} "
                    f"(member for cluster {cluster!r})"
                )
            weights[cluster] = found
        return weights

    async def get_member_weights(self, cluster: str) -> dict[str, int | OrchestratorError]:
        server = self.members.get(cluster)
        if server is None:
            return {}
        results = await asyncio.gather(
            *(i.get_weight(self.backend, server) for i in self.instances), return_exceptions=True
        )
        out: dict[str, int | OrchestratorError] = {}
        for instance, result in zip(self.instances, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, OrchestratorError):
                raise result
            out[instance.address] = result
        return out

    async def get_instance_weights(self) -> InstanceWeights:
        """instance address -> {cluster: weight}, or the error of an instance that could not be read:
        for status pages, drift detection, and reads that one instance down must not stop."""
        results = await asyncio.gather(
            *(self._instance_weights(i) for i in self.instances), return_exceptions=True
        )
        out: InstanceWeights = {}
        for instance, result in zip(self.instances, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, OrchestratorError):
                raise result
            out[instance.address] = result
        return out

    async def get_weights(self) -> dict[str, int]:
        by_instance = await self.get_instance_weights()
        failures = [result for result in by_instance.values() if isinstance(result, OrchestratorError)]
        if failures:
            raise combined_error(failures)
        read = {address: w for address, w in by_instance.items() if not isinstance(w, OrchestratorError)}
        first, *others = read.values()
        if all(weights == first for weights in others):
            return first
        disagreements = [
            f"{cluster}: " + ", ".join(f"{address}={w[cluster]}" for address, w in read.items())
            for cluster in self.members
            if len({w[cluster] for w in read.values()}) > 1
        ]
        raise TemporaryError(f"haproxy instances of {self.name!r} disagree: " + "; ".join(disagreements))

    def member_label(self, cluster: str) -> str:
        return f"{self.backend}/{self.members[cluster]}"

    async def set_weights(self, weights: Mapping[str, int], fence: Fence = no_fence) -> None:
        await self._write(weights, self.instances, fence)

    async def set_instance_weights(
        self, weights: Mapping[str, int], instances: Collection[str], fence: Fence = no_fence
    ) -> None:
        unknown = sorted(set(instances) - {i.address for i in self.instances})
        if unknown:
            raise PermanentError(f"balancer {self.name!r} has no instance {', '.join(unknown)}")
        await self._write(weights, [i for i in self.instances if i.address in instances], fence)

    async def _write(
        self, weights: Mapping[str, int], instances: Sequence[HAProxyAdmin], fence: Fence
    ) -> None:
        """Absolute weights on `instances`, concurrently, then read back from the same instances.

        Every instance is attempted even when another one fails, so a drain reaches the instances
        that answer at once; the error names the ones that did not.
        """
        unknown = sorted(set(weights) - set(self.members))
        if unknown:
            raise PermanentError(f"balancer {self.name!r} has no member for cluster(s) {', '.join(unknown)}")
        targets = {cluster: check_weight(weight) for cluster, weight in weights.items()}
        if not targets or not instances:
            return

        async def apply(instance: HAProxyAdmin) -> None:
            # In order on one instance, so a refusal stops the rest there instead of half-applying blindly.
            for cluster, weight in targets.items():
                fence()  # right before each command on each instance: a deposed leader sends no more
                await instance.set_weight(self.backend, self.members[cluster], weight)

        await _on_all(instances, [apply(instance) for instance in instances])
        read = await _on_all(instances, [self._instance_weights(i) for i in instances])
        wrong = [
            f"{instance.address} has {cluster}={current[cluster]} (wanted {weight})"
            for instance, current in zip(instances, read, strict=True)
            for cluster, weight in targets.items()
            if current[cluster] != weight
        ]
        if wrong:
            raise TemporaryError(f"haproxy weights of {self.name!r} did not stick: " + "; ".join(wrong))
