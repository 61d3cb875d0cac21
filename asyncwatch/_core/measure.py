"""Measuring instruments every subsystem shares: the clock, the fine histogram, stable names.

``Histogram`` keeps weighted counts on one fine grid (``FINE_BOUNDS``) so any two can be
merged and every exported bucket bound is on it. ``coroutine_key`` and ``exception_name``
turn a coroutine and an exception class into the bounded strings metrics are keyed by.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from .names import OVERFLOW
from .stacks import module_of_file

clock = time.perf_counter


# Fine bucket grid for percentiles: ten steps per decade from 0.1 µs to 8000 s (at most 25 %
# wide, so an interpolated percentile is off by well under that). Exported histograms use a
# coarser subset (``_names.TIMING_BOUNDS``), every one of which is on this grid.
_MANTISSAS = (1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8)


FINE_BOUNDS: tuple[float, ...] = tuple(float(f"{m}e{e}") for e in range(-7, 4) for m in _MANTISSAS)


class Histogram:
    """Weighted counts on ``FINE_BOUNDS`` (bucket i holds values in (bound[i-1], bound[i]]).

    Sparse: ``bins`` maps a bucket's index to its count and holds only the buckets that were
    hit. One histogram of a coroutine's task durations touches a handful of the grid's 111
    buckets, and there are two per coroutine name (duration and scheduling delay) for up to
    ``max_keys`` names: a dense list costs 952 bytes each, a dict of up to five buckets 224.
    Readers on other threads copy ``bins`` before walking it (``dict.copy`` runs under the GIL
    in one step), so a bucket added meanwhile never breaks their iteration.
    """

    __slots__ = ("bins", "max", "min", "sum", "total")

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.total = 0
        self.sum = 0.0
        self.max = 0.0
        self.min = math.inf

    @property
    def counts(self) -> list[int]:
        """Every bucket's count, dense (``len(FINE_BOUNDS) + 1`` of them): a copy."""
        dense = [0] * (len(FINE_BOUNDS) + 1)
        for i, c in self.bins.copy().items():
            dense[i] = c
        return dense

    def add(self, value: float, weight: int = 1) -> None:
        """Record ``value`` standing for ``weight`` observations."""
        bins = self.bins
        i = bisect_left(FINE_BOUNDS, value)
        bins[i] = bins.get(i, 0) + weight
        self.total += weight
        self.sum += value * weight
        # compares, not max()/min(): this runs for every timed task
        if value > self.max:  # noqa: PLR1730
            self.max = value
        if value < self.min:  # noqa: PLR1730
            self.min = value

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts into this one."""
        bins = self.bins
        for i, c in other.bins.copy().items():
            bins[i] = bins.get(i, 0) + c
        self.total += other.total
        self.sum += other.sum
        self.max = max(self.max, other.max)
        self.min = min(self.min, other.min)

    def copy(self) -> Histogram:
        """An independent copy (safe to read while the original keeps changing)."""
        h = Histogram()
        h.bins = self.bins.copy()
        h.total, h.sum, h.max, h.min = self.total, self.sum, self.max, self.min
        return h

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1), interpolated inside its bucket; None when empty."""
        if self.total <= 0:
            return None
        rank = q * self.total
        seen = 0
        for i, c in sorted(self.bins.copy().items()):
            if not c:
                continue
            if seen + c >= rank:
                low = FINE_BOUNDS[i - 1] if i > 0 else 0.0
                high = FINE_BOUNDS[i] if i < len(FINE_BOUNDS) else self.max
                high = min(high, self.max) if self.max > low else high
                return low + (high - low) * max(0.0, rank - seen) / c
            seen += c
        return self.max

    def cumulative(self, bounds: Iterable[float]) -> tuple[list[int], float, int]:
        """Bucket counts re-binned onto ``bounds`` (each must be on the fine grid)."""
        # the fine bucket each exported bound closes; fine bucket i goes to the first >= i
        stops = [bisect_left(FINE_BOUNDS, bound) for bound in bounds]
        out = [0] * (len(stops) + 1)
        for i, c in self.bins.copy().items():
            out[bisect_left(stops, i)] += c
        return out, self.sum, self.total


class ErrorOverflow(Exception):
    """Stands for exception types beyond ``max_error_types``; reported as ``_OTHER``."""


def exception_name(kind: type[BaseException]) -> str:
    """The ``error.type`` value for an exception class: fully qualified, builtins bare."""
    if kind is ErrorOverflow:
        return OVERFLOW
    module = kind.__module__
    if module in ("builtins", "__main__"):
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"


def coroutine_key(coro: Any) -> str:
    """The coroutine's module-qualified ``__qualname__`` (never the task name)."""
    qualname = getattr(coro, "__qualname__", None) or type(coro).__qualname__
    module = None
    frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
    if frame is not None:
        module = frame.f_globals.get("__name__")
    if module is None:
        module = getattr(coro, "__module__", None)
    if module is None:
        # A finished coroutine has no frame (and coroutines have no ``__module__``): its
        # module is the one its code was loaded from (blocks timed after a task returned).
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        if code is not None:
            module = module_of_file(code.co_filename)
    if not module or module == "builtins":
        return str(qualname)
    return f"{module}.{qualname}"
