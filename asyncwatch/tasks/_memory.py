"""Opt-in per-coroutine memory attribution with tracemalloc (``memory_attribution=True``).

Every ``memory_interval_s`` a background thread takes a tracemalloc snapshot and charges each
live allocation to the innermost frame on its traceback that belongs to a coroutine asyncwatch
has seen (matched by file and line range of the coroutine's code). The result is the
``asyncwatch.task.memory`` gauge: bytes still alive that code running inside each coroutine
allocated.

Cost, stated plainly: tracemalloc hooks every allocation in the process (the docs give the
measured slowdown), and each snapshot holds the GIL while it copies the traces, pausing the
event loop for that long. Leave it off unless you are hunting memory.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Iterable
from typing import Any

from .._core import names as n
from .._core.points import Point
from ._recorder import Recorder


class MemoryAttribution:
    """Background tracemalloc snapshots, attributed to coroutine names."""

    def __init__(self, recorder: Recorder, interval_s: float, frames: int = 4) -> None:
        self.recorder = recorder
        self.interval_s = interval_s
        self.frames = frames
        self.bytes_by_key: dict[str, int] = {}
        self.last_snapshot_s: float | None = None  # how long the last snapshot took
        self._started_tracing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ranges: dict[str, list[tuple[int, int, str]]] = {}
        self._known_codes: set[int] = set()
        self._memo: dict[tuple[str, int], str | None] = {}
        self._started_ns = time.time_ns()

    def start(self) -> None:
        """Start tracing (if nobody else is) and the snapshot thread."""
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
            self._started_tracing = True
        self._thread = threading.Thread(target=self._run, name="asyncwatch-memory", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, and tracing if asyncwatch started it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._started_tracing and tracemalloc.is_tracing():
            tracemalloc.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # pragma: no cover - defensive: never kill the app's process
                import logging

                logging.getLogger("asyncwatch").debug("memory sample failed", exc_info=True)

    def sample(self) -> dict[str, int]:
        """Take one snapshot now and update ``bytes_by_key``."""
        if not tracemalloc.is_tracing():
            return self.bytes_by_key
        began = time.perf_counter()
        # No filter_traces(): it matches every frame of every trace in Python, which costs
        # far more than the snapshot itself; grouping by traceback first is much cheaper.
        snapshot = tracemalloc.take_snapshot()
        self.last_snapshot_s = time.perf_counter() - began
        self._index_codes()
        totals: dict[str, int] = {}
        for frames, size in _sizes_by_traceback(snapshot).items():
            key = self._attribute(frames)
            if key is not None:
                totals[key] = totals.get(key, 0) + size
        self.bytes_by_key = totals
        return totals

    def _index_codes(self) -> None:
        for code, key in self._codes():
            if id(code) in self._known_codes:
                continue
            self._known_codes.add(id(code))
            lines = [line for _, _, line in code.co_lines() if line is not None]
            first = min(lines, default=code.co_firstlineno)
            last = max(lines, default=code.co_firstlineno)
            self._ranges.setdefault(code.co_filename, []).append((first, last, key))
            self._memo.clear()

    def _codes(self) -> Iterable[tuple[Any, str]]:
        return self.recorder.code_keys()  # dead loops' too: what they made may still live

    def _attribute(self, frames: Iterable[tuple[str, int]]) -> str | None:
        for spot in frames:  # most recent call first
            if spot in self._memo:
                key = self._memo[spot]
            else:
                key = None
                best = None
                filename, lineno = spot
                for first, last, candidate in self._ranges.get(filename, ()):
                    # innermost (shortest) range wins for nested coroutine definitions
                    if first <= lineno <= last and (best is None or last - first < best):
                        key, best = candidate, last - first
                self._memo[spot] = key
            if key is not None:
                return key
        return None

    def points(self) -> Iterable[Point]:
        """``asyncwatch.task.memory`` per coroutine, from the last snapshot."""
        for key, size in list(self.bytes_by_key.items()):
            yield n.TASK_MEMORY, {n.CODE_FUNCTION: key}, size, self._started_ns


def _sizes_by_traceback(snapshot: tracemalloc.Snapshot) -> dict[tuple[tuple[str, int], ...], int]:
    """Bytes per distinct traceback, frames most recent first.

    Reads the snapshot's raw trace tuples when they are there: building a Trace, Traceback
    and Frame object per allocation (what ``Snapshot.statistics`` does) costs seconds for a
    few hundred thousand live blocks, during which the loop competes for the GIL.
    """
    raw = getattr(snapshot.traces, "_traces", None)
    sizes: dict[tuple[tuple[str, int], ...], int] = {}
    if isinstance(raw, list):
        for trace in raw:
            frames, size = trace[2], trace[1]
            sizes[frames] = sizes.get(frames, 0) + size
        return sizes
    for stat in snapshot.statistics("traceback"):
        frames = tuple((f.filename, f.lineno) for f in reversed(stat.traceback))
        sizes[frames] = sizes.get(frames, 0) + stat.size
    return sizes
