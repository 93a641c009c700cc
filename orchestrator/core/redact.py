"""One redaction for everything the daemon writes down or answers: journal records, run events, API and
command answers, log lines and error messages.

Three rules, applied together:
- every configured secret VALUE (any `SecretStr` of the config, header values and strings under
  secret-looking names, the password of a URL), wherever it appears inside a string, becomes `***`;
- a mapping key that looks secret (authorization, token, secret, password, cookie, api_key, x-api-key,
  credential, ...) has its value replaced whole;
- inside text, URL query parameters with such names (`?api_key=`, `&token=`, `?key=`), the password of
  `scheme://user:password@host` and the credential after `Bearer` / `Basic` are replaced.

Secret values are registered process-wide (`register_config`), because a log line has no config at hand;
a value shorter than 4 characters is not registered (replacing it would garble every message).

A run's plan must not hold a secret in the journal, yet the step must send it: `seal` wraps such a value
in a `Sealed` string whose text is the redacted one (that is what JSON and `str()` see) and which keeps
the real value in memory only (`unseal`). A record read back from the journal holds `***` instead, and
`is_masked` tells a step never to send that.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Iterable
from functools import cache
from typing import Any

from pydantic import BaseModel, SecretStr

MASK = "***"
MIN_SECRET_LEN = 4

_WORDS = (
    "authorization",
    "token",
    "secret",
    "password",
    "passwd",
    "cookie",
    "apikey",
    "credential",
    "privatekey",
    "accesskey",
    "routingkey",
    "signature",
)
_URL_PARAM = re.compile(r"(?P<lead>[?&;](?P<name>[^=&#;\s\"'<>]+)=)(?P<value>[^&#;\s\"'<>]*)")
_USERINFO = re.compile(r"(?P<lead>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@\"']*:)(?P<value>[^@\s/\"']+)(?=@)")
_SCHEME = re.compile(r"(?P<lead>\b(?:Bearer|Basic)\s+)(?P<value>[A-Za-z0-9._~+/=-]+)", re.IGNORECASE)
_MASKED = re.compile(r"=\*\*\*(?:$|[&#;\s])|:\*\*\*@|\b(?:Bearer|Basic)\s+\*\*\*", re.IGNORECASE)

_values: set[str] = set()


def looks_secret(name: str, in_url: bool = False) -> bool:
    """Whether a key, header or query parameter name says it holds a secret. A bare `key` counts only
    in a URL (`?key=`): elsewhere it names a concurrency key or a dedup key."""
    normal = re.sub(r"[^a-z0-9]", "", name.lower())
    return any(word in normal for word in _WORDS) or (in_url and normal == "key")


def register(values: Iterable[str]) -> None:
    """Add secret values to redact everywhere in this process (never removed: a secret stays one)."""
    before = len(_values)
    _values.update(v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LEN and v != MASK)
    if len(_values) != before:
        _value_pattern.cache_clear()


_registered: dict[int, weakref.ref[BaseModel]] = {}


def register_config(config: BaseModel) -> None:
    """Register every secret value the configuration holds. Once per config object: every run calls
    this (a run may be the first thing a process does with a config), and walking a 5,000-cluster
    config took 350 ms each time."""
    known = _registered.get(id(config))
    if known is not None and known() is config:
        return
    register(config_secrets(config))
    with contextlib.suppress(TypeError):  # a stand-in that takes no weak reference: walked each time
        _registered[id(config)] = weakref.ref(config)


def config_secrets(config: BaseModel) -> list[str]:
    """`SecretStr` values, strings under secret-looking names (header values included) and URL
    passwords, anywhere in the configuration."""
    found: list[str] = []

    def walk(value: Any, name: str) -> None:
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            found.append(secret)
            found.extend(_url_passwords(secret))
        elif isinstance(value, BaseModel):
            for field in type(value).model_fields:
                walk(getattr(value, field), field)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, str(key))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, name)
        elif isinstance(value, str):
            if looks_secret(name):
                found.append(value)
            found.extend(_url_passwords(value))

    walk(config, "")
    return found


def _url_passwords(text: str) -> list[str]:
    return [m.group("value") for m in _USERINFO.finditer(text)]


@cache
def _value_pattern() -> re.Pattern[str] | None:
    if not _values:
        return None
    ordered = sorted(_values, key=len, reverse=True)  # a secret containing another goes whole
    return re.compile("|".join(re.escape(v) for v in ordered))


def redact_text(text: str) -> str:
    """`text` with registered secret values, secret URL parameters, URL passwords and bearer
    credentials replaced by `***`."""
    pattern = _value_pattern()
    if pattern is not None:
        text = pattern.sub(MASK, text)
    if "=" in text:
        text = _URL_PARAM.sub(
            lambda m: m.group("lead") + MASK if looks_secret(m.group("name"), True) else m.group(0), text
        )
    if "://" in text:
        text = _USERINFO.sub(lambda m: m.group("lead") + MASK, text)
    return _SCHEME.sub(lambda m: m.group("lead") + MASK, text)


def redact(value: Any) -> Any:
    """A redacted copy of a JSON-like value (mappings, lists, strings; other leaves as they are)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if looks_secret(str(key)) and isinstance(item, str | int | float) and not isinstance(item, bool):
                out[key] = MASK
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact(v) for v in value)
    return value


class Sealed(str):
    """A secret held in memory under its redacted text: JSON, `str()` and templates see the redacted
    text; `unseal` gives the real value back to the step that sends it."""

    secret: str

    def __new__(cls, shown: str, secret: str) -> Sealed:
        sealed = super().__new__(cls, shown)
        sealed.secret = secret
        return sealed

    def __reduce__(self) -> tuple[Any, ...]:
        return (Sealed, (str.__str__(self), self.secret))


def seal(value: Any, secret_name: bool = False) -> Any:
    """`value` with every string that redaction would change sealed (all of them under a
    secret-looking name, `secret_name`)."""
    if isinstance(value, str):
        if isinstance(value, Sealed):
            return value
        shown = MASK if secret_name else redact_text(value)
        return value if shown == value else Sealed(shown, value)
    if isinstance(value, dict):
        return {k: seal(v, secret_name or looks_secret(str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [seal(v, secret_name) for v in value]
    return value


def unseal(value: Any) -> Any:
    """`value` with every `Sealed` string replaced by the secret it holds (for the step itself only)."""
    if isinstance(value, Sealed):
        return value.secret
    if isinstance(value, dict):
        return {k: unseal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unseal(v) for v in value]
    return value


def is_masked(value: Any) -> bool:
    """Whether a value holds a redaction where a credential goes (`***` as a whole value, as a URL
    parameter or password, after `Bearer`): such a value came back from the journal and must never be
    sent. A `***` inside free text (a summary) is not one: sending it gives nothing away."""
    if isinstance(value, Sealed):
        return False
    if isinstance(value, str):
        return value == MASK or _MASKED.search(value) is not None
    if isinstance(value, dict):
        return any(is_masked(v) for v in value.values())
    if isinstance(value, list):
        return any(is_masked(v) for v in value)
    return False
