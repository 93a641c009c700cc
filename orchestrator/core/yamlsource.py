"""YAML loading that remembers where every value came from.

Config and playbooks are refused with `file:line: path: message`, so we compose the YAML node tree
ourselves, record the line of every key and item, expand `${VAR}` / `${VAR:-default}` in strings, and
turn pydantic's error locations back into lines.

A playbook file is read again on every hot reload, so a hostile or broken one must cost little and fail
cleanly: composing is bounded in nesting depth and in how many values aliases may expand to (a
400-byte "billion laughs" file is a million values), and an alias to the value that contains it is
refused instead of recursing forever. Every such refusal is a problem with its line, like any other.
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

MAX_BYTES = 256 * 1024
"""Largest playbook file read; real ones are a few KiB, and 256 KiB of dense YAML already takes about
1.5 s of CPU to load."""
MAX_CONFIG_BYTES = 8 * 1024 * 1024
"""Largest config file read: about 60 bytes of YAML per cluster at the least, so 256 KiB held only some
4,000 clusters; 8 MiB holds a 10,000-cluster fleet with its probes and balancers many times over (the
alias and depth limits below still apply)."""
MAX_DEPTH = 64
"""Deepest nesting of values, aliases expanded; real files nest about ten levels."""
MAX_ALIAS_VALUES = 10_000
"""How many values all the aliases of one file may expand to, together."""


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


class _Refused(Exception):
    """A limit crossed while composing: where, and which."""

    def __init__(self, line: int, path: Loc, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.path = path
        self.message = message


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer keeps the tree bounded.

    PyYAML returns an alias as the very node it names, so expanding is left to whoever walks the tree:
    a cycle recurses until RecursionError and a few nested aliases multiply into millions of values. We
    count, while composing, each node's expanded size and height, and refuse an alias to a node still
    being composed (its own container), aliases that expand to too many values in all, and nesting
    (aliases expanded) deeper than MAX_DEPTH, which also keeps the composer's own recursion short.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._path: list[str | int] = []
        self._depth = 0
        self._open: set[str] = set()
        self._size: dict[int, int] = {}
        self._height: dict[int, int] = {}
        self._alias_values = 0

    def _next(self) -> Any:
        return self.peek_event()  # type: ignore[no-untyped-call]

    def _refuse(self, message: str) -> _Refused:
        return _Refused(self._next().start_mark.line + 1, tuple(self._path), message)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        part = index.value if isinstance(index, yaml.ScalarNode) else index
        pushed = isinstance(part, str | int)
        if pushed:
            self._path.append(part)
        self._depth += 1  # keys count too: `? ? ? ...` nests without a path
        try:
            return self._compose_bounded(parent, index, self._depth)
        finally:
            self._depth -= 1
            if pushed:
                self._path.pop()

    def _compose_bounded(self, parent: yaml.Node | None, index: Any, depth: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            anchor = self._next().anchor
            target = self.anchors.get(anchor)
            if anchor in self._open:
                raise self._refuse(f"recursive alias *{anchor}: it refers to the value that contains it")
            if target is not None:
                self._alias_values += self._size[id(target)]
                if self._alias_values > MAX_ALIAS_VALUES:
                    raise self._refuse(f"aliases expand to more than {MAX_ALIAS_VALUES} values")
                if depth - 1 + self._height[id(target)] > MAX_DEPTH:
                    raise self._refuse(f"nested deeper than {MAX_DEPTH} levels (through alias *{anchor})")
            return super().compose_node(parent, index)  # an undefined alias: PyYAML's own error
        if depth > MAX_DEPTH:
            raise self._refuse(f"nested deeper than {MAX_DEPTH} levels")
        anchor = self._next().anchor
        if anchor is not None:
            self._open.add(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._open.discard(anchor or "")
        assert node is not None
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        self._size[id(node)] = 1 + sum(self._size.get(id(c), 1) for c in children)
        self._height[id(node)] = 1 + max((self._height.get(id(c), 1) for c in children), default=0)
        return node


class _Builder:
    def __init__(self, file: str, env: Mapping[str, str] | None) -> None:
        self.file = file
        self.env = env
        self.lines: dict[Loc, int] = {}
        self.problems: list[Problem] = []
        self._constructor = yaml.SafeLoader("")
        self._merged: dict[int, int] = {}

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            merged = self._merged.get(id(node))
            if merged is None:  # an aliased mapping is flattened once, where it is defined
                own = len([pair for pair in node.value if pair[0].tag != "tag:yaml.org,2002:merge"])
                try:
                    self._constructor.flatten_mapping(node)
                except yaml.MarkedYAMLError as e:
                    self.problems.append(self._problem(e, node, loc))
                    return {}
                # merged pairs come first; the mapping's own keys override them, as in YAML
                merged = self._merged[id(node)] = len(node.value) - own
            out: dict[Any, Any] = {}
            own_keys: set[str] = set()
            for position, (key_node, value_node) in enumerate(node.value):
                # keys are their literal text: YAML 1.1 would turn `on:` (playbook trigger) into True
                try:
                    key = (
                        key_node.value
                        if isinstance(key_node, yaml.ScalarNode)
                        else self._constructor.construct_object(key_node, deep=True)
                    )
                except (yaml.YAMLError, ValueError, TypeError) as e:
                    self.problems.append(self._problem(e, key_node, loc))
                    continue
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
                if position >= merged and key in own_keys:
                    self.problems.append(
                        Problem(self.file, key_node.start_mark.line + 1, format_loc(child), "duplicate key")
                    )
                if position >= merged:
                    own_keys.add(key)
                self.lines[child] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        try:
            value = self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as e:  # `!!int x`, `2024-13-45`, unknown tags
            self.problems.append(self._problem(e, node, loc))
            return None
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

    def _problem(self, error: Exception, node: yaml.Node, loc: Loc) -> Problem:
        if isinstance(error, yaml.MarkedYAMLError):
            text = error.problem or str(error)
        else:
            text = str(error) or type(error).__name__
        return Problem(
            self.file, node.start_mark.line + 1, format_loc(loc), f"cannot read this value: {text}"
        )


def load_yaml(
    path: str | Path,
    env: Mapping[str, str] | None = None,
    text: str | None = None,
    expand: bool = True,
    max_bytes: int = MAX_BYTES,
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
    if len(text) > max_bytes:
        raise ValidationFailed([Problem(file, 0, "", f"larger than {max_bytes // 1024} KiB")])
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # the reader refuses control characters already here
        node = loader.get_single_node()
    except _Refused as e:
        raise ValidationFailed([Problem(file, e.line, format_loc(e.path), e.message)]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise ValidationFailed([Problem(file, line, "", f"YAML syntax error: {e.problem or e}")]) from e
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        character = e.character if isinstance(e.character, int) else ord(e.character[:1] or b"\0")
        raise ValidationFailed(
            [Problem(file, line, "", f"YAML error: unacceptable character #x{character:04x} ({e.reason})")]
        ) from e
    except yaml.YAMLError as e:
        raise ValidationFailed([Problem(file, 0, "", f"YAML error: {e}")]) from e
    finally:
        if loader is not None:
            loader.dispose()
    builder = _Builder(file, (os.environ if env is None else env) if expand else None)
    try:
        data = builder.build(node, ()) if node is not None else None
    except RecursionError:  # not reached within the composer's limits; no input may escape as one
        raise ValidationFailed([Problem(file, 0, "", f"nested deeper than {MAX_DEPTH} levels")]) from None
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
