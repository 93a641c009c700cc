"""JSON from outside (HTTP API bodies, `failover.cmd` requests and answers) parsed with a nesting bound.

CPython's json parser recurses once per level: 64 KiB of `[` raises RecursionError, which is not a
ValueError, so callers' error handling misses it (the API answered 500 with a traceback; a NATS
callback died without answering). Nothing we accept nests more than a few levels, so the depth is checked
before parsing, by a scan in linear time that runs in C (strings removed by one regex, the brackets
left counted), and every failure is a ValueError saying what is wrong.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects accepted; commands nest two or three levels."""
MAX_BYTES = 64 * 1024
"""Largest command request accepted on the bus, as the HTTP API's body limit."""

# a string (possessive: no backtracking; an unterminated one runs to the end), so brackets in it vanish
_STRING = re.compile(r'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def depth(text: str) -> int:
    """How deep arrays and objects nest in `text` (0 for a scalar), ignoring brackets inside strings."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def check_depth(data: bytes | str, max_depth: int = MAX_DEPTH) -> None:
    """ValueError when `data` nests deeper than `max_depth`; says nothing about whether it is JSON."""
    text = data if isinstance(data, str) else bytes(data).decode("utf-8", "replace")
    if depth(text) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` for untrusted UTF-8 input: ValueError for bad UTF-8, bad JSON or too deep."""
    text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    check_depth(text, max_depth)
    try:
        return json.loads(text)
    except RecursionError as e:  # not reached after the check; kept so no input can escape as one
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from e
