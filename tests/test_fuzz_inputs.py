"""Property-based fuzzing of what reaches the daemon from outside (issue 12): YAML configs and playbooks,
HTTP API bodies, `failover.cmd` requests over real NATS, and webhook signatures.

The property is the same everywhere: hostile input is refused the documented way (a `file:line` problem,
a 4xx, an error answer, False) and never escapes as another exception, a 500, or a dead daemon. The
number of examples comes from the Hypothesis profile in conftest.py; the API and NATS properties share
one running daemon (real NATS, real HAProxy), driven from a worker thread so the loop keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orchestrator.bus.embedded import EmbeddedNats
from orchestrator.core import signing, subjects
from orchestrator.core.config import load_config
from orchestrator.core.errors import ValidationFailed
from orchestrator.playbooks.loader import load_playbook
from tests.test_api import ADMIN, VIEWER, api_daemon

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")

# YAML -------------------------------------------------------------------------------------------------

KEYS = ["name", "on", "event", "steps", "action", "with", "id", "vars", "<<", "clusters", "probes", "http"]
KEYS += ["url", "body_regex", "timeout", "retry", "guards", "api", "nats", "x", "'{{ k }}'", "? [a]"]
SCALARS = ["1", "-1", "x", "''", "~", "true", "10s", "1e999", "!!int x", "2024-13-45", "!!binary ===="]
SCALARS += ["!foo bar", "!!python/object:os.system x", "'{{ event.cluster }}'", "cluster.failed"]
SCALARS += ["lb.drain", "'(a+)+$'", "'(a)\\1'", "${UNSET}", "${X:-d}", "[", "{", "]", "}", ": :", "|", "- -"]
ANCHORS = ["", "", "", "&a ", "&b "]
ALIASES = ["*a", "*b", "*c"]


def flow(node: Any) -> str:
    """A generated tree as YAML flow text: anchors, aliases and broken scalars included."""
    kind, anchor, value = node
    if kind == "alias":
        return str(value)
    if kind == "scalar":
        return anchor + str(value)
    if kind == "list":
        return anchor + "[" + ", ".join(flow(v) for v in value) + "]"
    return anchor + "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value) + "}"


leaf = st.one_of(
    st.tuples(st.just("scalar"), st.sampled_from(ANCHORS), st.sampled_from(SCALARS)),
    st.tuples(st.just("alias"), st.just(""), st.sampled_from(ALIASES)),
)
tree = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.tuples(st.just("list"), st.sampled_from(ANCHORS), st.lists(inner, max_size=5)),
        st.tuples(
            st.just("map"),
            st.sampled_from(ANCHORS),
            st.lists(st.tuples(st.sampled_from(KEYS), inner), max_size=5),
        ),
    ),
    max_leaves=40,
)
plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=30,
)
documents = st.one_of(
    tree.map(flow),
    tree.map(lambda t: "name: fuzz\non: {event: cluster.failed}\nsteps: " + flow(t) + "\n"),
    tree.map(lambda t: "clusters:\n  - name: eu\n    probes: " + flow(t) + "\n"),
    plain.map(lambda v: yaml.safe_dump(v, default_flow_style=False)),
    st.integers(0, 3000).map(lambda n: "x: " + "[" * n + "]" * n),
    st.integers(0, 3000).map(lambda n: "x: " + "- " * n + "1"),
    st.text(max_size=200),
)


def refused_with_lines(error: ValidationFailed, path: Path) -> bool:
    return bool(error.problems) and all(str(p).startswith(f"{path}") for p in error.problems)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents)
@example("steps: &s [*s]")
@example("a: &a {<<: *a}")
@example(
    "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]"
)
def test_any_yaml_is_loaded_or_refused_with_file_and_line(text: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        for load in (lambda: load_playbook(path, None), lambda: load_config(path, env={})):
            try:
                load()
            except ValidationFailed as e:
                assert refused_with_lines(e, path), [str(p) for p in e.problems]


# Signatures -------------------------------------------------------------------------------------------

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)
headers = st.one_of(
    any_text,
    st.builds(
        lambda t, v1, v2: f"t={t},v1={v1}" + (f",v2={v2}" if v2 is not None else ""),
        st.one_of(st.integers(-(10**20), 10**20).map(str), any_text),
        st.one_of(st.text("0123456789abcdef", min_size=64, max_size=64), any_text),
        st.none() | any_text,
    ),
)


@given(
    secret=any_text,
    body=st.binary(max_size=200),
    header=headers,
    message_id=st.none() | any_text | st.text("0123456789abcdef", min_size=32, max_size=32),
    now=st.none() | st.floats(),
    tolerance=st.integers(-10, 10**6),
)
def test_verify_answers_a_bool_for_anything(
    secret: str, body: bytes, header: str, message_id: str | None, now: float | None, tolerance: int
) -> None:
    result = signing.verify(secret, body, header, tolerance, now, message_id)
    assert result is False or result is True
    if result:  # only a real signature of this body passes
        assert header.count("v1=") == 1


@given(secret=st.text(max_size=40), body=st.binary(max_size=200), stamp=st.integers(0, 10**11))
def test_a_signature_verifies_with_and_without_its_id(secret: str, body: bytes, stamp: int) -> None:
    signed = signing.sign_headers(secret, body, timestamp=stamp)
    header, message_id = signed[signing.HEADER], signed[signing.ID_HEADER]
    assert signing.verify(secret, body, header, now=stamp, message_id=message_id)
    assert signing.verify(secret, body, header, now=stamp)
    assert not signing.verify(secret, body + b"x", header, now=stamp, message_id=message_id)


# HTTP bodies and failover.cmd against a running daemon --------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
commands = st.sampled_from(["status", "clusters", "runs", "run", "pause", "failover", "approve", "nope", ""])
command_bodies = st.builds(
    lambda command, args, extra: {"command": command, "args": args, **extra},
    commands | st.integers() | st.none(),
    st.dictionaries(st.sampled_from(["id", "limit", "before", "cluster", "for", "force", "run"]), json_values)
    | json_values,
    st.dictionaries(st.sampled_from(["token", "via", "x"]), json_values, max_size=2),
)
raw_bodies = st.one_of(
    command_bodies.map(lambda b: json.dumps(b).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(0, 70_000).map(lambda n: b"[" * n),
    st.integers(0, 200).map(
        lambda n: b'{"command": "status", "args": ' + b'{"a": ' * n + b"1" + b"}" * n + b"}"
    ),
    st.binary(max_size=300),
)


def on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(30)


async def test_api_bodies_and_command_requests_never_crash_the_daemon(
    nats_server: EmbeddedNats, haproxy_binary: str, tmp_path: Path
) -> None:
    loop = asyncio.get_running_loop()
    async with api_daemon(nats_server, haproxy_binary, tmp_path) as (daemon, _f, api):
        bus = daemon.bus
        assert bus is not None
        ran = {"http": 0, "nats": 0}

        async def post(body: bytes, token: str | None, content_type: str) -> tuple[int, Any]:
            headers = {"Content-Type": content_type}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            async with api.session.post(f"{api.base}/api/v1/commands", data=body, headers=headers) as resp:
                text = await resp.text()
                return resp.status, json.loads(text) if resp.content_type == "application/json" else text

        @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(
            body=raw_bodies,
            token=st.sampled_from([None, VIEWER, "not-a-token"]),
            content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream"]),
        )
        def http(body: bytes, token: str | None, content_type: str) -> None:
            ran["http"] += 1
            status, answer = on_loop(loop, post(body, token, content_type))
            assert 200 <= status < 500, (status, answer, body[:80])
            if status >= 400:
                assert isinstance(answer, dict) and answer["ok"] is False

        async def ask(payload: bytes) -> Any:
            return json.loads(await bus.request(subjects.COMMANDS, payload, timeout_s=10))

        requests = st.one_of(
            raw_bodies,
            command_bodies.map(lambda b: json.dumps({**b, "token": VIEWER}).encode()),
            st.integers(60_000, 200_000).map(lambda n: b" " * n),
        )

        @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(payload=requests)
        def nats(payload: bytes) -> None:
            ran["nats"] += 1
            answer = on_loop(loop, ask(payload))
            assert isinstance(answer, dict) and isinstance(answer.get("ok"), bool), answer
            if not answer["ok"]:
                assert isinstance(answer.get("status"), int) and 400 <= answer["status"] < 500, answer

        await asyncio.to_thread(http)
        await asyncio.to_thread(nats)
        assert min(ran.values()) >= 10
        answer = await ask(json.dumps({"command": "status", "token": ADMIN}).encode())
        assert answer["ok"] is True  # the daemon is alive and still answering
        async with aiohttp.ClientSession() as session, session.get(f"{api.base}/healthz") as resp:
            assert resp.status == 200
