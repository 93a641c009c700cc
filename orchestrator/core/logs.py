"""structlog set-up: JSON when not on a TTY (for log pipelines), coloured console otherwise."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

from orchestrator.core import redact

LogFormat = Literal["auto", "json", "console"]

_SECRET_KEYS = ("token", "secret", "password", "authorization", "signing_secret", "webhook_url")


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: a field whose name says it holds a secret is never written, and no value
    (nested details, error messages, formatted tracebacks) carries a configured secret, a secret URL
    parameter or a credential (`core.redact`)."""
    for key in list(event):
        if any(s in key.lower() for s in _SECRET_KEYS):
            event[key] = "[redacted]"
        elif key != "exc_info":  # the console renderer formats it, through `_traceback`
            event[key] = redact.redact(event[key])
    return event


def _traceback(out: TextIO, exc_info: Any) -> None:
    """A plain traceback, redacted; never frame locals (a local may hold a token or a secret)."""
    text = io.StringIO()
    structlog.dev.plain_traceback(text, exc_info)
    out.write(redact.redact_text(text.getvalue()))


def configure(fmt: LogFormat = "auto", level: str = "info") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if use_json:  # the traceback is text before `_redact`, so it is redacted too
        processors += [structlog.processors.format_exc_info, _redact, structlog.processors.JSONRenderer()]
    else:
        processors += [
            _redact,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), exception_formatter=_traceback),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
