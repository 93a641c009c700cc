"""The error roots every layer speaks.

Client exceptions (nats, kubernetes-asyncio, aiohttp, sockets) are caught in the module that owns the
client and re-raised as one of these with `raise ... from e`, so callers decide on retry by type alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


class OrchestratorError(Exception):
    """Root of our own errors."""


class TemporaryError(OrchestratorError):
    """Worth retrying: timeouts, refused connections, 5xx, conflicts."""

    def __init__(self, message: str, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.delay_s = delay_s


def retry_after_s(value: str | None) -> float | None:
    """Seconds a server asks us to wait (`Retry-After`: a number of seconds or an HTTP date), or None
    when it asks nothing readable. Carried as `TemporaryError.delay_s`; step retries honour it."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class PermanentError(OrchestratorError):
    """Retrying will not help: 4xx, bad arguments, refused by a guard."""


class GuardRefused(PermanentError):
    """A safety guard stopped an action; the message says which rule and why."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule


@dataclass(frozen=True)
class Problem:
    """One problem found in a file, printed as `file:line: path: message`."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '<root>'}: {self.message}"


class ValidationFailed(OrchestratorError):
    """A config or playbook was refused; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))
