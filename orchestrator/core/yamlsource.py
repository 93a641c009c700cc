"""YAML loading that remembers where every value came from.

Config and playbooks are refused with `file:line: path: message`, so we compose the YAML node tree
ourselves, record the line of every key and item, expand `${VAR}` / `${VAR:-default}` in strings, and
turn pydantic's error locations back into lines.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.core.errors import Problem, ValidationFailed

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Source:
    """Parsed YAML data plus the line of every location in it."""

    file: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    """Problems found while reading (duplicate keys, unset variables), reported with the model's."""

    def line_of(self, loc: Iterable[str | int]) -> int:
        """Line of the deepest known prefix of `loc` (a missing field points at its parent)."""
        key = tuple(loc)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get((), 1)

    def problem(self, loc: Iterable[str | int], message: str) -> Problem:
        loc = tuple(loc)
        return Problem(self.file, self.line_of(loc), format_loc(loc), message)


def format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """Expand `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`. Unset without default: KeyError."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise KeyError(name)
            return default
        return value

    return _VAR.sub(sub, text)


class _Builder:
    def __init__(self, file: str, env: Mapping[str, str] | None) -> None:
        self.file = file
        self.env = env
        self.lines: dict[Loc, int] = {}
        self.problems: list[Problem] = []
        self._constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            self._constructor.flatten_mapping(node)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                # keys are their literal text: YAML 1.1 would turn `on:` (playbook trigger) into True
                key = (
                    key_node.value
                    if isinstance(key_node, yaml.ScalarNode)
                    else self._constructor.construct_object(key_node, deep=True)
                )
                if not isinstance(key, str | int | float | bool) or key is None:
                    self.problems.append(
                        Problem(
                            self.file,
                            key_node.start_mark.line + 1,
                            format_loc(loc),
                            f"unsupported mapping key {key!r}",
                        )
                    )
                    continue
                key = str(key) if not isinstance(key, str) else key
                child = (*loc, key)
                if key in out:
                    self.problems.append(
                        Problem(self.file, key_node.start_mark.line + 1, format_loc(child), "duplicate key")
                    )
                self.lines[child] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        value = self._constructor.construct_object(node, deep=True)
        if isinstance(value, str) and "$" in value and self.env is not None:
            try:
                value = expand_env(value, self.env)
            except KeyError as e:
                self.problems.append(
                    Problem(
                        self.file,
                        node.start_mark.line + 1,
                        format_loc(loc),
                        f"environment variable {e.args[0]} is not set "
                        f"(use ${{{e.args[0]}:-default}} for a default)",
                    )
                )
        return value


def load_yaml(
    path: str | Path, env: Mapping[str, str] | None = None, text: str | None = None, expand: bool = True
) -> Source:
    """Parse one YAML document; raise ValidationFailed with file:line on syntax or expansion errors.

    With `expand`, `${VAR}` in strings is replaced from `env` (default: the process environment).
    """
    file = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ValidationFailed([Problem(file, 0, "", f"cannot read: {e.strerror or e}")]) from e
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise ValidationFailed([Problem(file, line, "", f"YAML syntax error: {e.problem or e}")]) from e
    except yaml.YAMLError as e:
        raise ValidationFailed([Problem(file, 0, "", f"YAML error: {e}")]) from e
    builder = _Builder(file, (os.environ if env is None else env) if expand else None)
    data = builder.build(node, ()) if node is not None else None
    return Source(file, data, builder.lines, builder.problems)


def validate_model(source: Source, model: type[M], context: dict[str, Any] | None = None) -> M:
    """Validate `source.data` into `model`, mapping every pydantic error to file:line: path."""
    if not isinstance(source.data, dict):
        raise ValidationFailed([*source.problems, source.problem((), "expected a mapping at the top level")])
    try:
        result = model.model_validate(source.data, context=context)
    except ValidationError as e:
        raise ValidationFailed(source.problems + pydantic_problems(source, e)) from e
    if source.problems:
        raise ValidationFailed(source.problems)
    return result


def pydantic_problems(source: Source, error: ValidationError) -> list[Problem]:
    problems = []
    for err in error.errors(include_url=False):
        loc = tuple(part for part in err["loc"] if not _is_union_tag(part))
        message = _message(err)
        problems.append(source.problem(loc, message))
    return _dedupe(problems)


def _is_union_tag(part: str | int) -> bool:
    # pydantic inserts union member names ("function-after[...]", "int") into locations
    return isinstance(part, str) and ("[" in part or part in {"int", "str", "literal['majority']"})


def _message(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[int, str, str]] = set()
    out = []
    for p in problems:
        key = (p.line, p.path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
