"""Human durations (`800ms`, `5s`, `10m`, `1h30m`) used throughout config and playbooks.

Kept separate so the config models, the playbook models and the CLI (`--for 1h`) agree on one grammar.
"""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Return seconds for a duration string (or a bare number of seconds).

    Raises ValueError with a message fit for `file:line: path: message`.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '800ms', '5s' or '10m', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like '800ms', '5s' or '10m', got {value!r}")
    text = value.strip()
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"expected a duration like '800ms', '5s' or '10m', got {value!r}")
    return total


def format_duration(seconds: float) -> str:
    """The inverse for display: 0.8 -> '800ms', 90 -> '1m30s'."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    frac = seconds - whole
    parts = []
    for unit, size in (("h", 3600), ("m", 60)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    if whole or frac or not parts:
        parts.append(f"{whole + frac:g}s")
    return "".join(parts)
