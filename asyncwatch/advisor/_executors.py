"""Executor probe: how calls through ``loop.run_in_executor`` / ``asyncio.to_thread`` fare.

While installed, ``run_in_executor`` of ``asyncio.BaseEventLoop`` (and ``uvloop.Loop``) is
replaced by a wrapper; ``asyncio.to_thread`` goes through it too. Per executor it keeps a ring
of the most recent calls:

* thread pools (``ThreadPoolExecutor`` and subclasses): the function is wrapped in a small
  callable that, in the worker thread, reads ``perf_counter`` and ``thread_time`` before and
  after the call. So each call gives its queue wait (submitted -> started), run time
  (started -> ended) and CPU time (``thread_time``: this thread only). The result, exception
  and context of the call are the original's; the wrapper adds four clock reads and one
  ``deque.append`` (atomic) per call.
* any other executor (process pools, custom ones): nothing is wrapped (the function may have
  to be pickled); the loop side records submitted -> done on the returned future, and the CPU
  time of a process pool's workers is read from psutil by the advisor's sampler.

The ring is bounded (``RING`` calls per executor) and so is the number of executors measured
(``max_executors``; later ones are counted as unmeasured). The stats object is stored on the
executor under ``_asyncwatch_exec`` (inert once uninstalled). ``uninstall()`` puts back each
``run_in_executor`` that is still ours.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .._core.aio import Patch, loop_classes
from .._core.faults import Faults

RING = 2048
ATTR = "_asyncwatch_exec"

clock = time.perf_counter
thread_clock = time.thread_time


class ExecutorStats:
    """What was seen of one executor. ``calls`` rows: (submitted, started, ended, cpu_s) for
    thread pools (started/cpu are None for other executors)."""

    def __init__(self, probe: ExecutorProbe, executor: Any, label: str, default: bool) -> None:
        self.probe = probe
        self.label = label
        self.default = default
        self.threads = isinstance(executor, concurrent.futures.ThreadPoolExecutor)
        self.kind = type(executor).__name__
        self.calls: deque[tuple[float, float | None, float, float | None]] = deque(maxlen=RING)
        self.submitted = 0
        self.started = 0  # thread pools: calls a worker started
        self.ended = 0
        self.wait_s = 0.0  # thread pools: seconds calls waited for a worker, in all
        self.lock = threading.Lock()  # the counters above move in the workers' threads
        self._ref = _weak(executor)
        self.first_seen = clock()
        self.workers = _max_workers(executor)

    @property
    def executor(self) -> Any:
        """The executor, if it is still alive."""
        return self._ref() if self._ref is not None else None

    def max_workers(self) -> int | None:
        """The executor's ``max_workers`` (as last seen if it is gone; None if unknown)."""
        executor = self.executor
        if executor is not None:
            self.workers = _max_workers(executor)
        return self.workers

    def worker_tids(self) -> list[int]:
        """A thread pool's worker threads' native ids (empty for others)."""
        threads = getattr(self.executor, "_threads", None) if self.threads else None
        try:
            return [t.native_id for t in list(threads or ()) if t.native_id is not None]
        except (TypeError, AttributeError):
            return []

    def worker_pids(self) -> list[int]:
        """A process pool's worker processes (empty for others)."""
        procs = getattr(self.executor, "_processes", None)
        try:
            return [int(pid) for pid in list(procs or {})]
        except (TypeError, ValueError):
            return []

    def recent(self) -> list[tuple[float, float | None, float, float | None]]:
        """A copy of the ring (appends from worker threads are atomic; copying is too)."""
        for _ in range(3):
            try:
                return list(self.calls)
            except RuntimeError:  # mutated during the copy (free-threaded builds)
                continue
        return []


