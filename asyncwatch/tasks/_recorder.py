"""The Recorder: the one place aggregated task state lives, bounded whatever the app does.

Layout: one ``Shard`` per event loop (written only by that loop's thread, so the hot path
needs no lock), holding one ``TaskStats`` per coroutine name. Readers merge the shards at
collection time. Distinct names are capped (``max_keys``); later names share ``_OTHER``.
A shard whose loop is closed or gone is folded into ``retired`` right then (``retire``, from
the loop's ``close`` or its finalizer), so counters stay monotonic and memory stays flat
however many loops an app creates, whether or not anything reads the metrics.

Timing is sampled: every task is counted (created, in flight, outcome), but only about
``timed_per_s`` tasks per second per coroutine are timed (schedule delay and run duration), each
sample weighted by the number of tasks it stands for. The stride adapts to the rate and is
jittered so periodic workloads cannot alias with it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._core.measure import ErrorOverflow, Histogram, clock, coroutine_key, exception_name
from .._core.names import OVERFLOW


class TaskStats:
    """Counters for one coroutine name on one event loop. Written only by that loop's thread.

    Only what must be counted per task is: ``created`` (factory), ``done``, ``cancelled`` and
    ``failed`` (done-callback). In flight (created - done) and ok (done - cancelled - failed)
    are derived when read, which keeps the hot path to a couple of writes.
    """

    __slots__ = (
        "cancelled",
        "created",
        "delay",
        "done",
        "done_cb",
        "duration",
        "errors",
        "failed",
        "key",
        "max_errors",
        "memo",
        "next_at",
        "peak",
        "sample_at",
        "span",
        "stride",
        "target",
        "weight",
        "win_n",
        "win_t",
    )

    def __init__(
        self,
        key: str,
        target_per_s: float,
        max_errors: int,
        span: float,
        memo: dict[str, float] | None = None,
    ) -> None:
        self.key = key
        self.created = 0
        self.done = 0
        self.peak = 0
        self.cancelled = 0
        self.failed = 0
        self.errors: dict[type[BaseException], int] = {}
        self.max_errors = max_errors
        self.duration = Histogram()
        self.delay = Histogram()
        # The task hook takes its slow path when ``created`` reaches ``next_at``: for the next
        # timed sample (``sample_at``), or for every task of a coroutine that gets spans.
        self.sample_at = 1
        self.next_at = 0 if span > 0 else 1
        self.weight = 1  # how many tasks the next timed one stands for
        # Strides last seen for each key, shared by the recorder's shards: a new loop starts
        # at the rate the previous one ended with instead of timing every task for a while.
        self.memo = memo if memo is not None else {}
        self.stride = self.memo.get(key, 1.0)
        self.target = target_per_s
        self.win_t = clock()
        self.win_n = 0
        # span: 0 = no task spans; 1 = every task; in between = that fraction of tasks
        self.span = span
        # Bound once: the hot path must not allocate a bound method per task.
        self.done_cb = self.on_done

    @property
    def in_flight(self) -> int:
        """Tasks created and not finished."""
        return self.created - self.done

    @property
    def ok(self) -> int:
        """Tasks that returned normally."""
        return self.done - self.cancelled - self.failed

    def on_done(self, task: Any) -> None:
        """Done-callback: count the task's outcome without retrieving its exception."""
        try:
            self.done += 1
            if task.cancelled():
                self.cancelled += 1
                return
            # Read the private slot, not .exception(): calling that marks the exception as
            # retrieved and would silence asyncio's "exception was never retrieved" warning.
            try:
                exc = task._exception
            except AttributeError:  # a Future-like from a custom factory without the slot
                return
            if exc is not None:
                self.error(exc)
        except Exception as exc:  # never let asyncio report our error as the app's
            fault_sink("task_done", exc)

    def error(self, exc: BaseException) -> None:
        """Count one failed task under its exception type (bounded)."""
        self.failed += 1
        kind: type[BaseException] = type(exc)
        errors = self.errors
        if kind in errors:
            errors[kind] += 1
        elif len(errors) < self.max_errors:
            errors[kind] = 1
        else:
            errors[ErrorOverflow] = errors.get(ErrorOverflow, 0) + 1

    def schedule_sample(self, now: float, created: int) -> None:
        """After a timed task: pick when the next one is (adaptive stride, jittered)."""
        elapsed = now - self.win_t
        if elapsed >= _WINDOW_S:
            rate = (created - self.win_n) / elapsed
            self.stride = max(1.0, rate / self.target)
            self.win_t, self.win_n = now, created
            self.memo[self.key] = self.stride
        stride = self.stride
        skip = 1 if stride <= 1.0 else 1 + int(random.random() * (2.0 * stride - 1.0))
        self.weight = skip
        self.sample_at = created + skip
        if self.span <= 0:
            self.next_at = self.sample_at

    def retune(self, now: float) -> None:
        """From a reader's thread: shorten a stride left long by a burst that has passed."""
        elapsed = now - self.win_t
        if self.stride > 1.0 and elapsed >= 2.0:
            created = self.created
            stride = max(1.0, (created - self.win_n) / elapsed / self.target)
            if stride < self.stride:
                self.stride = stride
                self.win_t, self.win_n = now, created
                if self.sample_at - created > 2 * stride:
                    skip = max(1, int(stride))
                    self.weight = skip
                    self.sample_at = created + skip
                    if self.span <= 0:
                        self.next_at = self.sample_at


_WINDOW_S = 0.25  # how often the sampling stride adapts to a coroutine's task rate


def _no_sink(hook: str, exc: BaseException) -> None:
    pass


fault_sink = _no_sink  # set by the running Watch to its Faults.report


def clear_fault_sink(sink: Callable[[str, BaseException], None]) -> None:
    """Forget ``sink`` if it is the one set (a stopped Watch's), so nothing holds its owner."""
    global fault_sink
    if fault_sink == sink:
        fault_sink = _no_sink


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
    ) -> None:
        self.max_keys = max_keys
        self.max_error_types = max_error_types
        self.timed_per_s = timed_per_s
        # span_for(key) -> 0..1, the fraction of that coroutine's tasks that get a span
        self._span_for = span_for or (lambda key: 0.0)
        # Not reentrant: ``retire`` may run inside the garbage collector on a thread that is
        # in the middle of a read, and must then leave the fold to the next taker of the lock.
        # (Typed wider only for Watch's after-fork renewal, which keeps the kind it finds.)
        self._lock: threading.Lock | threading.RLock = threading.Lock()
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
        return TaskStats(key, target, self.max_error_types, span, self._strides)

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
