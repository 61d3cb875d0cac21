"""The task path: the task-factory hook, the Recorder it writes to, task spans, the snapshot
``asyncwatch.stats()`` returns, and the task metrics' points.
"""

from typing import TYPE_CHECKING, Any

from ._path import ACCELERATOR, TaskStats
from ._recorder import Recorder

if TYPE_CHECKING:
    from ._stats import CoroutineStats, Percentiles, ProcessStats, Stats, format_ms

_STATS = frozenset({"CoroutineStats", "Percentiles", "ProcessStats", "Stats", "format_ms"})


def __getattr__(name: str) -> Any:
    # what stats() returns loads with the first stats() (or console), not at install
    if name in _STATS:
        from . import _stats

        return getattr(_stats, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACCELERATOR",
    "CoroutineStats",
    "Percentiles",
    "ProcessStats",
    "Recorder",
    "Stats",
    "TaskStats",
    "format_ms",
]
