"""Is the event loop itself saturated? Busy time per loop, and CPU of its thread and process.

* Busy time (stdlib loops): the loop's selector gets an instance-level ``select`` wrapper that
  adds up the time spent waiting in it (two clock reads per loop iteration, none per
  callback). Busy = running time outside ``select``: callbacks, task steps, and blocking calls
  made from them. The wrapper is removed at uninstall (only if still in place).
* CPU of the loop's thread (Linux: ``pthread_getcpuclockid``), read by the sampler: tells
  computing apart from blocking. uvloop has no Python selector, so there the thread's CPU is
  the busy figure.
* Process CPU (psutil) and spare cores on the machine: whether another process would get a
  core of its own.
* Loop lag: ``lag_counts_of(loop)`` returns the blocked-loop detector's cumulative lag
  histogram counts for the loop (its heartbeat, ``asyncwatch.loop.lag``); each sample keeps a
  copy, so a window's p99 is read from the difference of two copies. No second heartbeat.

``sample()`` is called by the advisor's sampler thread about once a second; each loop keeps a
ring of its last ``keep`` samples (wall, busy, thread CPU, lag counts: about 1 KiB each), as
many as the advisor's window needs (at most ``SAMPLES``), so windows cost nothing extra.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._faults import Faults
from ._recorder import FINE_BOUNDS, Histogram

clock = time.perf_counter
SAMPLES = 600


@dataclass(frozen=True)
class LoadSample:
    """One sampler tick for one loop (cumulative figures)."""

    at: float
    running: bool
    idle_s: float  # time spent waiting in select (cumulative); None-like -1 when unknown
    thread_cpu_s: float  # loop thread CPU (cumulative); -1 when unknown
    lag_counts: tuple[int, ...] | None = None  # loop-lag histogram counts (cumulative)


class _LoopMeter:
    """Counters of one loop; the select wrapper runs on the loop's thread."""

    def __init__(self, loop: Any, keep: int = SAMPLES) -> None:
        self.loop_ref = weakref.ref(loop)
        self.idle_s = 0.0
        self.entered = 0.0  # perf_counter at entry of the select in progress (0: none)
        # Both weakly: the selector references the loop (its keys hold the loop's handles),
        # and the wrapper references the selector. The selector owns the wrapper, not us.
        self.selector: Callable[[], Any] = _none
        self.wrapper: Callable[[], Any] = _none
        self.armed = False  # the wrapper was installed: idle time is measured
        self.thread_id: int | None = None
        self.cpu_clock: int | None = None
        self.samples: deque[LoadSample] = deque(maxlen=keep)
        self.label = "event loop"

    def arm(self) -> None:
        """On the loop's thread: note the thread, wrap the selector."""
        self.thread_id = threading.get_ident()
        self.label = f"event loop in thread {threading.current_thread().name!r} (pid {os.getpid()})"
        getter = getattr(time, "pthread_getcpuclockid", None)
        if getter is not None:
            try:
                self.cpu_clock = getter(self.thread_id)
            except OSError:
                self.cpu_clock = None
        loop = self.loop_ref()
        selector = getattr(loop, "_selector", None)
        original = getattr(selector, "select", None)
        if selector is None or original is None or "select" in getattr(selector, "__dict__", {}):
            return  # uvloop, or someone else's wrapper already there: CPU only
        meter = self

        def select(timeout: float | None = None) -> Any:
            meter.entered = began = clock()
            try:
                return original(timeout)
            finally:
                meter.entered = 0.0
                meter.idle_s += clock() - began

        try:
            selector.select = select
        except AttributeError:  # a selector with __slots__
            return
        self.selector, self.wrapper = weakref.ref(selector), weakref.ref(select)
        self.armed = True

    def disarm(self) -> None:
        selector, wrapper = self.selector(), self.wrapper()
        self.selector = self.wrapper = _none
        self.armed = False
        if wrapper is not None and selector is not None and vars(selector).get("select") is wrapper:
            del selector.select

    def sample(self, now: float, lag_counts_of: Callable[[Any], Any] | None = None) -> None:
        loop = self.loop_ref()
        running = bool(loop is not None and not loop.is_closed() and loop.is_running())
        idle = -1.0
        if self.armed:
            entered = self.entered
            idle = self.idle_s + (now - entered if entered else 0.0)
        cpu = -1.0
        if self.cpu_clock is not None:
            try:
                cpu = time.clock_gettime(self.cpu_clock)
            except OSError:  # the thread is gone
                self.cpu_clock = None
        lag = None
        if lag_counts_of is not None and loop is not None:
            counts = lag_counts_of(loop)
            lag = tuple(counts) if counts is not None else None
        self.samples.append(LoadSample(now, running, idle, cpu, lag))


def _none() -> None:
    return None


@dataclass(frozen=True)
class LoopWindow:
    """A loop's load over a window."""

    label: str
    seconds: float  # running time covered
    busy: float | None  # fraction of running time outside select (None: not measurable)
    cpu: float | None  # loop thread CPU / running time
    lag_p99_s: float | None


