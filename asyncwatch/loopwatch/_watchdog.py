"""Loop lag and blocked-loop detection: heartbeats, the watchdog thread and their outputs.

* Every instrumented loop gets a heartbeat (``_Heartbeat``: a ``call_later`` chain in an
  empty context) that feeds its ``LoopMonitor`` (``_blocked``) and the
  ``asyncwatch.loop.lag`` histogram.
* One watchdog thread per process (``asyncwatch-watchdog``) looks at every loop when its
  heartbeat falls due and, while one is overdue, samples that loop's thread
  (``sys._current_frames()``) until it comes back. It sleeps until the next heartbeat is due,
  so an idle process costs about one wake-up per heartbeat interval.
* Each block becomes a ``BlockedLoop`` finding (added while the loop is still held, with
  ``ongoing=True``, replaced by its final form when the loop returns), a count and a duration
  per culprit line (at most ``max_culprits`` lines, then ``_OTHER``), a span event on the span
  current in the blocking task or callback, and one WARNING line on the ``asyncwatch`` logger
  (at most 10 a minute after a burst of 10; what was held back is counted in the next line).
* ``stop()`` ends the heartbeats, the wrapper of precise mode and the thread (joined).
  In a forked child, ``after_fork()`` starts from zero and starts the child's own watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from .._core import names as n
from .._core.config import Config
from .._core.context import route_in, span_in, task_context
from .._core.faults import Faults
from .._core.findings import FindingsLog
from .._core.measure import Histogram, coroutine_key
from .._core.points import HistValue, Point
from .._core.stacks import (
    MACHINERY,
    MAX_STACK,
    RawFrame,
    Sample,
    callback_site,
    classify,
    finished,
    function_name,
    handle_in,
    module_of_file,
    sample_thread,
    task_of,
    to_frame,
)
from ._blocked import IDLE_POLL_S, BlockedLoop, Episode, LoopMonitor, thread_clock
from ._gctimes import GcTimes
from ._gilwatch import GilWatch
from ._precise import PreciseTimer

logger = logging.getLogger("asyncwatch")

THREAD_NAME = "asyncwatch-watchdog"
GIL_WAIT_S = 30.0  # a faulthandler dump whose loop never comes back is dropped after this


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


class _Heartbeat:
    """The ``call_later`` chain on one loop (runs on the loop's thread).

    Its pending handle references the loop (every asyncio handle does), so the heartbeat
    keeps it only weakly: the loop owns its timer, never the other way round, and a loop the
    app lets go of is freed with its timer in it."""

    __slots__ = ("ctx", "finalizer", "handle", "loop_ref", "monitor", "owner", "stopped")

    def __init__(self, owner: LoopWatch, monitor: LoopMonitor, loop: Any) -> None:
        self.owner = owner
        self.monitor = monitor
        self.loop_ref = weakref.ref(loop)
        self.ctx = contextvars.Context()  # never the app's context: nothing of it leaks in
        self.handle: Callable[[], Any] = _none  # weak reference to the pending handle
        self.stopped = False
        self.finalizer: Any = None

    def start(self, loop: Any) -> None:
        # First beat as soon as the loop runs; it records no lag (the monitor starts paused).
        # Through the class, not the instance: a replacement of the instance's method (a
        # test's mock with another signature) neither sees nor breaks the heartbeat.
        self.handle = weakref.ref(type(loop).call_soon(loop, self.run, context=self.ctx))

    def run(self) -> None:
        if self.stopped:
            return
        loop = self.loop_ref()
        if loop is None:
            return
        try:
            monitor = self.monitor
            ident = threading.get_ident()
            if ident != monitor.thread_id:
                monitor.thread_name = threading.current_thread().name
                monitor.thread_id = ident
            native = threading.get_native_id()
            if native != monitor.native_id:  # another thread, or a forked child's
                monitor.thread_clock = thread_clock()
                monitor.native_id = native
            depth = 0
            try:
                frame: Any = sys._getframe(1)
            except ValueError:  # called straight from C with no Python frame below
                frame = None
            while frame is not None:
                depth += 1
                frame = frame.f_back
            monitor.depth = depth
            resumed = monitor.paused
            monitor.beat()
            self.handle = weakref.ref(
                type(loop).call_later(loop, monitor.interval_s, self.run, context=self.ctx)
            )
            if resumed:
                self.owner.kick()  # a loop (re)started: the watchdog may be in a long sleep
            if self.owner.thread is None:
                self.owner.start_thread()  # a forked child's first beat starts its watchdog
        except Exception as exc:
            self.owner.fault("heartbeat", exc)

    def stop(self) -> None:
        self.stopped = True
        if self.finalizer is not None:
            self.finalizer.detach()
        handle, self.handle = self.handle(), _none
        loop = self.loop_ref()
        if handle is None or loop is None or loop.is_closed():
            return
        try:
            if loop.is_running() and self.monitor.thread_id != threading.get_ident():
                loop.call_soon_threadsafe(handle.cancel)
            else:
                handle.cancel()
        except RuntimeError:  # closed meanwhile: nothing left to cancel
            pass


def _none() -> None:
    return None


class _Info:
    """What was looked up about a block when it was detected."""

    __slots__ = ("coroutine", "freed", "freed_site", "label", "route", "span", "span_id",
                 "started_at", "task", "trace_id")

    def __init__(self) -> None:
        self.task: str | None = None
        self.coroutine: str | None = None
        # The callback or task the block came after, when it had already returned (its
        # tail: freeing what it let go), e.g. "task 'x' running app.jobs.handler".
        self.freed: str | None = None
        self.freed_site: tuple[RawFrame, str] | None = None  # its first line and module
        self.label = ""  # the culprit's module-qualified name (``code.function.name``)
        self.route: str | None = None
        self.span: Any = None
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self.started_at = 0.0


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


class LogLimiter:
    """A token bucket for the WARNING lines: ``burst`` at once, then one per ``every_s``."""

    def __init__(self, clock: Callable[[], float], burst: int = 10, every_s: float = 6.0):
        self.clock = clock
        self.burst = burst
        self.every_s = every_s
        self.tokens = float(burst)
        self.at = clock()
        self.held_back = 0

    def allow(self) -> int | None:
        """None: hold this line back. Else the number of lines held back since the last."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) / self.every_s)
        self.at = now
        if self.tokens < 1:
            self.held_back += 1
            return None
        self.tokens -= 1
        held, self.held_back = self.held_back, 0
        return held


REPEAT_LOG_S = 60.0
"""A block at a site already logged is logged again at most this often (with the count)."""
MAX_REPEAT_SITES = 256


class RepeatLimiter:
    """Per culprit site: the first block is logged; repeats within ``every_s`` of that site's
    last line are held back and summed up (count, worst) in its next line."""

    def __init__(self, clock: Callable[[], float], every_s: float = REPEAT_LOG_S) -> None:
        self.clock = clock
        self.every_s = every_s
        # site -> [time of its last line, repeats held back since, worst of those]
        self._sites: OrderedDict[Any, list[float]] = OrderedDict()

    def allow(self, site: Any, duration: float) -> tuple[int, float] | None:
        """None: hold this line back. Else (repeats held back, the worst of them)."""
        now = self.clock()
        entry = self._sites.get(site)
        if entry is None:
            self._sites[site] = [now, 0, 0.0]
            while len(self._sites) > MAX_REPEAT_SITES:
                self._sites.popitem(last=False)
            return 0, 0.0
        self._sites.move_to_end(site)
        if now - entry[0] < self.every_s:
            entry[1] += 1
            entry[2] = max(entry[2], duration)
            return None
        held, worst = int(entry[1]), entry[2]
        entry[:] = [now, 0, 0.0]
        return held, worst


class LoopWatch:
    """The component ``Watch`` wires in: heartbeats, watchdog thread, outputs."""

    def __init__(
        self,
        config: Config,
        findings: FindingsLog,
        faults: Faults,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.threshold_s = config.block_threshold_s
        self.precise = config.precise_callbacks
        self.gil_watch = config.gil_watch
        self.findings = findings
        self.faults = faults
        self.clock = clock
        self.active = False
        self.culprits = CulpritCounts(config.max_culprits)
        self.limiter = LogLimiter(clock)
        self.repeats = RepeatLimiter(clock)
        self._lock = threading.Lock()
        self._monitors: dict[int, LoopMonitor] = {}  # id(loop) -> monitor; read by precise mode
        self._beats: dict[int, _Heartbeat] = {}
        # Loops closed or gone, appended from finalizers (no lock there), folded by readers.
        self._dead: list[tuple[int, LoopMonitor]] = []
        self._retired_lag = Histogram()
        self._count = 0
        self._thread: threading.Thread | None = None
        self._wake = _held_lock()  # released to wake the watchdog (cheaper than an Event)
        self._stopping = False
        self._timer = PreciseTimer(self._monitors, clock, self.threshold_s, self.fault)
        self.gil = GilWatch(self.threshold_s, clock)
        self.gc = GcTimes(clock, self.threshold_s / 4)
        self._gil_pending: list[tuple[float, dict[int, list[tuple[str, int, str]]]]] = []
        self._uvloop_noted = False
        self.started_ns = time.time_ns()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start watching loops added from now on (and install precise mode if configured)."""
        self.active = True
        self._stopping = False
        if self.precise:
            self._timer.install()
        self.gc.install()
        if self.gil_watch:
            self.gil.start()
        # Now, not with the first loop: the app's thread count then stays what it was after
        # install() (test suites assert on it, e.g. that a worker thread went away).
        self.start_thread()

    def add_loop(self, loop: Any) -> None:
        """Start a heartbeat on ``loop`` (the task watcher's ``on_loop``); idempotent."""
        if not self.active:
            return
        key = id(loop)
        precise = self.precise and isinstance(loop, asyncio.BaseEventLoop)
        with self._lock:
            existing = self._monitors.get(key)
            if existing is not None and existing.loop() is loop:
                return
            # (An entry under the same id whose loop is gone is stale: replaced here.)
            self._count += 1
            monitor = LoopMonitor(
                f"loop-{self._count}",
                threshold_s=self.threshold_s,
                clock=self.clock,
                sink=self,
                loop=weakref.ref(loop),
                precise=precise,
            )
            beat = _Heartbeat(self, monitor, loop)
            self._monitors[key] = monitor
            self._beats[key] = beat
        finalizer = weakref.finalize(loop, self._loop_gone, key, monitor)
        finalizer.atexit = False
        beat.finalizer = finalizer
        if self.precise and not precise and not self._uvloop_noted:
            self._uvloop_noted = True
            logger.info(
                "asyncwatch: precise_callbacks has no effect on %s (its callbacks run in C); "
                "the watchdog still covers it",
                type(loop).__name__,
            )
        beat.start(loop)
        self.start_thread()

    def stop(self) -> None:
        """Stop the heartbeats, precise mode and the watchdog thread (joined). Idempotent."""
        self.active = False
        self._timer.uninstall()
        self.gc.uninstall()
        self.gil.stop()
        with self._lock:
            beats = list(self._beats.values())
            monitors = list(self._monitors.values())
            self._beats.clear()
            self._monitors.clear()
        for beat in beats:
            beat.stop()
        for monitor in monitors:
            monitor.close()  # a block still open is recorded as it stands
        self._stopping = True
        self.kick()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    def after_fork(self) -> None:
        """In a forked child: fresh locks and figures. The child's own watchdog starts with
        its next heartbeat or new loop (starting a thread inside an at-fork handler can
        deadlock the child)."""
        self._lock = threading.Lock()
        self._wake = _held_lock()
        self._thread = None
        self._dead = []
        self._retired_lag = Histogram()
        self.culprits.reset()
        self.limiter = LogLimiter(self.clock)
        self.repeats = RepeatLimiter(self.clock)
        self.gil.after_fork()
        self._gil_pending = []
        self.started_ns = time.time_ns()
        for monitor in self._monitors.values():
            monitor.lock = threading.Lock()
            monitor.forget()
            monitor.lag = Histogram()

    @property
    def thread(self) -> threading.Thread | None:
        """The watchdog thread, if running."""
        return self._thread

    def monitor_of(self, loop: Any) -> LoopMonitor | None:
        """The monitor of ``loop``, if it is watched."""
        return self._monitors.get(id(loop))

    def kick(self) -> None:
        """Wake the watchdog now."""
        with contextlib.suppress(RuntimeError):  # a wake-up is already pending
            self._wake.release()

    def fault(self, hook: str, exc: BaseException) -> None:
        """An internal error in a heartbeat or the watchdog: counted, never raised into the app
        (raised only in strict mode, where the heartbeat then stops)."""
        self.faults.report(hook, exc)

    # ---------------------------------------------------------------- watchdog thread

    def start_thread(self) -> None:
        """Start the watchdog thread unless it runs (or asyncwatch is stopping)."""
        with self._lock:
            current = self._thread
            # (ident is None: created by another thread a moment ago and still starting)
            if current is not None and (current.ident is None or current.is_alive()):
                return
            if self._stopping:
                return
            thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread = thread
        try:
            thread.start()
        except RuntimeError as exc:  # the interpreter is shutting down, or out of threads
            with self._lock:
                if self._thread is thread:
                    self._thread = None
            self.fault("watchdog_start", exc)

    def _run(self) -> None:
        while not self._stopping:
            try:
                wake = self.tick()
            except Exception as exc:
                try:
                    if self.faults.report("watchdog", exc):
                        return
                except Exception:  # strict mode raised: record it and stop watching
                    logger.exception("asyncwatch: watchdog stopped by an internal error")
                    return
                wake = self.clock() + IDLE_POLL_S
            delay = max(0.001, wake - self.clock())
            self._wake.acquire(True, delay)  # returns early when kicked

    def tick(self) -> float:
        """Look at every loop once; returns when the next look is due."""
        now = self.clock()
        wake = now + IDLE_POLL_S
        for key, monitor in list(self._monitors.items()):
            loop = monitor.loop()
            if loop is None or loop.is_closed():
                self._dead.append((key, monitor))
                continue
            wake = min(wake, monitor.check(now, loop.is_running(), self._sample))
        self._fold_dead()
        if self.gil.active:
            self._gil_blocks(now)
            # Fires only if this thread cannot look again in time: a call holding the GIL.
            self.gil.arm(max(0.0, wake - now) + self.threshold_s)
        return wake

    def _gil_blocks(self, now: float) -> None:
        """Report blocks seen only by faulthandler's dump (see ``_gilwatch``), once the
        blocked loop's heartbeat has said how long they lasted."""
        got = self.gil.read()
        if got is not None:
            self._gil_pending.append(got)
        keep = []
        monitors = list(self._monitors.values())
        for fired_at, threads in self._gil_pending:
            if now - fired_at > GIL_WAIT_S:
                continue
            waiting = False
            for monitor in monitors:
                frames = threads.get(monitor.thread_id)
                if not frames or monitor.reported_until >= fired_at:
                    continue  # not in the dump, or the sampler saw the block after all
                beat_at, lag = monitor.late
                if monitor.beat_at < fired_at:
                    waiting = True  # not back yet
                    continue
                if beat_at < fired_at or classify(frames[-1][0]) == MACHINERY:
                    continue  # came back on time, or was idle in select()
                # Only what the sampler did not already report of this late beat.
                since = max(beat_at - lag, monitor.reported_until)
                if beat_at - since > self.threshold_s:
                    self._gil_block(monitor, frames, since, beat_at - since)
            if waiting:
                keep.append((fired_at, threads))
        self._gil_pending = keep

    def _gil_block(self, monitor: LoopMonitor, frames: list[tuple[str, int, str]],
                   since: float, duration: float) -> None:
        best: list[tuple[str, int, str] | None] = [None, None, None, None]
        for entry in reversed(frames):
            kind = classify(entry[0])
            if best[kind] is None:
                best[kind] = entry
        chosen = best[0] or best[1] or best[2]  # never asyncio's own frames
        culprit = to_frame(chosen) if chosen is not None else None
        collected = self.gc.during(since, since + duration)
        cause = "code"
        if culprit is not None:
            summary = (
                f"event loop blocked for {duration:.3f} s at {culprit} (in a call holding "
                "the GIL; named from a faulthandler dump)"
            )
        elif collected is not None and collected[0] >= duration / 2:
            cause = "garbage_collection"
            summary = (
                f"event loop blocked for {duration:.3f} s by a garbage collection (generation "
                f"{collected[1]}, {collected[0]:.3f} s), in no line of the app (from a "
                "faulthandler dump)"
            )
        else:
            cause = "unknown"
            summary = (
                f"event loop blocked for {duration:.3f} s between callbacks, in no line of "
                "the app: objects being freed (deallocation of what a finished callback or "
                "task let go) or garbage collection (from a faulthandler dump)"
            )
        finding = BlockedLoop(
            started_at=time.time() - (self.clock() - since),
            summary=summary,
            duration_s=duration,
            culprit=culprit,
            stack=tuple(to_frame(f) for f in frames[-MAX_STACK:]),
            thread=monitor.thread_name,
            cause=cause,
        )
        monitor.reported_until = since + duration
        self.findings.add(finding)
        if culprit is not None:
            label = function_name(module_of_file(culprit.filename), culprit.function)
            self.culprits.add((culprit.filename, culprit.lineno, label), duration)
        self._log(finding)

    def _sample(self, monitor: LoopMonitor) -> Sample | None:
        start = monitor.cb_start
        sample = sample_thread(monitor.thread_id, monitor.depth)
        if sample is not None and monitor.precise:
            same = start and monitor.cb_start == start
            sample.key = (start,) if same else None
            sample.since = start if same else None
        return sample

    def _loop_gone(self, key: int, monitor: LoopMonitor) -> None:
        # Runs inside GC: no lock, list.append is atomic. The watchdog folds it at its next
        # look (at most IDLE_POLL_S away), as it does a closed loop's.
        self._dead.append((key, monitor))

    def _fold_dead(self) -> None:
        while self._dead:
            key, monitor = self._dead.pop()
            with self._lock:
                if self._monitors.get(key) is not monitor:
                    continue  # already folded (ids are reused: compare the monitor itself)
                del self._monitors[key]
                beat = self._beats.pop(key, None)
                self._retired_lag.merge(monitor.lag)
            if beat is not None:
                beat.stopped = True
            monitor.close()

    # ---------------------------------------------------------------- outputs (BlockSink)

    def detected(
        self, monitor: LoopMonitor, episode: Episode, now: float, sample: Sample | None
    ) -> None:
        """A block was found: look up its task and request, record it (ongoing), and add it to
        the current span now, while that span is surely still open."""
        info = episode.info = self._lookup(monitor, episode, sample)
        info.started_at = time.time() - (self.clock() - episode.since)
        finding = episode.finding = self._finding(monitor, episode, ongoing=True)
        self.findings.add(finding)
        span = info.span
        if span is not None and span.is_recording():
            where = finding.culprit
            attributes: dict[str, Any] = {
                n.BLOCK_DURATION: finding.duration_s,
                n.BLOCK_ONGOING: not episode.exact,
            }
            if where is not None:
                attributes.update(
                    {n.CODE_FILE: where.filename, n.CODE_LINE: where.lineno,
                     n.CODE_FUNCTION: info.label or where.function}
                )
            span.add_event(
                n.BLOCKED_EVENT, attributes, timestamp=int(info.started_at * 1e9)
            )

    def still_blocked(self, monitor: LoopMonitor, episode: Episode, now: float) -> None:
        """A block has held its loop for LONG_BLOCK_S: say so now rather than when it ends."""
        episode.logged = True
        self._log(self._finding(monitor, episode, ongoing=True))

    def ended(self, monitor: LoopMonitor, episode: Episode) -> None:
        """The loop came back: final finding, metrics, span event, log line."""
        if episode.info is None:
            self.detected(monitor, episode, episode.end, None)
        final = self._finding(monitor, episode, ongoing=False)
        if episode.finding is not None:
            self.findings.replace(episode.finding, final)
        else:
            self.findings.add(final)
        episode.finding = final
        monitor.reported_until = max(monitor.reported_until, episode.end)
        if final.culprit is not None:
            where = final.culprit
            path, line, function = where.filename, where.lineno, episode.info.label
        else:
            path, line, function = n.OVERFLOW, 0, n.OVERFLOW
        self.culprits.add((path, line, function), final.duration_s)
        if not episode.logged:
            episode.logged = True
            self._log(final)

    def starved(self, monitor: LoopMonitor, late_s: float) -> None:
        """The loop was idle in its selector yet ``late_s`` late: not a block (no finding,
        no culprit); one rate-limited line says what it is."""
        held = self.limiter.allow()
        if held is None:
            return
        more = f", {held} similar lines held back" if held else ""
        logger.warning(
            "asyncwatch: event loop in thread %r was idle in its selector yet ran %.3f s "
            "late: the process is short of CPU (not a blocked loop%s)",
            monitor.thread_name, late_s, more,
        )

    def _lookup(self, monitor: LoopMonitor, episode: Episode, sample: Sample | None) -> _Info:
        info = _Info()
        handle = episode.handle
        if handle is None and sample is not None:
            handle = handle_in(sample.chain)
        task: Any = None
        loop = monitor.loop()
        if loop is not None and sample is not None:
            task = asyncio.current_task(loop)
        if task is None and handle is not None:
            task = task_of(handle)
        if task is not None:
            info.task = task.get_name()
            info.coroutine = coroutine_key(task.get_coro())
            ctx = task_context(task)
        else:
            ctx = getattr(handle, "_context", None)
        chain = sample.chain[sample.depth:] if sample is not None else None
        if handle is not None and finished(handle, chain):
            # The callback had returned: the loop was in its tail (see ``_finding``).
            site = info.freed_site = callback_site(handle)
            if task is not None and task is task_of(handle):
                info.freed = f"task {info.task!r} running {info.coroutine}"
            elif task is None and site is not None:
                (_, _, qualname), module = site
                info.freed = f"callback {module}.{qualname}" if module else f"callback {qualname}"
        span = info.span = span_in(ctx)
        info.route = route_in(ctx, span)
        if span is not None:
            span_context = span.get_span_context()
            info.trace_id = f"{span_context.trace_id:032x}"
            info.span_id = f"{span_context.span_id:016x}"
        return info

    def _finding(self, monitor: LoopMonitor, episode: Episode, *, ongoing: bool) -> BlockedLoop:
        info = episode.info
        culprit_frame = None
        stack: tuple[Any, ...] = ()
        culprit = episode.culprit()
        site = None
        if culprit is not None:
            where, module, raw_stack = culprit
            site = (where, module)
            stack = tuple(to_frame(entry) for entry in raw_stack)
        elif info.freed is not None and episode.internal:
            site = info.freed_site
        elif episode.handle is not None:
            site = callback_site(episode.handle)
        if site is not None:
            culprit_frame = to_frame(site[0])
            info.label = function_name(site[1], site[0][2])
        duration = episode.duration
        collected = self.gc.during(episode.since, episode.since + duration)
        cause = "code"
        where_text = str(culprit_frame) if culprit_frame is not None else "an unknown line"
        summary = f"event loop blocked for {duration:.3f} s at {where_text}"
        if culprit is None and episode.internal:
            # Sampled, but only ever in asyncio's own frames: no line of the app ran. What
            # holds the loop then is C code run from asyncio: freeing the objects a callback or
            # task let go as it returned (a large parsed document), or a garbage collection.
            after = f" after {info.freed} returned" if info.freed is not None else ""
            step = f"after {culprit_frame}" if culprit_frame is not None else "between callbacks"
            if collected is not None and collected[0] >= duration / 2:
                cause = "garbage_collection"
                summary = (
                    f"event loop blocked for {duration:.3f} s by a garbage collection "
                    f"(generation {collected[1]}, {collected[0]:.3f} s){after}, in no line of "
                    "the app"
                )
            elif info.freed is not None:
                cause = "deallocation"
                summary = (
                    f"event loop blocked for {duration:.3f} s by objects being freed{after} "
                    "(deallocation of what it let go, in no line of the app)"
                )
            else:
                cause = "unknown"
                summary = (
                    f"event loop blocked for {duration:.3f} s {step}, in no line of the app: "
                    "asyncio's own code, or C code run from it (objects being freed, a garbage "
                    "collection)"
                )
        elif collected is not None and collected[0] >= duration / 2:
            # The line was running when the collector started: the heap, not the line,
            # held the loop (any allocation there could have set it off).
            cause = "garbage_collection"
            summary = (
                f"event loop blocked for {duration:.3f} s by a garbage collection "
                f"(generation {collected[1]}, {collected[0]:.3f} s) that started at {where_text}"
            )
        elif collected is not None and collected[0] >= duration / 4:
            summary += (
                f" (a garbage collection, generation {collected[1]}, took {collected[0]:.3f} s "
                "of it)"
            )
        if episode.gil and cause == "code":
            summary += (
                " (in a call that held the GIL, so no other thread could look meanwhile: "
                "named the moment it returned)"
            )
        if ongoing:
            summary += " (still blocked)"
        return BlockedLoop(
            started_at=info.started_at,
            summary=summary,
            duration_s=duration,
            culprit=culprit_frame,
            stack=stack,
            task=info.task,
            coroutine=info.coroutine,
            route=info.route,
            trace_id=info.trace_id,
            span_id=info.span_id,
            thread=monitor.thread_name,
            ongoing=ongoing,
            samples=episode.samples,
            exact=episode.exact,
            cause=cause,
        )

    def _log(self, finding: BlockedLoop) -> None:
        repeats = self.repeats.allow(finding.site(), finding.duration_s)
        if repeats is None:
            return  # the same line again, logged a moment ago: counted, said in its next line
        held = self.limiter.allow()
        if held is None:
            return
        parts = []
        seen = self.findings.count_of(finding)
        if seen > 1:
            text = f"seen {seen} times here"
            if repeats[0]:
                text += (
                    f", {repeats[0]} not logged since the last line (worst {repeats[1]:.3f} s)"
                )
            parts.append(text)
        if finding.task is not None:
            parts.append(f"task {finding.task!r} running {finding.coroutine}")
        if finding.route:
            parts.append(f"route {finding.route}")
        parts.append(f"thread {finding.thread!r}")
        if held:
            parts.append(f"{held} similar lines held back")
        logger.warning("asyncwatch: %s (%s)", finding.summary, ", ".join(parts))

    # ---------------------------------------------------------------- metrics

    def points(self) -> Iterable[Point]:
        """``asyncwatch.loop.lag`` over every loop, and the per-culprit block metrics."""
        self._fold_dead()
        with self._lock:
            lag = self._retired_lag.copy()
            monitors = list(self._monitors.values())
        for monitor in monitors:
            lag.merge(monitor.lag.copy())
        if lag.total or monitors:
            yield n.LOOP_LAG, {}, hist_value(lag), self.started_ns
        yield from self.culprits.points()
