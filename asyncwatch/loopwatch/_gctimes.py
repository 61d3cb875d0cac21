"""Long garbage collections, timed through ``gc.callbacks``, so a blocked-loop finding can say
that a collection (and of which generation) is what held the loop.

A collection runs inside whatever allocation triggered it (often asyncio's own ``call_soon``
making a handle) and holds the GIL throughout, so the watchdog cannot sample it and the stack
it sees afterwards says nothing about it. The interpreter calls every function in
``gc.callbacks`` at the start and the end of each collection: ``GcTimes`` reads the clock
there and keeps the last few collections that took ``min_s`` or more (a bounded deque; the
appended callback is removed again by ``uninstall()``, and anything else in the list is left
alone). Cost: one Python call and one clock read per collection start and end.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable
from typing import Any

KEEP = 16


class GcTimes:
    """Start, duration and generation of the last ``KEEP`` long collections."""

    def __init__(self, clock: Callable[[], float], min_s: float) -> None:
        self.clock = clock
        self.min_s = min_s
        self.recent: deque[tuple[float, float, int]] = deque(maxlen=KEEP)
        self._began = 0.0
        self._callback = self._on_gc  # one bound method: the one removed again

    @property
    def installed(self) -> bool:
        """Whether the callback is in ``gc.callbacks``."""
        return any(cb is self._callback for cb in gc.callbacks)

    def install(self) -> None:
        """Append the callback to ``gc.callbacks``. Idempotent."""
        if not self.installed:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        """Remove the callback (only ours)."""
        for i in range(len(gc.callbacks) - 1, -1, -1):
            if gc.callbacks[i] is self._callback:
                del gc.callbacks[i]

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside every collection, on whatever thread triggered it: nothing can raise.
        if phase == "start":
            self._began = self.clock()
            return
        began = self._began
        took = self.clock() - began
        if took >= self.min_s and began:
            self.recent.append((began, took, int(info.get("generation", 0))))

    def during(self, since: float, end: float) -> tuple[float, int] | None:
        """Seconds of long collections within ``[since, end]`` and the oldest generation
        collected, or None if none ran then."""
        total = 0.0
        generation = -1
        for began, took, gen in list(self.recent):
            overlap = min(end, began + took) - max(since, began)
            if overlap > 0:
                total += overlap
                generation = max(generation, gen)
        return (total, generation) if generation >= 0 else None