class LoopLoad:
    """Every instrumented loop's meter, plus process CPU samples."""

    def __init__(self, faults: Faults, lag_counts_of: Callable[[Any], Any] | None = None,
                 keep: int = SAMPLES):
        self.faults = faults
        self.keep = keep  # samples kept per loop (and of the process)
        self.lag_counts_of = lag_counts_of
        self.active = False
        self._meters: weakref.WeakKeyDictionary[Any, _LoopMeter] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.process: deque[tuple[float, float, float | None]] = deque(maxlen=keep)
        self._psutil: Any = None
        self.cores = os.cpu_count() or 1

    def start(self) -> None:
        """Start measuring (loops are added with ``attach``)."""
        self.active = True
        try:
            import psutil

            self._psutil = psutil.Process()
            psutil.cpu_percent(interval=None)  # prime the system-wide figure
            self.cores = psutil.cpu_count() or self.cores
        except Exception as exc:
            self.faults.report("loopload", exc)

    def stop(self) -> None:
        """Remove every selector wrapper still ours (from the loop's thread when it runs)."""
        self.active = False
        with self._lock:
            meters = list(self._meters.items())
            self._meters = weakref.WeakKeyDictionary()
        for loop, meter in meters:
            if meter.wrapper() is None:
                continue
            try:
                if loop.is_running() and meter.thread_id != threading.get_ident():
                    loop.call_soon_threadsafe(meter.disarm)
                else:
                    meter.disarm()
            except RuntimeError:  # closed meanwhile
                meter.disarm()

    def reset(self) -> None:
        """After fork: forget the parent's loops and samples."""
        self._lock = threading.Lock()
        self._meters = weakref.WeakKeyDictionary()
        self.process.clear()

    def attach(self, loop: Any) -> None:
        """Measure ``loop`` (armed from its own thread at its first iteration)."""
        if not self.active:
            return
        with self._lock:
            if loop in self._meters:
                return
            meter = self._meters[loop] = _LoopMeter(loop, self.keep)

        def arm() -> None:
            try:
                if self.active:
                    meter.arm()
            except Exception as exc:
                self.faults.report("loopload", exc)

        with contextlib.suppress(RuntimeError):  # a closed loop
            loop.call_soon(arm)

    def sample(self) -> None:
        """One sampler tick: every loop, and the process."""
        now = clock()
        with self._lock:
            meters = list(self._meters.values())
        for meter in meters:
            try:
                meter.sample(now, self.lag_counts_of)
            except Exception as exc:
                self.faults.report("loopload", exc)
        proc = self._psutil
        if proc is not None:
            try:
                times = proc.cpu_times()
                import psutil

                system = psutil.cpu_percent(interval=None)
                self.process.append((now, times.user + times.system, system))
            except Exception as exc:
                self.faults.report("loopload", exc)

    def windows(self, window_s: float) -> list[LoopWindow]:
        """Each loop's load over the last ``window_s`` seconds of samples."""
        with self._lock:
            items = list(self._meters.items())
        out = []
        for _loop, meter in items:
            samples = list(meter.samples)
            if len(samples) < 2:
                continue
            end = samples[-1].at
            chosen = [s for s in samples if s.at >= end - window_s]
            running = idle = cpu = 0.0
            idle_known = cpu_known = True
            for a, b in itertools.pairwise(chosen):
                if not (a.running and b.running):
                    continue
                dt = b.at - a.at
                running += dt
                if a.idle_s < 0 or b.idle_s < 0:
                    idle_known = False
                else:
                    idle += b.idle_s - a.idle_s
                if a.thread_cpu_s < 0 or b.thread_cpu_s < 0:
                    cpu_known = False
                else:
                    cpu += b.thread_cpu_s - a.thread_cpu_s
            if running <= 0:
                continue
            lag = _lag_p99(chosen[0].lag_counts, chosen[-1].lag_counts)
            out.append(
                LoopWindow(
                    meter.label,
                    running,
                    max(0.0, min(1.0, 1 - idle / running)) if idle_known else None,
                    max(0.0, min(1.0, cpu / running)) if cpu_known else None,
                    lag,
                )
            )
        return out

    def process_window(self, window_s: float) -> tuple[float, float | None] | None:
        """(process CPU in cores, machine busy % at the end) over the window, if sampled."""
        samples = list(self.process)
        if len(samples) < 2:
            return None
        end = samples[-1][0]
        chosen = [s for s in samples if s[0] >= end - window_s]
        if len(chosen) < 2 or chosen[-1][0] <= chosen[0][0]:
            return None
        cores_used = (chosen[-1][1] - chosen[0][1]) / (chosen[-1][0] - chosen[0][0])
        system = [s[2] for s in chosen[1:] if s[2] is not None]
        return cores_used, (sum(system) / len(system) if system else None)


def _lag_p99(first: tuple[int, ...] | None, last: tuple[int, ...] | None) -> float | None:
    """p99 loop lag between two cumulative snapshots of the lag histogram (None: no beats)."""
    if first is None or last is None or len(first) != len(last):
        return None
    window = Histogram()
    window.counts = [b - a for a, b in zip(first, last, strict=True)]
    window.total = sum(window.counts)
    window.max = FINE_BOUNDS[-1]  # not known within the window: read the top bucket as its bound
    return window.quantile(0.99)
