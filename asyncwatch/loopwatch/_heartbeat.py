"""The heartbeat: the ``call_later`` chain that runs on every watched loop, every
``interval_s``, in an empty context. Each beat tells the loop's ``LoopMonitor`` which thread
runs the loop, how many frames the loop itself stands on (skipped when sampling) and how late
the beat ran (``LoopMonitor.beat``), schedules the next beat, and wakes the watchdog thread
when a loop (re)starts. ``LoopWatch`` (``_watchdog``) starts and stops it.

It runs on the loop itself: keep it lean (no added calls or lookups);
``benchmarks/loop_watch.py`` measures it.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._blocked import LoopMonitor, thread_clock

if TYPE_CHECKING:
    from ._watchdog import LoopWatch


class Heartbeat:
    """The ``call_later`` chain on one loop (runs on the loop's thread).

    Its pending handle references the loop (every asyncio handle does), so the heartbeat
    keeps it only weakly: the loop owns its timer, never the other way round, and a loop the
    app lets go of is freed with its timer in it."""

    __slots__ = ("ctx", "finalizer", "handle", "loop_ref", "monitor", "owner", "stopped")

    def __init__(
        self, owner: LoopWatch, monitor: LoopMonitor, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.monitor = monitor
        self.loop_ref = weakref.ref(loop)
        self.ctx = contextvars.Context()  # never the app's context: nothing of it leaks in
        self.handle: Callable[[], Any] = _none  # weak reference to the pending handle
        self.stopped = False
        self.finalizer: Any = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
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
