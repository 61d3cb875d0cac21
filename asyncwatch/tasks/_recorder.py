"""The Recorder: the one place aggregated task state lives, bounded whatever the app does.

Layout: one ``Shard`` per event loop (written only by that loop's thread, so the hot path
needs no lock), holding one ``TaskStats`` per coroutine name. Readers merge the shards at
collection time. Distinct names are capped (``max_keys``); later names share ``_OTHER``.
A shard whose loop is closed or gone is folded into ``retired`` right then (``retire``, from
the loop's ``close`` or its finalizer), so counters stay monotonic and memory stays flat
however many loops an app creates, whether or not anything reads the metrics.

Which tasks are timed, and the counters a task bumps on its way, are in ``_path``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._core.measure import ErrorOverflow, Histogram, clock, coroutine_key, exception_name
from .._core.names import OVERFLOW
from ._path import FaultSink, TaskStats


class Shard:
    """One event loop's share of the Recorder."""

    __slots__ = ("by_code", "by_name", "codes", "is_live", "label", "recorder", "stats")

    def __init__(self, recorder: Recorder, label: str) -> None:
        self.recorder = recorder
        self.label = label
        self.stats: dict[str, TaskStats] = {}
        # id(code object) -> stats. ``codes`` keeps those code objects alive so an id cannot
        # be reused by another function while it is in the cache.
        self.by_code: dict[int, TaskStats] = {}
        self.by_name: dict[str, TaskStats] = {}
        self.codes: list[Any] = []
        # Set by the task watcher: False once the loop is closed or gone.
        self.is_live: Callable[[], bool] = lambda: True

    def stats_for(self, coro: Any) -> TaskStats:
        """Slow path of the task hook: name an unseen coroutine and find its slot."""
        code = getattr(coro, "cr_code", None)
        key = coroutine_key(coro)
        stats = self.stats.get(key)
        if stats is None:
            key = self.recorder.admit(key)
            stats = self.stats.get(key)
            if stats is None:
                stats = self.recorder.make_stats(key)
                self.stats[key] = stats
        cache_room = len(self.codes) < 4 * self.recorder.max_keys
        if code is not None and cache_room:
            self.by_code[id(code)] = stats
            self.codes.append(code)
        elif code is None and len(self.by_name) < 4 * self.recorder.max_keys:
            self.by_name[key] = stats
        return stats

    def clear(self) -> None:
        """Forget everything (used in a freshly forked child)."""
        self.stats.clear()
        self.by_code.clear()
        self.by_name.clear()
        self.codes.clear()


@dataclass
class KeySnapshot:
    """Merged figures for one coroutine name across all loops."""

    created: int = 0
    in_flight: int = 0
    peak: int = 0
    ok: int = 0
    cancelled: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    duration: Histogram = field(default_factory=Histogram)
    delay: Histogram = field(default_factory=Histogram)
    first_seen_ns: int = 0
    live_peak: int = 0

    def add(self, s: TaskStats, *, live: bool) -> None:
        """Merge one shard's stats (``live`` False for a retired loop: nothing in flight)."""
        self.created += s.created
        if live:
            self.in_flight += s.in_flight
            self.live_peak += s.peak
        else:
            self.peak = max(self.peak, s.peak)
        self.ok += s.ok
        self.cancelled += s.cancelled
        for kind, n in list(s.errors.items()):
            name = exception_name(kind)
            self.errors[name] = self.errors.get(name, 0) + n
        self.duration.merge(s.duration)
        self.delay.merge(s.delay)


