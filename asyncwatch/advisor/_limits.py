"""Concurrency limits: semaphores (through the primitive tracker) and the app's own limits
declared with ``asyncwatch.concurrency(name, limit=n)``.

Per limit (a semaphore's creation site, or a declared name) it keeps, cumulatively:

* completions (``done``), and waits: how many acquires had to wait and for how long in all
  (waiter-seconds; the primitive tracker times a wait only when the acquire finds the
  semaphore taken), or, for a declared limit with a ``backlog`` (a queue or a callable), the
  time-integral of its length;
* *sampled holds* (acquire -> release), each binned by the mean concurrency during it (how
  many holders at once, averaged over the hold): holds and hold-seconds per level. Little's
  law gives the throughput at level N: ``N / mean hold time``, the points of a
  throughput-vs-concurrency curve (fitted with the USL by the advisor). Binning by the mean
  over the hold, not the level at release, keeps bursts of simultaneous releases from
  inventing levels the work never ran at. The sums over the samples (hold-seconds and
  holder-seconds) give the mean hold time and the mean holders a hold sees; with ``done``
  they give holder-seconds and active time over any window.

Semaphores: the first ``EXACT_HOLDS`` holds of each site are all timed, and again the first
``EXACT_HOLDS`` after a semaphore of the site is made with another limit (short runs and
fresh limits get every data point: a run at a new level always leaves points there); after
that one hold in about ``SAMPLE_EVERY`` x the concurrency is (about one transition in ten
reads the clock). A hold released while an exception propagates, or whose task called
``asyncwatch.rejected()``, is counted as failed (per level, for the sampled holds). Between
samples an acquire or
release only moves a level counter and a countdown: no clock read, no allocation. Declared
limits are explicit calls around coarse work, so every hold is timed.

Semaphores made from the same line share one entry (per-object levels are summed into it).
At most ``max_limits`` entries; later ones are not measured. Everything runs on the loop's
thread.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from ..sync import PrimitiveState

clock = time.perf_counter
MAX_LEVEL = 4096
SAMPLE_EVERY = 8  # a sampled hold, then about SAMPLE_EVERY x level holds untimed
EXACT_HOLDS = 2000  # holds per site timed one and all before sampling starts (and again
# after the site's semaphores are made with another limit: a new level is always measured)
REJECTED: weakref.WeakSet[Any] = weakref.WeakSet()  # tasks whose current hold failed


def mark_rejected() -> None:
    """``asyncwatch.rejected()``: the current task's hold of a concurrency limit ended in a
    failure that raised nothing (a 429, a throttled or rejected response): it is not counted
    as throughput. Holds released while an exception propagates count as failed already."""
    import asyncio

    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: nothing holds a limit here
        return
    if task is not None:
        REJECTED.add(task)


def _failed(task: asyncio.Task[Any]) -> bool:
    """Did the hold that ``task`` is releasing fail (an exception on its way, or marked)?"""
    if sys.exc_info()[1] is not None:
        if task is not None and REJECTED:
            REJECTED.discard(task)
        return True
    if task is not None and REJECTED and task in REJECTED:
        REJECTED.discard(task)
        return True
    return False


class LimitStats:
    """Cumulative figures of one limit; see the module docstring."""

    def __init__(self, label: str, limit: int | None, kind: str) -> None:
        self.label = label
        self.kind = kind  # "Semaphore", "BoundedSemaphore" or "declared"
        self.limit = limit
        self.limits: dict[int, int] = {}  # limit -> objects seen with it (semaphores)
        self.last_limit: int | None = limit  # the limit of the object made last (in force)
        self.exact_left = EXACT_HOLDS  # holds still to time one and all
        self.failed: dict[int, int] = {}  # level -> sampled holds that failed
        self.failures = 0  # failed holds in all (every hold, not a sample)
        self.in_use = 0  # permits held now, over the site's objects
        self.hold_time: dict[int, float] = {}  # level -> sampled seconds held at it
        self.holds: dict[int, int] = {}  # level -> sampled holds
        self.sampled = 0  # sampled holds in all
        self.sampled_s = 0.0  # their seconds held
        self.sampled_area = 0.0  # their holder-seconds (concurrency integrated over each)
        self.done = 0
        self.waits = 0
        self.waiter_s = 0.0
        self.max_level = 0

    def current_limit(self) -> int | None:
        """The limit in force: that of the object created last (None if unknown)."""
        return self.last_limit if self.last_limit is not None else self.limit

    def new_object(self, limit: int) -> None:
        """A semaphore of this site was made with ``limit``; another limit than the one in
        force starts a new round of exactly timed holds, so the new level is measured."""
        if limit != self.last_limit and self.limits:
            self.exact_left = EXACT_HOLDS
        self.limits[limit] = self.limits.get(limit, 0) + 1
        self.last_limit = limit

    def sample(self, held: float, area: float, failed: bool = False) -> None:
        """A timed hold of ``held`` seconds over which the concurrency integrated to ``area``."""
        mean = min(MAX_LEVEL, round(area / held) or 1)
        if failed:
            self.failed[mean] = self.failed.get(mean, 0) + 1
        self.holds[mean] = self.holds.get(mean, 0) + 1
        self.hold_time[mean] = self.hold_time.get(mean, 0.0) + held
        self.sampled += 1
        self.sampled_s += held
        self.sampled_area += area

    def copy(self) -> LimitStats:
        """A snapshot safe to read while the loop keeps writing."""
        out = LimitStats(self.label, self.limit, self.kind)
        out.limits = dict(self.limits)
        out.last_limit, out.exact_left = self.last_limit, self.exact_left
        out.failed, out.failures = dict(self.failed), self.failures
        out.in_use = self.in_use
        out.hold_time = dict(self.hold_time)
        out.holds = dict(self.holds)
        out.sampled, out.sampled_s = self.sampled, self.sampled_s
        out.sampled_area = self.sampled_area
        out.done, out.waits = self.done, self.waits
        out.waiter_s, out.max_level = self.waiter_s, self.max_level
        return out


class SemaphoreTrack:
    """Level of one semaphore object, feeding its ``LimitStats``; called by the primitive
    tracker's semaphore wrappers (``state.track``) with the task acquiring or releasing.

    While the site has had fewer than ``EXACT_HOLDS`` timed holds, every hold is timed: each
    level change adds ``level x elapsed`` to the area, and holds in progress are paired with
    releases first in, first out (see ``_Track``). Then a sample starts on an acquire when the
    countdown runs out and ends when the same task releases; while it runs, each level change
    adds to its area.
    """

    __slots__ = ("area", "began", "countdown", "exact", "last", "level", "stats", "task")

    def __init__(self, stats: LimitStats) -> None:
        self.stats = stats
        self.level = 0
        self.countdown = 0  # the first hold is sampled
        self.task: asyncio.Task[Any] | None = None  # the task whose hold is being timed
        self.began = self.last = self.area = 0.0
        self.exact: deque[tuple[float, float]] | None = (
            deque(maxlen=MAX_LEVEL) if stats.exact_left > 0 else None
        )  # holds in progress while every hold is timed: (start, area then)

    def up(self, task: asyncio.Task[Any], waited_s: float | None) -> None:
        """A permit was taken by ``task`` (``waited_s``: None if it was free)."""
        stats = self.stats
        level = self.level = self.level + 1
        stats.in_use += 1
        if level > stats.max_level:  # noqa: PLR1730 - cheaper than a max() call per acquire
            stats.max_level = level
        if waited_s is not None:
            stats.waits += 1
            stats.waiter_s += waited_s
        if self.exact is not None:
            now = clock()
            self.area += (level - 1) * (now - self.last)
            self.last = now
            self.exact.append((now, self.area))
            return
        if self.task is not None:
            now = clock()
            self.area += (level - 1) * (now - self.last)
            self.last = now
            return
        self.countdown -= 1
        if self.countdown <= 0 and task is not None:
            self.task = task
            self.began = self.last = clock()
            self.area = 0.0

    def down(self, task: asyncio.Task[Any]) -> None:
        """A permit was released by ``task``."""
        level = self.level
        if level <= 0:
            return  # taken before it was tracked
        self.level = level - 1
        self.stats.in_use -= 1
        self.stats.done += 1
        failed = _failed(task)
        if failed:
            self.stats.failures += 1
        if self.exact is not None:
            self._exact_down(level, failed)
            return
        sampled = self.task
        if sampled is None:
            return
        now = clock()
        area = self.area = self.area + level * (now - self.last)
        self.last = now
        if sampled is task:
            held = now - self.began
            if held > 0:
                self.stats.sample(held, area, failed)
        elif level > 1:
            return  # the timed hold goes on
        # done, or abandoned: the permit changed hands and the timed task may never release
        self.task = None
        every = SAMPLE_EVERY * max(1, level)
        self.countdown = every // 2 + random.randrange(every)  # no lockstep with the app


    def _exact_down(self, level: int, failed: bool) -> None:
        now = clock()
        area = self.area = self.area + level * (now - self.last)
        self.last = now
        stats = self.stats
        if self.exact:
            began, area_then = self.exact.popleft()
            if now > began:
                stats.sample(now - began, area - area_then, failed)
                stats.exact_left -= 1
        if stats.exact_left <= 0:
            self.exact = None  # enough: sample from now on
            self.countdown = SAMPLE_EVERY * max(1, level)


class _Track:
    """Level of one declared limit: every hold is timed (they wrap coarse work).

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

    def _advance(self) -> float:
        now = clock()
        dt = now - self.last
        self.last = now
        self.area += self.level * dt
        if self.backlog_level:
            self.stats.waiter_s += self.backlog_level * dt
        return now

    def up(self) -> None:
        """A hold begins."""
        now = self._advance()
        stats = self.stats
        self.level = level = self.level + 1
        stats.in_use += 1
        stats.max_level = max(stats.max_level, level)
        self.open.append((now, self.area))
        if self.backlog is not None:
            self._read_backlog()

    def down(self, failed: bool = False) -> None:
        """A hold ends (``failed``: it raised, or the app marked it rejected)."""
        now = self._advance()
        stats = self.stats
        if self.level:
            self.level -= 1
            stats.in_use -= 1
            stats.done += 1
            if failed:
                stats.failures += 1
            if self.open:
                began, area_then = self.open.popleft()
                held = now - began
                if held > 0:
                    stats.sample(held, self.area - area_then, failed)
        if self.backlog is not None:
            self._read_backlog()


