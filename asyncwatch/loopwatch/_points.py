"""The loop watch's metric points: blocks counted and timed per culprit line
(``asyncwatch.loop.blocked``, ``asyncwatch.loop.blocked.duration``, at most ``max_culprits``
lines, then ``_OTHER``) and a ``Histogram`` in its exported form (``hist_value``, also used for
``asyncwatch.loop.lag``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from .._core import names as n
from .._core.measure import Histogram
from .._core.points import HistValue, Point


class CulpritCounts:
    """Blocks counted and timed per culprit line, at most ``cap`` lines (then ``_OTHER``)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, int, str], tuple[list[int], Histogram]] = {}
        self.started_ns = time.time_ns()

    def add(self, where: tuple[str, int, str], duration: float) -> None:
        with self._lock:
            slot = self._slots.get(where)
            if slot is None:
                if len(self._slots) >= self.cap:
                    where = (n.OVERFLOW, 0, n.OVERFLOW)
                slot = self._slots.setdefault(where, ([0], Histogram()))
            slot[0][0] += 1
            slot[1].add(duration)

    def points(self) -> Iterable[Point]:
        with self._lock:
            slots = [(w, c[0], h.copy()) for w, (c, h) in self._slots.items()]
        for (path, line, function), count, hist in slots:
            attrs: dict[str, str | int] = {
                n.CODE_FILE: path, n.CODE_LINE: line, n.CODE_FUNCTION: function
            }
            yield n.LOOP_BLOCKED, attrs, count, self.started_ns
            yield n.LOOP_BLOCKED_DURATION, attrs, hist_value(hist), self.started_ns

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._slots = {}
        self.started_ns = time.time_ns()


def hist_value(hist: Histogram) -> HistValue:
    """A Histogram on the exported bounds (count taken from the buckets, so they agree)."""
    counts, total_sum, _ = hist.cumulative(n.TIMING_BOUNDS)
    count = sum(counts)
    return HistValue(
        n.TIMING_BOUNDS, tuple(counts), total_sum, count, hist.min if count else 0.0, hist.max
    )