class Recorder:
    """Bounded aggregation for every instrumented loop; see the module docstring."""

    def __init__(
        self,
        *,
        max_keys: int = 500,
        max_error_types: int = 20,
        timed_per_s: float = 200.0,
        span_for: Any = None,
        fault_sink: FaultSink | None = None,
    ) -> None:
        self.max_keys = max_keys
        self.max_error_types = max_error_types
        self.timed_per_s = timed_per_s
        # span_for(key) -> 0..1, the fraction of that coroutine's tasks that get a span
        self._span_for = span_for or (lambda key: 0.0)
        # Where the done-callbacks report an error of their own (the Watch's Faults.report)
        self._fault_sink = fault_sink
        # Not reentrant: ``retire`` may run inside the garbage collector on a thread that is
        # in the middle of a read, and must then leave the fold to the next taker of the lock.
        self._lock = threading.Lock()
        self._keys: dict[str, int] = {}  # key -> first-seen time (ns since epoch)
        self._strides: dict[str, float] = {}
        self._shards: list[Shard] = []
        self._dead: list[Shard] = []
        self._retired = Shard(self, "retired")
        self.started_ns = time.time_ns()
        self.overflowed = 0  # distinct names refused by the cap

    # ---------------------------------------------------------------- writers (slow path)

    def new_shard(self, label: str) -> Shard:
        """A shard for a newly instrumented loop."""
        shard = Shard(self, label)
        with self._lock:
            self._fold_dead()
            self._shards.append(shard)
        return shard

    def retire(self, shard: Shard) -> None:
        """The shard's loop was closed or collected (any thread, possibly inside the garbage
        collector): fold it now, or, when the lock is taken (maybe by this very thread,
        interrupted), leave it to whoever takes the lock next (a read or a new loop)."""
        self._dead.append(shard)  # list.append is atomic
        if self._lock.acquire(blocking=False):
            try:
                self._fold_dead()
            finally:
                self._lock.release()

    def admit(self, key: str) -> str:
        """Register a coroutine name, or return ``_OTHER`` once the cap is reached."""
        with self._lock:
            if key in self._keys:
                return key
            if len(self._keys) >= self.max_keys:
                self.overflowed += 1
                self._keys.setdefault(OVERFLOW, time.time_ns())
                return OVERFLOW
            self._keys[key] = time.time_ns()
            return key

    def make_stats(self, key: str) -> TaskStats:
        """A fresh slot for ``key`` with this recorder's limits."""
        target = self.timed_per_s
        span = self._span_for(key)
        # Tasks with spans take the hook's slow path (``next_at``) but are timed at the same
        # rate as any other: a span needs no schedule-delay callback of its own.
        return TaskStats(key, target, self.max_error_types, span, self._strides, self._fault_sink)

    # ---------------------------------------------------------------- readers

    def _fold_dead(self) -> None:
        for shard in self._shards:
            if not shard.is_live():
                self._dead.append(shard)
        while self._dead:
            shard = self._dead.pop()
            if shard in self._shards:
                self._shards.remove(shard)
            for key, s in shard.stats.items():
                kept = self._retired.stats.get(key)
                if kept is None:
                    kept = self._retired.stats[key] = self.make_stats(key)
                kept.created += s.created
                kept.done += s.done  # what never finished is not counted as in flight
                kept.peak = max(kept.peak, s.peak)
                kept.cancelled += s.cancelled
                kept.failed += s.failed
                errors, cap = kept.errors, self.max_error_types
                for kind, n in s.errors.items():
                    # capped as one loop's are: the dead loops' types add up
                    slot = kind if kind in errors or len(errors) < cap else ErrorOverflow
                    errors[slot] = errors.get(slot, 0) + n
                kept.duration.merge(s.duration)
                kept.delay.merge(s.delay)
            self._keep_codes(shard)
            shard.clear()

    def _keep_codes(self, shard: Shard) -> None:
        """Which code object is which coroutine outlives the loop (memory attribution charges
        what a dead loop's coroutines allocated): kept once, under the same cap as a shard's."""
        retired = self._retired
        room = 4 * self.max_keys - len(retired.codes)
        for code in shard.codes:
            if room <= 0:
                return
            stats = shard.by_code.get(id(code))
            if stats is None or id(code) in retired.by_code:
                continue
            retired.by_code[id(code)] = retired.stats[stats.key]
            retired.codes.append(code)
            room -= 1

    def code_keys(self) -> list[tuple[Any, str]]:
        """(code object, coroutine name) of every coroutine seen, live loops and dead ones."""
        out = []
        with self._lock:
            for shard in [*self._shards, self._retired]:
                for code in shard.codes:
                    stats = shard.by_code.get(id(code))
                    if stats is not None:
                        out.append((code, stats.key))
        return out

    def snapshot(self) -> dict[str, KeySnapshot]:
        """Merged per-coroutine figures from every loop, live and retired."""
        now = clock()
        out: dict[str, KeySnapshot] = {}
        with self._lock:
            self._fold_dead()
            shards = list(self._shards)
            first_seen = dict(self._keys)
            for key, s in self._retired.stats.items():  # written by folds: read under the lock
                out.setdefault(key, KeySnapshot()).add(s, live=False)
        for shard in shards:
            for key, s in list(shard.stats.items()):
                s.retune(now)
                out.setdefault(key, KeySnapshot()).add(s, live=True)
        for key, snap in out.items():
            snap.first_seen_ns = first_seen.get(key, self.started_ns)
            snap.peak = max(snap.peak, snap.live_peak)
        return out

    def key_count(self) -> int:
        """Distinct coroutine names admitted so far (including ``_OTHER``)."""
        return len(self._keys)

    def reset(self) -> None:
        """Start from zero (after fork: the child is a new instance with its own series)."""
        with self._lock:
            for shard in self._shards:
                shard.clear()
            self._retired.clear()
            self._dead.clear()
            self._keys.clear()
            self.started_ns = time.time_ns()
            self.overflowed = 0

    def after_fork(self) -> None:
        """In a forked child: a new lock (another thread may have held this one at fork
        time, and would hold it forever), then start from zero (``reset``)."""
        self._lock = threading.Lock()
        self.reset()
