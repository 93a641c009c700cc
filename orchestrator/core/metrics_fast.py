"""Gauge families with a series per cluster, kept as plain values and rendered straight to text.

At 10,000 clusters x 3 vantages the per-cluster families hold ~100,000 series. prometheus_client
builds a Sample object per series on every collect, and formats each through several calls: a scrape
cost 1.5 s of CPU at 5,000 clusters (26 % of a core with a scrape every 5 s, measured with
`bench/fleet.py`; the interpreter lock makes even the worker thread's share the event loop's loss).
Here a series is a dict entry whose label text is built once, when the series is first set; setting
it is a dict store, and a render is one f-string per series.

The exposition is the Prometheus text format 0.0.4, the same lines `generate_latest` writes (HELP,
TYPE, one `name{labels} value` per series, label names sorted, values formatted by prometheus_client's
own `floatToGoString`): line for line what it wrote before.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.utils import floatToGoString


def format_value(value: float) -> str:
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class _Child:
    __slots__ = ("family", "key")

    def __init__(self, family: LabelledGauge, key: tuple[str, ...]) -> None:
        self.family = family
        self.key = key

    def set(self, value: float) -> None:
        self.family.values[self.key] = float(value)


class LabelledGauge:
    """A labelled gauge: `labels(...)` returns a child with `set`, like prometheus_client's; `remove`,
    `clear`, `samples` and `render` for the rest."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] | list[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.values: dict[tuple[str, ...], float] = {}
        self._children: dict[tuple[str, ...], _Child] = {}
        self._prefixes: dict[tuple[str, ...], str] = {}

    def labels(self, *values: str, **named: str) -> _Child:
        if named:
            if values or set(named) != set(self.labelnames):
                raise ValueError(f"{self.name}: labels {sorted(named)} are not {list(self.labelnames)}")
            key = tuple(str(named[n]) for n in self.labelnames)
        else:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(values)} label values for {list(self.labelnames)}")
            key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            self._prefixes[key] = self._prefix(key)
            child = self._children[key] = _Child(self, key)
        return child

    def remove(self, *values: str) -> None:
        key = tuple(str(v) for v in values)
        self.values.pop(key, None)
        self._children.pop(key, None)
        self._prefixes.pop(key, None)

    def clear(self) -> None:
        self.values.clear()
        self._children.clear()
        self._prefixes.clear()

    def get(self, *values: str) -> float | None:
        return self.values.get(tuple(values))

    def samples(self) -> Iterator[tuple[dict[str, str], float]]:
        """(labels, value) of every series that has a value."""
        for key, value in list(self.values.items()):
            yield dict(zip(self.labelnames, key, strict=True)), value

    def render(self) -> str:
        """This family in the text format. Safe from a worker thread: it reads a copy of the values
        (taken in one step under the interpreter lock) while the loop goes on setting them."""
        prefixes = self._prefixes
        head = f"# HELP {self.name} {_escape_help(self.documentation)}\n# TYPE {self.name} gauge\n"
        lines = [
            f"{prefixes.get(key) or self._prefix(key)}{format_value(value)}\n"
            for key, value in list(self.values.items())
        ]
        return head + "".join(lines)

    def _prefix(self, key: tuple[str, ...]) -> str:
        """`name{label="value",...} `, label names sorted as prometheus_client writes them."""
        pairs = sorted(zip(self.labelnames, key, strict=True))
        inner = ",".join(f'{n}="{_escape_value(v)}"' for n, v in pairs)
        return f"{self.name}{{{inner}}} "
