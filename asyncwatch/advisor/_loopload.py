"""Is the event loop itself saturated? Busy time per loop, and CPU of its thread and process.

Nothing here runs on the loop's iterations: everything is read from the advisor's sampler
thread. (It used to wrap the selector's ``select`` with two clock reads per iteration, which
cost 15 % of a loop that runs one callback per iteration.)

* CPU of the loop's thread, and on Linux the time it spent runnable but waiting for a CPU
  (``/proc/self/task/<tid>/schedstat``; elsewhere ``pthread_getcpuclockid``, CPU only):
  computing, counted exactly. uvloop has no Python selector, so there the thread's CPU is the
  busy figure.
* Busy time (stdlib loops), sampled: about ten times a second (``PEEK_S``, jittered) the
  sampler thread peeks at the loop thread's stack (``sys._current_frames()``). The loop is
  idle when the frame called by its ``_run_once`` is the selector's ``select`` (however that
  is wrapped) and nothing is ready to run (no ready callback, no timer due); anything else is
  busy: a callback, the loop's own bookkeeping, a blocking call made from a callback, a wait
  for the GIL. A window's busy share is the share of busy peeks, but never less than the
  thread's CPU and run-queue wait over the window (exact, and a peek has to wait for the GIL:
  it tends to land where the loop lets go of it, entering ``select``, so peeks alone
  under-count a loop busy computing in stretches shorter than the 5 ms switch interval).
  Blocking calls release the GIL, so they are peeked at once: that is what the peeks add
  to the CPU figure.
* Process CPU (psutil) and spare cores on the machine: whether another process would get a
  core of its own.
* Loop lag: ``lag_counts_of(loop)`` returns a copy of the blocked-loop detector's
  cumulative lag histogram for the loop (its heartbeat, ``asyncwatch.loop.lag``), sparse:
  only the buckets hit; each sample keeps its copy, so a window's p99 is read from the
  difference of two copies. No second heartbeat.

``sample()`` is called by the advisor's sampler thread about once a second; each loop keeps a
ring of its last ``keep`` samples (wall, peeks, thread CPU, the lag buckets hit), as
many as the advisor's window needs (at most ``SAMPLES``), so windows cost nothing extra.
The loop's thread runs one callback per loop, once, to say which thread it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any

from .._core.faults import Faults
from .._core.measure import FINE_BOUNDS, Histogram
from .._core.stacks import current_frames

clock = time.perf_counter
SAMPLES = 600
PEEK_S = 0.1
"""Mean time between two peeks at a loop thread's stack (each one 0.5-1.5 times this)."""
PEEK_DEPTH = 8
"""Frames looked at from the innermost one down to the loop's ``_run_once`` (a selector
wrapped a few times over still fits; a callback's stack need not be walked to its end)."""
_BASE_RUN_ONCE: CodeType | None = getattr(
    getattr(asyncio.base_events.BaseEventLoop, "_run_once", None), "__code__", None)


@dataclass(frozen=True)
class LoadSample:
    """One sampler tick for one loop (cumulative figures)."""

    at: float
    running: bool
    peeks: int  # stack peeks taken while the loop ran (cumulative)
    idle_peeks: int  # of which found the loop waiting in its selector
    thread_cpu_s: float  # loop thread CPU (cumulative); -1 when unknown
    runq_s: float = -1.0  # loop thread runnable but not running (cumulative); -1 when unknown
    # loop-lag histogram (cumulative): bucket index -> count, only the buckets hit
    lag_counts: dict[int, int] | None = None


class _LoopMeter:
    """Counters of one loop, read from the sampler thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, keep: int = SAMPLES) -> None:
        self.loop_ref = weakref.ref(loop)
        self.thread_id: int | None = None
        self.cpu_clock: int | None = None
        self.schedstat: str | None = None  # Linux: the thread's scheduler figures
        self.run_once: frozenset[CodeType] = frozenset()  # empty: busy is not peeked (uvloop)
        self.peeks = 0
        self.idle_peeks = 0
        self.samples: deque[LoadSample] = deque(maxlen=keep)
        self.label = "event loop"

    def arm(self) -> None:
        """On the loop's thread, once: note the thread and how to tell the loop is idle."""
        self.thread_id = threading.get_ident()
        self.label = f"event loop in thread {threading.current_thread().name!r} (pid {os.getpid()})"
        getter = getattr(time, "pthread_getcpuclockid", None)
        if getter is not None:
            try:
                self.cpu_clock = getter(self.thread_id)
            except OSError:
                self.cpu_clock = None
        # Only the path: reading it here would be file I/O on the loop's thread, which a
        # blocking-call detector in the app (blockbuster, aiodebug) rightly flags. The
        # sampler thread reads it, and drops it at the first failure.
        if sys.platform.startswith("linux"):
            self.schedstat = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        loop = self.loop_ref()
        if getattr(loop, "_selector", None) is None or not hasattr(loop, "_ready"):
            return  # uvloop or another loop without a Python selector: CPU only
        codes = {_BASE_RUN_ONCE, getattr(getattr(type(loop), "_run_once", None), "__code__", None)}
        self.run_once = frozenset(c for c in codes if c is not None)

    def peek(self, frames: dict[int, FrameType]) -> bool:
        """From the sampler thread: is the loop waiting in its selector right now? False: the
        loop does not run (nothing counted)."""
        if not self.run_once or self.thread_id is None:
            return False
        loop = self.loop_ref()
        if loop is None or not loop.is_running():
            return False
        frame = frames.get(self.thread_id)
        callee = None
        idle = False
        for _ in range(PEEK_DEPTH):
            if frame is None:
                break
            if frame.f_code in self.run_once:
                idle = callee is not None and callee.f_code.co_name == "select" and _nothing_due(
                    loop)
                break
            callee, frame = frame, frame.f_back
        self.peeks += 1
        self.idle_peeks += idle
        return True

    def sample(self, now: float, lag_counts_of: Callable[[Any], Any] | None = None) -> None:
        loop = self.loop_ref()
        running = bool(loop is not None and not loop.is_closed() and loop.is_running())
        cpu = runq = -1.0
        read = _schedstat(self.schedstat) if self.schedstat is not None else None
        if read is not None:
            cpu, runq = read
        else:
            self.schedstat = None  # unreadable (not Linux, or the thread is gone): CPU clock
        if read is None and self.cpu_clock is not None:
            try:
                cpu = time.clock_gettime(self.cpu_clock)
            except OSError:  # the thread is gone
                self.cpu_clock = None
        lag = None
        if lag_counts_of is not None and loop is not None:
            lag = lag_counts_of(loop)  # a copy, kept as is
        self.samples.append(LoadSample(now, running, self.peeks, self.idle_peeks, cpu, runq, lag))


