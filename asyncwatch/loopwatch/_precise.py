"""Precise mode: time every asyncio callback by wrapping ``asyncio.events.Handle._run``.

Every stdlib event loop runs every callback (task steps, ``call_soon``/``call_later``
callbacks, done-callbacks, I/O callbacks) through ``Handle._run``, which is pure Python, so
one class attribute sees them all. Per callback the wrapper looks up the loop's monitor, reads
the clock twice and writes the callback's start time twice (set, then cleared); a callback
that took ``threshold_s`` or longer is handed to ``LoopMonitor.slow_callback`` (after it
returned, before the next one starts), which dates the block exactly and closes the
watchdog's sampled episode, or reports a block the watchdog did not see, naming the callback.

uvloop's ``Handle`` is a Cython class whose ``_run`` is a C method: nothing to wrap. uvloop
loops keep the heartbeat and the watchdog (which needs no Python hook) but get no precise
timing; this is logged once when precise mode meets a uvloop loop.

``uninstall()`` puts the original back only if the wrapper is still the attribute in place.
"""

from __future__ import annotations

import asyncio.events
from collections.abc import Callable
from typing import Any

from .._core.stacks import CALLBACK_CODES
from ._blocked import LoopMonitor

Handle = asyncio.events.Handle
ORIGINAL_RUN_CODE = Handle._run.__code__  # the stdlib's, whatever is patched over it later


def make_run(
    original: Callable[[Any], None],
    monitors: dict[int, LoopMonitor],
    clock: Callable[[], float],
    threshold_s: float,
    fault: Callable[[str, BaseException], None],
) -> Callable[[Any], None]:
    """The wrapper installed as ``Handle._run``."""
    get = monitors.get
    identity = id

    def _run(self: Any) -> None:
        monitor = get(identity(self._loop))
        if monitor is None:
            original(self)
            return
        start = monitor.cb_start = clock()
        try:
            original(self)
        finally:
            elapsed = clock() - start
            if elapsed >= threshold_s:
                try:
                    monitor.slow_callback(self, start, elapsed)
                except Exception as exc:  # never into the app's loop
                    fault("precise_callbacks", exc)
            monitor.cb_start = 0.0

    CALLBACK_CODES.add(_run.__code__)  # the watchdog tells callbacks from the selector by it
    _run.__qualname__ = "Handle._run"
    _run.__doc__ = original.__doc__
    _run.__wrapped__ = original  # type: ignore[attr-defined]
    return _run


class PreciseTimer:
    """Installs and removes the ``Handle._run`` wrapper."""

    def __init__(
        self,
        monitors: dict[int, LoopMonitor],
        clock: Callable[[], float],
        threshold_s: float,
        fault: Callable[[str, BaseException], None],
    ) -> None:
        self.monitors = monitors
        self.clock = clock
        self.threshold_s = threshold_s
        self.fault = fault
        self._saved: Any = None
        self._ours: Any = None

    @property
    def installed(self) -> bool:
        """Whether the wrapper is in place."""
        return self._ours is not None and Handle.__dict__.get("_run") is self._ours

    def install(self) -> None:
        """Wrap ``Handle._run``. Idempotent."""
        if self._ours is not None:
            return
        self._saved = Handle.__dict__["_run"]
        self._ours = make_run(
            self._saved, self.monitors, self.clock, self.threshold_s, self.fault
        )
        Handle._run = self._ours  # type: ignore[method-assign]

    def uninstall(self) -> None:
        """Put the original back, unless someone patched over the wrapper since."""
        if self._ours is None:
            return
        if Handle.__dict__.get("_run") is self._ours:
            Handle._run = self._saved  # type: ignore[method-assign]
        self._ours = self._saved = None
