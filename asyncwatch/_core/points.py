"""The shape in which every subsystem hands its figures to the exporters: ``Point``s.

A source is a callable yielding ``(MetricDef, attributes, value, start_ns)`` when a reader
collects; ``otel``'s ``MetricsBridge`` turns them into the SDK's data model. Sources never
touch the SDK, so the hot paths that feed them never do either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from . import names as n

SCOPE_NAME = "asyncwatch"


@dataclass(frozen=True)
class HistValue:
    """A cumulative explicit-bucket histogram."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int
    min: float
    max: float


Attrs = Mapping[str, str | int | float | bool]


Point = tuple[n.MetricDef, Attrs, "int | float | HistValue", int]  # (def, attrs, value, start_ns)


Source = Callable[[], Iterable[Point]]