def _max_workers(executor: Any) -> int | None:
    value = getattr(executor, "_max_workers", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _weak(obj: Any) -> Any:
    import weakref

    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


class _TimedCall:
    """The callable a thread pool runs instead of ``func``: times it in the worker."""

    __slots__ = ("args", "func", "stats", "submitted")

    def __init__(self, stats: ExecutorStats, func: Callable[..., Any], args: tuple[Any, ...]):
        self.stats = stats
        self.func = func
        self.args = args
        self.submitted = clock()

    def __call__(self) -> Any:
        started = clock()
        cpu = thread_clock()
        stats = self.stats
        with stats.lock:
            stats.started += 1
            stats.wait_s += started - self.submitted
        try:
            return self.func(*self.args)
        finally:
            stats.calls.append((self.submitted, started, clock(), thread_clock() - cpu))
            with stats.lock:
                stats.ended += 1

    def __repr__(self) -> str:
        return repr(self.func)


class ExecutorProbe:
    """Installs the ``run_in_executor`` wrapper; see the module docstring."""

    def __init__(self, faults: Faults, max_executors: int = 64) -> None:
        self.faults = faults
        self.max_executors = max_executors
        self.active = False
        self.unmeasured = 0
        self._patches: list[Patch] = []
        self._stats: list[ExecutorStats] = []
        self._lock = threading.Lock()

    def executors(self) -> list[ExecutorStats]:
        """Every executor measured, alive or not (bounded)."""
        with self._lock:
            return list(self._stats)

    def reset(self) -> None:
        """Forget everything (after fork)."""
        self._lock = threading.Lock()
        self._stats = []
        self.unmeasured = 0

    # ------------------------------------------------------------------ install

    def install(self) -> None:
        """Patch ``run_in_executor`` on the loop classes. Idempotent."""
        if self._patches:
            return
        self.active = True
        for cls in loop_classes():
            self.patch_loop_class(cls)

    def patch_loop_class(self, cls: type) -> None:
        """Patch ``run_in_executor`` on one more loop class (uvloop's, once it is imported)."""
        if not self.active or any(patch.cls is cls for patch in self._patches):
            return
        original = getattr(cls, "run_in_executor", None)
        if original is not None:
            self._patches.append(Patch(cls, "run_in_executor", self._wrapper(original)))

    def uninstall(self) -> None:
        """Put back every ``run_in_executor`` still ours. Idempotent."""
        self.active = False
        patches, self._patches = self._patches, []
        for patch in reversed(patches):
            patch.undo()

    def _wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        probe = self

        def run_in_executor(
            loop: asyncio.AbstractEventLoop, executor: Any, func: Any, *args: Any) -> Any:
            if not probe.active:
                return original(loop, executor, func, *args)
            try:
                target = executor
                if target is None:
                    target = getattr(loop, "_default_executor", None)
                stats = None if target is None else getattr(target, ATTR, None)
                if stats is None or stats.probe is not probe:
                    stats = probe._register(loop, target)
            except Exception as exc:
                probe.fault(exc)
                stats = None
            if stats is None:
                return original(loop, executor, func, *args)
            if stats.threads:
                call = _TimedCall(stats, func, args)
                stats.submitted += 1
                return original(loop, executor, call)
            future = original(loop, executor, func, *args)
            try:
                submitted = clock()
                ring = stats.calls
                stats.submitted += 1

                def done(_: Any) -> None:
                    ring.append((submitted, None, clock(), None))
                    stats.ended += 1  # in the loop's thread

                future.add_done_callback(done)
            except Exception as exc:
                probe.fault(exc)
            return future

        run_in_executor.__qualname__ = "BaseEventLoop.run_in_executor"
        run_in_executor.__doc__ = getattr(original, "__doc__", None)
        run_in_executor.__wrapped__ = original  # type: ignore[attr-defined]
        return run_in_executor

    def _register(self, loop: asyncio.AbstractEventLoop, executor: Any) -> ExecutorStats | None:
        """First call through ``executor`` (None: the loop's default, not created yet)."""
        default = executor is None or executor is getattr(loop, "_default_executor", None)
        if executor is None:
            # asyncio creates its default executor inside run_in_executor; make it now the
            # same way (only if the loop would), so the calls can be timed from the first one.
            if getattr(loop, "_executor_shutdown_called", False) or loop.is_closed():
                return None
            if not hasattr(loop, "_default_executor"):
                return None  # a loop that keeps its default executor private (uvloop)
            executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
            loop._default_executor = executor  # as asyncio's own run_in_executor does
        with self._lock:
            stats = getattr(executor, ATTR, None)
            if stats is not None and stats.probe is self:
                return stats  # type: ignore[no-any-return]
            if len(self._stats) >= self.max_executors:
                self._stats = [s for s in self._stats if s.executor is not None]
                if len(self._stats) >= self.max_executors:
                    self.unmeasured += 1
                    return None
            label = _label(executor, default)
            taken = sum(1 for s in self._stats if s.label == label or
                        s.label.startswith(label + " #"))
            if taken:
                label = f"{label} #{taken + 1}"
            stats = ExecutorStats(self, executor, label, default)
            self._stats.append(stats)
        try:
            setattr(executor, ATTR, stats)
        except AttributeError:  # no instance attributes (__slots__): left unmeasured
            with self._lock:
                self._stats.remove(stats)
                self.unmeasured += 1
            return None
        return stats

    def fault(self, exc: BaseException) -> None:
        """Internal error in the wrapper: counted; the call goes on unmeasured."""
        if self.faults.report("executors", exc):
            self.active = False


def _label(executor: Any, default: bool) -> str:
    kind = type(executor).__name__
    prefix = getattr(executor, "_thread_name_prefix", "") or ""
    if default:
        return f"{kind} (the loop's default executor)"
    if prefix and not prefix.startswith("ThreadPoolExecutor-"):
        return f"{kind} '{prefix}'"
    site = _first_app_frame()
    return f"{kind} first used at {site}" if site else kind


def _first_app_frame() -> str | None:
    import os

    skip = (os.path.dirname(asyncio.__file__), os.path.dirname(__file__))
    frame: Any = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(skip):
            name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
            return f"{filename}:{frame.f_lineno} in {name}"
        frame = frame.f_back
    return None
