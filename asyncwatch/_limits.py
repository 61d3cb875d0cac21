"""Concurrency limits: semaphores (through the primitive tracker's observer hooks) and the
app's own limits declared with ``asyncwatch.concurrency(name, limit=n)``.

Per limit (a semaphore's creation site, or a declared name) it keeps, cumulatively:

* every hold (acquire -> release) binned by the mean concurrency during it (how many
  holders at once, averaged over the hold): holds and hold-seconds per level. Little's law
  gives the throughput at level N: ``N / mean hold time``, the points of a
  throughput-vs-concurrency curve (fitted with the USL by the advisor). Binning by the mean
  over the hold, not the level at release, keeps bursts of simultaneous releases from
  inventing levels the work never ran at;
* waits: how many acquires had to wait and for how long in all (waiter-seconds), or, for a
  declared limit with a ``backlog`` (a queue or a callable), the time-integral of its length;
* holder-seconds and active time (at least one holder), so mean holders = holder-seconds /
  active time.

Semaphores made from the same line share one entry (per-object levels are summed into it).
At most ``max_limits`` entries; later ones are not measured. Per acquire and release: one
clock read, a few additions (all on the loop's thread).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ._primitives import PrimitiveObserver, PrimitiveState

clock = time.perf_counter
MAX_LEVEL = 4096


class LimitStats:
    """Cumulative figures of one limit; see the module docstring."""

    def __init__(self, label: str, limit: int | None, kind: str) -> None:
        self.label = label
        self.kind = kind  # "Semaphore", "BoundedSemaphore" or "declared"
        self.limit = limit
        self.limits: dict[int, int] = {}  # limit -> objects seen with it (semaphores)
        self.hold_time: dict[int, float] = {}  # level -> seconds held at it
        self.holds: dict[int, int] = {}  # level -> holds
        self.active_s = 0.0
        self.acquires = 0
        self.done = 0
        self.waits = 0
        self.waiter_s = 0.0
        self.holder_s = 0.0
        self.max_level = 0

    def current_limit(self) -> int | None:
        """The limit most objects of this entry were created with (None if unknown)."""
        if self.limits:
            return max(self.limits.items(), key=lambda kv: (kv[1], kv[0]))[0]
        return self.limit

    def copy(self) -> LimitStats:
        """A snapshot safe to read while the loop keeps writing."""
        out = LimitStats(self.label, self.limit, self.kind)
        out.limits = dict(self.limits)
        out.hold_time = dict(self.hold_time)
        out.holds = dict(self.holds)
        out.active_s = self.active_s
        out.acquires, out.done, out.waits = self.acquires, self.done, self.waits
        out.waiter_s, out.holder_s, out.max_level = self.waiter_s, self.holder_s, self.max_level
        return out


class _Track:
    """Level of one semaphore object (or one declared limit), feeding its ``LimitStats``.

    Starts of the holds in progress are kept first in, first out: the sum of hold times does
    not depend on which release is paired with which acquire, and holds of one limit are
    alike, so pairing in order keeps the per-level figures without a lookup per task.
    """

    __slots__ = ("area", "backlog", "backlog_level", "last", "level", "open", "stats")

    def __init__(self, stats: LimitStats, backlog: Any = None) -> None:
        self.stats = stats
        self.level = 0
        self.area = 0.0  # integral of the level over time
        self.last = clock()
        self.backlog = backlog
        self.backlog_level = 0
        self.open: deque[tuple[float, float]] = deque(maxlen=MAX_LEVEL)

    def _read_backlog(self) -> None:
        backlog = self.backlog
        size = backlog() if callable(backlog) else backlog.qsize()
        self.backlog_level = size if isinstance(size, int) and size > 0 else 0

    def up(self, waited_s: float | None) -> None:
        """A hold begins."""
        now = clock()
        stats = self.stats
        level = self.level
        dt = now - self.last
        self.last = now
        if level:
            self.area += level * dt
            stats.holder_s += level * dt
            stats.active_s += dt
        if self.backlog_level:
            stats.waiter_s += self.backlog_level * dt
        self.level = level = level + 1
        stats.max_level = max(stats.max_level, level)
        stats.acquires += 1
        if waited_s is not None:
            stats.waits += 1
            stats.waiter_s += waited_s
        self.open.append((now, self.area))
        if self.backlog is not None:
            self._read_backlog()

    def down(self) -> None:
        """A hold ends."""
        now = clock()
        stats = self.stats
        level = self.level
        dt = now - self.last
        self.last = now
        if level:
            area = self.area + level * dt
            self.area = area
            stats.holder_s += level * dt
            stats.active_s += dt
            if self.backlog_level:
                stats.waiter_s += self.backlog_level * dt
            self.level = level - 1
            stats.done += 1
            if self.open:
                began, area_then = self.open.popleft()
                held = now - began
                if held > 0:
                    mean = round((area - area_then) / held) or 1
                    stats.holds[mean] = stats.holds.get(mean, 0) + 1
                    stats.hold_time[mean] = stats.hold_time.get(mean, 0.0) + held
        if self.backlog is not None:
            self._read_backlog()


class LimitProbe(PrimitiveObserver):
    """Observes semaphores through the primitive tracker; holds the declared limits too."""

    def __init__(self, max_limits: int = 100) -> None:
        self.max_limits = max_limits
        self.active = False
        self.unmeasured = 0
        self._by_label: dict[str, LimitStats] = {}
        self._declared: dict[str, _Track] = {}
        self._lock = threading.Lock()

    def limits(self) -> list[LimitStats]:
        """Snapshots of every limit measured."""
        with self._lock:
            entries = list(self._by_label.values())
        return [s.copy() for s in entries]

    def reset(self) -> None:
        """Forget everything (after fork)."""
        self._lock = threading.Lock()
        self._by_label = {}
        self._declared = {}
        self.unmeasured = 0

    def _entry(self, label: str, limit: int | None, kind: str) -> LimitStats | None:
        with self._lock:
            stats = self._by_label.get(label)
            if stats is None:
                if len(self._by_label) >= self.max_limits:
                    self.unmeasured += 1
                    return None
                stats = self._by_label[label] = LimitStats(label, limit, kind)
        return stats

    # ------------------------------------------------------------------ semaphores

    def _track(self, state: PrimitiveState) -> Any:
        track: _Track | None = state.__dict__.get("advisor_track")
        if track is not None:
            return track
        if not state.kind.endswith("Semaphore"):
            state.advisor_track = _NOT_TRACKED  # type: ignore[attr-defined]
            return _NOT_TRACKED
        label = state.describe()
        stats = self._entry(label, state.initial, state.kind)
        if stats is None:
            state.advisor_track = _NOT_TRACKED  # type: ignore[attr-defined]
            return _NOT_TRACKED
        if state.initial is not None:
            stats.limits[state.initial] = stats.limits.get(state.initial, 0) + 1
        track = _Track(stats)
        state.advisor_track = track  # type: ignore[attr-defined]
        return track

    def acquired(self, state: PrimitiveState, task: Any, waited_s: float | None) -> None:
        """A Lock or Semaphore was acquired (Locks are skipped)."""
        track = state.__dict__.get("advisor_track")
        if track is None:
            if not self.active:
                return
            track = self._track(state)
        if track.stats is not None:
            track.up(waited_s)

    def released(self, state: PrimitiveState, task: Any) -> None:
        """A Lock or Semaphore was released (Locks are skipped)."""
        track = state.__dict__.get("advisor_track")
        if track is not None and track.stats is not None:
            track.down()

    # ------------------------------------------------------------------ declared limits

    def declared(self, name: str, limit: int | None, backlog: Any) -> _Track | None:
        """The track of the app's own limit ``name`` (created on first use)."""
        track = self._declared.get(name)
        if track is None:
            stats = self._entry(f"concurrency '{name}'", limit, "declared")
            if stats is None:
                return None
            with self._lock:
                track = self._declared.setdefault(name, _Track(stats, backlog))
            if limit is not None:
                stats.limits = {limit: 1}
        if limit is not None and track.stats.limit != limit:
            track.stats.limit = limit
            track.stats.limits = {limit: 1}
        if backlog is not None and track.backlog is None:
            track.backlog = backlog
        return track


