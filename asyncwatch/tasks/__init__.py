"""The task path: the task-factory hook, the Recorder it writes to, task spans, the snapshot
``asyncwatch.stats()`` returns, and the task metrics' points.
"""

from ._path import ACCELERATOR, TaskStats
from ._recorder import Recorder
from ._stats import CoroutineStats, Percentiles, ProcessStats, Stats, format_ms

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