class LimitProbe:
    """Tracks semaphores for the primitive tracker; holds the declared limits too."""

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

    def track_for(self, state: PrimitiveState) -> SemaphoreTrack | None:
        """The track of a semaphore seen for the first time (None: not measured). Set as the
        primitive tracker's ``track_semaphore``; the tracker keeps the result on the state."""
        if not self.active:
            return None
        stats = self._entry(state.describe(), state.initial, state.kind)
        if stats is None:
            return None
        if state.initial is not None:
            stats.new_object(state.initial)
        return SemaphoreTrack(stats)

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
                stats.last_limit = limit
        if limit is not None and track.stats.limit != limit:
            track.stats.limit = limit
            track.stats.new_object(limit)
        if backlog is not None and track.backlog is None:
            track.backlog = backlog
        return track


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
                track.up()
            except Exception:  # a broken backlog callable must not break the app
                track.backlog = None
        return self

    def __exit__(self, exc_type: object = None, *exc: object) -> None:
        track = self._track
        if track is not None:
            try:
                import asyncio

                try:
                    task = asyncio.current_task()
                except RuntimeError:
                    task = None
                marked = task is not None and bool(REJECTED) and task in REJECTED
                if marked:
                    REJECTED.discard(task)
                track.down(exc_type is not None or marked)
            except Exception:
                track.backlog = None

    async def __aenter__(self) -> Concurrency:
        return self.__enter__()

    async def __aexit__(self, exc_type: object = None, *exc: object) -> None:
        self.__exit__(exc_type)


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
