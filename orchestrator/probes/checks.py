"""Probe kinds that need no Kubernetes client: `http` and `tcp`.

A probe is bounded by its timeout and turns every failure into a ProbeResult with a short, human
`detail` (`HTTP 503`, `connection refused`, `timeout after 800ms`): exceptions never escape.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

import aiohttp

from orchestrator.core.config_clusters import HttpProbe, TcpProbe, body_pattern
from orchestrator.core.durations import format_duration
from orchestrator.probes.base import ProbeResult

_BODY_LIMIT = 64 * 1024


def _elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, aiohttp.ClientConnectorError):
        os_error = error.os_error
        if isinstance(os_error, ConnectionRefusedError):
            return "connection refused"
        return f"cannot connect: {os_error.strerror or os_error}"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(error, ssl.SSLError):
        return f"TLS error: {error.reason or error}"
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return f"{type(error).__name__}: {error}"[:200]


async def check_http(session: aiohttp.ClientSession, spec: HttpProbe, timeout_s: float) -> ProbeResult:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with session.request(
                spec.method, spec.url, headers=spec.headers, allow_redirects=False, ssl=spec.verify_tls
            ) as resp:
                # read even when unused: a connection goes back to the pool only once its response is
                # consumed (a larger body than the limit just closes it)
                body = await resp.content.read(_BODY_LIMIT)
                status = resp.status
    except TimeoutError:
        return ProbeResult(False, _elapsed_ms(start), f"timeout after {format_duration(timeout_s)}")
    except (aiohttp.ClientError, OSError, ssl.SSLError) as e:
        return ProbeResult(False, _elapsed_ms(start), _describe(e))
    latency = _elapsed_ms(start)
    if status not in spec.expect_status:
        return ProbeResult(False, latency, f"HTTP {status}, expected {spec.expect_status}")
    # RE2 (linear time): the body is the probed service's, the loop must not wait on a backtracking match
    if spec.body_regex and not body_pattern(spec.body_regex).search(body.decode("utf-8", "replace")):
        return ProbeResult(False, latency, f"HTTP {status}, body does not match {spec.body_regex!r}")
    return ProbeResult(True, latency, f"HTTP {status}")


async def check_tcp(spec: TcpProbe, timeout_s: float) -> ProbeResult:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(spec.host, spec.port)
    except TimeoutError:
        return ProbeResult(False, _elapsed_ms(start), f"timeout after {format_duration(timeout_s)}")
    except OSError as e:
        return ProbeResult(False, _elapsed_ms(start), _describe(e))
    latency = _elapsed_ms(start)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(True, latency, "connected")