def _nothing_due(loop: Any) -> bool:  # a stdlib loop's private queues, or anything
    """The loop has no callback ready and no timer due: its ``select`` waits (a ``select``
    with work ready only polls, with a timeout of 0, and counts as busy)."""
    try:
        if loop._ready:
            return False
        scheduled = loop._scheduled
        return not scheduled or scheduled[0]._when > loop.time()
    except (AttributeError, IndexError):  # changed under us: the loop is at work
        return False


def _schedstat(path: str | None) -> tuple[float, float] | None:
    """(CPU seconds, seconds runnable waiting for a CPU) of a thread, from Linux's schedstat."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            fields = f.read().split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class LoopWindow:
    """A loop's load over a window."""

    label: str
    seconds: float  # running time covered
    busy: float | None  # share of running time outside select (None: not measurable)
    cpu: float | None  # loop thread CPU / running time
    lag_p99_s: float | None
    peeks: int = 0  # stack peeks the busy share comes from


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
        self._psutil = None  # psutil loads at the first sample: a short program never needs it

    def _load_psutil(self) -> None:
        try:
            import psutil

            self._psutil = psutil.Process()
            psutil.cpu_percent(interval=None)  # prime the system-wide figure
            self.cores = psutil.cpu_count() or self.cores
        except Exception as exc:
            self._psutil = False  # not again
            self.faults.report("loopload", exc)

    def stop(self) -> None:
        """Stop measuring and forget every loop (nothing of ours is left on them)."""
        self.active = False
        with self._lock:
            self._meters = weakref.WeakKeyDictionary()

    def reset(self) -> None:
        """After fork: forget the parent's loops and samples."""
        self._lock = threading.Lock()
        self._meters = weakref.WeakKeyDictionary()
        self.process.clear()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
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

    def peek(self) -> bool:
        """From the sampler thread: one look at the stack of every stdlib loop's thread.
        False when no such loop runs (nothing to look at: the sampler then waits for its
        next sample to look again)."""
        with self._lock:
            meters = [m for m in self._meters.values() if m.run_once]
        if not meters:
            return False
        me = threading.get_ident()
        looked = False
        frames = current_frames()
        try:
            for meter in meters:
                if meter.thread_id == me:
                    continue  # a loop's own thread (advise() from a callback) sees itself busy
                try:
                    looked = meter.peek(frames) or looked
                except Exception as exc:
                    self.faults.report("loopload", exc)
        finally:
            frames.clear()  # every thread's frames: hold none of them past this look
        return looked

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
        primed = self._psutil is not None
        if not primed:
            self._load_psutil()
        proc = self._psutil
        if proc:
            try:
                times = proc.cpu_times()
                import psutil

                # the machine's busy share needs a previous reading: none at the first sample
                system = psutil.cpu_percent(interval=None) if primed else None
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
            running = cpu = runq = 0.0
            peeks = idle = 0
            cpu_known = runq_known = True
            for a, b in itertools.pairwise(chosen):
                if not (a.running and b.running):
                    continue
                running += b.at - a.at
                peeks += b.peeks - a.peeks
                idle += b.idle_peeks - a.idle_peeks
                if a.thread_cpu_s < 0 or b.thread_cpu_s < 0:
                    cpu_known = False
                else:
                    cpu += b.thread_cpu_s - a.thread_cpu_s
                if a.runq_s < 0 or b.runq_s < 0:
                    runq_known = False
                else:
                    runq += b.runq_s - a.runq_s
            if running <= 0:
                continue
            busy = None
            if peeks > 0:
                # Peeked share, but never under what the thread spent computing or waiting
                # for a CPU (counted exactly; see the module docstring).
                floor = (cpu if cpu_known else 0.0) + (runq if runq_known else 0.0)
                busy = max(1 - idle / peeks, floor / running)
            lag = _lag_p99(chosen[0].lag_counts, chosen[-1].lag_counts)
            out.append(
                LoopWindow(
                    meter.label,
                    running,
                    max(0.0, min(1.0, busy)) if busy is not None else None,
                    max(0.0, min(1.0, cpu / running)) if cpu_known else None,
                    lag,
                    peeks,
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


def _lag_p99(first: dict[int, int] | None, last: dict[int, int] | None) -> float | None:
    """p99 loop lag between two cumulative snapshots of the lag histogram (None: no beats)."""
    if first is None or last is None:
        return None
    window = Histogram()
    for i, count in last.items():
        grew = count - first.get(i, 0)
        if grew > 0:
            window.bins[i] = grew
            window.total += grew
    window.max = FINE_BOUNDS[-1]  # not known within the window: read the top bucket as its bound
    return window.quantile(0.99)