class _Untracked:
    stats = None


_NOT_TRACKED: Any = _Untracked()


class Concurrency:
    """``asyncwatch.concurrency(name, limit=n, backlog=queue)``: one unit of work running
    under the app's own concurrency limit (a worker pool, a hand-made gate). A context manager
    (``with`` or ``async with``); a no-op when asyncwatch is not installed."""

    __slots__ = ("_track",)

    def __init__(self, track: _Track | None) -> None:
        self._track = track

    def __enter__(self) -> Concurrency:
        track = self._track
        if track is not None:
            try:
                track.up(None)
            except Exception:  # a broken backlog callable must not break the app
                track.backlog = None
        return self

    def __exit__(self, *exc: object) -> None:
        track = self._track
        if track is not None:
            try:
                track.down()
            except Exception:
                track.backlog = None

    async def __aenter__(self) -> Concurrency:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


def make_concurrency(
    probe: LimitProbe | None, name: str, limit: int | None, backlog: Any | Callable[[], int]
) -> Concurrency:
    """Validate the arguments and build the context manager (inert without a probe)."""
    if not isinstance(name, str) or not name:
        raise ValueError("asyncwatch.concurrency: name must be a non-empty string")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError("asyncwatch.concurrency: limit must be a whole number >= 1 or None")
    if backlog is not None and not (callable(backlog) or hasattr(backlog, "qsize")):
        raise ValueError("asyncwatch.concurrency: backlog must have qsize() or be callable")
    if probe is None or not probe.active:
        return Concurrency(None)
    return Concurrency(probe.declared(name, limit, backlog))
