"""Validation that goes on past the first broken section, so `failover validate` lists every problem at
once instead of in stages (fix the config, run again, now the playbooks, run again...).

Pydantic already reports every field error of a model in one pass; what it cannot do is hand back the
rest of the model, and without a model the cross-checks (unknown clusters, duplicate names) and the
playbooks' references never run. Here the items that fail (a list item: `clusters[1]`, `steps[3]`;
otherwise the top-level section) are set aside and the rest validated again, until it passes or
nothing more can be set aside. Problems found on the pruned model are mapped back to the lines of the
file as written (`clusters[2]` stays `clusters[2]` even when `clusters[1]` was set aside).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from orchestrator.core.errors import Problem
from orchestrator.core.yamlsource import Loc, Source, pydantic_problems

M = TypeVar("M", bound=BaseModel)

MAX_ROUNDS = 32
"""Each round sets aside at least one item; real files converge in two or three."""


@dataclass
class Partial(Generic[M]):
    """What validated (None when nothing could), every problem found, and a Source for more."""

    model: M | None
    problems: list[Problem]
    source: Source
    """Reports problems on `model` at the lines of the file as written."""
    set_aside: dict[tuple[str, ...], list[Any]] = field(default_factory=dict)
    """List path -> the raw items that did not validate (their names still count as defined)."""


class _Remapped(Source):
    """`source`, for a pruned copy of its data: locations are translated back to the original."""

    def __init__(self, source: Source, kept: dict[tuple[str, ...], list[int]]) -> None:
        super().__init__(source.file, source.data, source.lines)
        self.kept = kept

    def original(self, loc: Iterable[str | int]) -> Loc:
        loc = tuple(loc)
        for i, part in enumerate(loc):
            if isinstance(part, int):
                prefix = tuple(str(p) for p in loc[:i])
                indexes = self.kept.get(prefix)
                if indexes is not None and 0 <= part < len(indexes):
                    return (*loc[:i], indexes[part], *loc[i + 1 :])
                return loc
        return loc

    def line_of(self, loc: Iterable[str | int]) -> int:
        return super().line_of(self.original(loc))

    def problem(self, loc: Iterable[str | int], message: str) -> Problem:
        return super().problem(self.original(loc), message)


def _first_list(data: Any, loc: Loc) -> tuple[tuple[str, ...], int] | None:
    """The outermost list item on the way to `loc`: (path of the list, index), if any."""
    node = data
    for i, part in enumerate(loc):
        if isinstance(part, int):
            if isinstance(node, list) and 0 <= part < len(node):
                return tuple(str(p) for p in loc[:i]), part
            return None
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return None


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def validate_partial(source: Source, model: type[M], context: dict[str, Any] | None = None) -> Partial[M]:
    """Validate `source.data` into `model`, setting aside what fails; never raises for bad input."""
    problems = list(source.problems)
    if not isinstance(source.data, dict):
        problems.append(source.problem((), "expected a mapping at the top level"))
        return Partial(None, problems, source)
    data = copy.deepcopy(source.data)
    kept: dict[tuple[str, ...], list[int]] = {}
    set_aside: dict[tuple[str, ...], list[Any]] = {}
    first = True
    for _round in range(MAX_ROUNDS):
        try:
            result = model.model_validate(data, context=context)
        except ValidationError as e:
            if first:
                problems.extend(pydantic_problems(source, e))
                first = False
            items: dict[tuple[str, ...], set[int]] = {}
            sections: set[str] = set()
            for err in e.errors(include_url=False):
                loc = tuple(err["loc"])
                found = _first_list(data, loc)
                if found is not None:
                    items.setdefault(found[0], set()).add(found[1])
                elif loc and isinstance(loc[0], str) and loc[0] in data:
                    sections.add(loc[0])
            if not items and not sections:
                return Partial(None, problems, source, set_aside)
            for path, indexes in items.items():
                if path and path[0] in sections:
                    continue
                items_list = _lookup(data, path)
                original = kept.setdefault(path, list(range(len(items_list))))
                for index in sorted(indexes, reverse=True):
                    set_aside.setdefault(path, []).append(items_list.pop(index))
                    original.pop(index)
            for section in sections:
                set_aside.setdefault((section,), []).append(data.pop(section))
            continue
        return Partial(result, problems, _Remapped(source, kept), set_aside)
    return Partial(None, problems, source, set_aside)


def names_set_aside(partial: Partial[Any], path: tuple[str, ...]) -> set[str]:
    """The `name:` of each item set aside from the list at `path` (to suppress "unknown X" errors)."""
    return {
        str(item["name"])
        for item in partial.set_aside.get(path, [])
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    }
