"""The task metrics as ``Point``s, read from the Recorder when a reader collects."""

from __future__ import annotations

from collections.abc import Iterable

from .._core import names as n
from .._core.points import HistValue, Point, Source
from ._recorder import Recorder


def task_points(recorder: Recorder) -> Source:
    """Points for the per-coroutine task metrics."""

    def collect() -> Iterable[Point]:
        bounds = n.TIMING_BOUNDS
        for key, snap in recorder.snapshot().items():
            start = snap.first_seen_ns
            attrs = {n.CODE_FUNCTION: key}
            yield n.TASK_CREATED, attrs, snap.created, start
            yield n.TASK_IN_FLIGHT, attrs, snap.in_flight, start
            yield n.TASK_PEAK, attrs, snap.peak, start
            yield n.TASK_COMPLETED, {**attrs, n.OUTCOME: "ok"}, snap.ok, start
            yield n.TASK_COMPLETED, {**attrs, n.OUTCOME: "cancelled"}, snap.cancelled, start
            for error, count in snap.errors.items():
                yield (
                    n.TASK_COMPLETED,
                    {**attrs, n.OUTCOME: "error", n.ERROR_TYPE: error},
                    count,
                    start,
                )
            for mdef, hist in (
                (n.TASK_DURATION, snap.duration),
                (n.TASK_SCHEDULE_DELAY, snap.delay),
            ):
                counts, total_sum, count = hist.cumulative(bounds)
                yield (
                    mdef,
                    attrs,
                    HistValue(
                        bounds,
                        tuple(counts),
                        total_sum,
                        count,
                        hist.min if count else 0.0,
                        hist.max,
                    ),
                    start,
                )

    return collect
