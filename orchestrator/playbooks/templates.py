"""Sandboxed Jinja2 with strict undefined: playbook authors cannot reach Python internals, and a typo
in a variable name is an error, not an empty string that drains the wrong cluster.

A string that is exactly one `{{ expression }}` renders to the expression's native value (a list stays
a list for `for_each`); any other string renders to text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

_SINGLE_EXPR = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)


class TemplateError(Exception):
    """A template failed to compile or render; the message is fit for an event or a validate line."""


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
    )
    return env


_ENV = _environment()


def is_template(value: str) -> bool:
    return "{{" in value or "{%" in value


def check_syntax(value: str) -> str | None:
    """None when `value` compiles; otherwise the error message."""
    try:
        match = _SINGLE_EXPR.match(value)
        if match and "}}" not in match.group("expr"):
            _ENV.compile_expression(match.group("expr"))
        else:
            _ENV.parse(value)
    except jinja2.TemplateSyntaxError as e:
        return f"template syntax error: {e.message}"
    return None


def check_expression(value: str) -> str | None:
    """A bare expression (used by `when:`), or a `{{ }}` template."""
    if is_template(value):
        return check_syntax(value)
    try:
        _ENV.compile_expression(value)
    except jinja2.TemplateSyntaxError as e:
        return f"expression syntax error: {e.message}"
    return None


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every string inside `value` (dicts and lists recursively)."""
    if isinstance(value, str):
        return render_string(value, context)
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def render_string(value: str, context: Mapping[str, Any]) -> Any:
    if not is_template(value):
        return value
    try:
        match = _SINGLE_EXPR.match(value)
        if match and "}}" not in match.group("expr") and "{%" not in value:
            return _defined(_ENV.compile_expression(match.group("expr"), undefined_to_none=False)(**context))
        return _ENV.from_string(value).render(**context)
    except jinja2.UndefinedError as e:
        raise TemplateError(f"undefined in {value!r}: {e.message}") from e
    except jinja2.TemplateError as e:
        raise TemplateError(f"cannot render {value!r}: {e}") from e
    except (TypeError, ValueError, ArithmeticError, LookupError) as e:
        raise TemplateError(f"cannot render {value!r}: {e}") from e


def _defined(value: Any) -> Any:
    """A bare expression yields the Undefined object instead of raising: make it raise."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return value


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """Evaluate a `when:`-style expression (bare or wrapped in `{{ }}`)."""
    if is_template(expression):
        return render_string(expression, context)
    try:
        return _defined(_ENV.compile_expression(expression, undefined_to_none=False)(**context))
    except jinja2.UndefinedError as e:
        raise TemplateError(f"undefined in {expression!r}: {e.message}") from e
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as e:
        raise TemplateError(f"cannot evaluate {expression!r}: {e}") from e


def strings(value: Any, loc: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every string inside a nested value with its location (for syntax checks)."""
    if isinstance(value, str):
        yield loc, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings(v, (*loc, i))
