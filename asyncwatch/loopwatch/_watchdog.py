"""Loop lag and blocked-loop detection: ``LoopWatch``, the component the ``Watch`` wires in,
and its watchdog thread.

* Every instrumented loop gets a heartbeat (``_heartbeat``: a ``call_later`` chain in an
  empty context) that feeds its ``LoopMonitor`` (``_blocked``) and the
  ``asyncwatch.loop.lag`` histogram.
* One watchdog thread per process (``asyncwatch-watchdog``) looks at every loop when its
  heartbeat falls due and, while one is overdue, samples that loop's thread
  (``sys._current_frames()``) until it comes back. It sleeps until the next heartbeat is due,
  so an idle process costs about one wake-up per heartbeat interval. It also reads the
  faulthandler dumps of GIL-holding calls (``_gilwatch``) once their loop is back.
* What a block becomes (finding, culprit metrics, span event, log line) is the
  ``BlockReporter``'s job (``_reporter``); the metric points are in ``_points``.
* ``stop()`` ends the heartbeats, the wrapper of precise mode and the thread (joined).
  In a forked child, ``after_fork()`` starts from zero and starts the child's own watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable

from .._core import names as n
from .._core.config import Config
from .._core.faults import Faults
from .._core.findings import FindingsLog
from .._core.measure import Histogram
from .._core.points import Point
from .._core.stacks import MACHINERY, Sample, classify, own_switches, sample_thread
from ._blocked import IDLE_POLL_S, LoopMonitor
from ._gctimes import GcTimes
from ._gilwatch import GilWatch
from ._heartbeat import Heartbeat
from ._points import CulpritCounts, hist_value
from ._precise import PreciseTimer
from ._reporter import BlockReporter

logger = logging.getLogger("asyncwatch")

THREAD_NAME = "asyncwatch-watchdog"
GIL_WAIT_S = 30.0  # a faulthandler dump whose loop never comes back is dropped after this


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


class LoopWatch:
    """The component ``Watch`` wires in: heartbeats, watchdog thread, metric points."""

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
        self.faults = faults
        self.clock = clock
        self.active = False
        self._lock = threading.Lock()
        self._monitors: dict[int, LoopMonitor] = {}  # id(loop) -> monitor; read by precise mode
        self._beats: dict[int, Heartbeat] = {}
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
        self.culprits = CulpritCounts(config.max_culprits)
        self.report = BlockReporter(findings, self.culprits, self.gc, clock)
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

    def add_loop(self, loop: asyncio.AbstractEventLoop) -> None:
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
                sink=self.report,
                loop=weakref.ref(loop),
                precise=precise,
            )
            # With the GIL watch on, faulthandler's dump names such blocks (``_gil_blocks``).
            monitor.unseen = not self.gil_watch
            beat = Heartbeat(self, monitor, loop)
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
        self.report.after_fork()
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

    def monitor_of(self, loop: asyncio.AbstractEventLoop) -> LoopMonitor | None:
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
        switched = own_switches()
        while not self._stopping:
            try:
                wake = self.tick(switched)
            except Exception as exc:
                try:
                    if self.faults.report("watchdog", exc):
                        return
                except Exception:  # strict mode raised: record it and stop watching
                    logger.exception("asyncwatch: watchdog stopped by an internal error")
                    return
                wake = self.clock() + IDLE_POLL_S
            delay = max(0.001, wake - self.clock())
            switched = own_switches()
            self._wake.acquire(True, delay)  # returns early when kicked

    def tick(self, switched_since: int | None = None) -> float:
        """Look at every loop once; returns when the next look is due. ``switched_since``:
        this thread's ``own_switches()`` from before it waited (see ``LoopMonitor.check``)."""
        now = self.clock()
        wake = now + IDLE_POLL_S
        for key, monitor in list(self._monitors.items()):
            loop = monitor.loop()
            if loop is None or loop.is_closed():
                self._dead.append((key, monitor))
                continue
            wake = min(wake, monitor.check(now, loop.is_running(), self._sample, switched_since))
        self._fold_dead()
        if self.gil.active:
            self._gil_blocks(now)
            # Fires only if this thread cannot look again in time: a call holding the GIL.
            self.gil.arm(max(0.0, wake - now) + self.threshold_s)
        return wake

    def look_for_watchdog(self, switched_since: int | None) -> None:
        """From another asyncwatch thread the moment it has the GIL back after a wait (the
        advisor's sampler): look at any loop overdue by a threshold while the watchdog is
        held back, as the watchdog would (``LoopMonitor.look_for_watchdog``, which decides;
        a few comparisons per watched loop when nothing is overdue)."""
        if not self.active:
            return
        now = self.clock()
        for monitor in list(self._monitors.values()):
            loop = monitor.loop()
            if loop is None or loop.is_closed():
                continue
            monitor.look_for_watchdog(now, loop.is_running(), self._sample, switched_since)

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
                    self.report.gil_block(monitor, frames, since, beat_at - since)
            if waiting:
                keep.append((fired_at, threads))
        self._gil_pending = keep

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
