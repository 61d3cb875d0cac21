"""Helpers for the deadlock and stuck-task tests: asyncwatch on a manual clock (through
``asyncwatch.testing``), a loop that can be thrown away with
deadlocked tasks still in it, and cycle checks."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncwatch
from asyncwatch import testing
from asyncwatch.testing import ManualClock


def install(**settings: Any) -> tuple[asyncwatch.Watch, ManualClock]:
    """asyncwatch in strict mode, no exporter, no timed scans (tests scan by hand), the
    detector on a manual clock (``asyncwatch.testing``)."""
    settings.setdefault("deadlock_interval_s", 3600.0)
    settings.setdefault("stuck_task_after_s", 60.0)
    clock = ManualClock()
    return testing.install(clock=clock, **settings), clock


@contextmanager
def throwaway_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop closed without cancelling its tasks.

    Tasks that await each other cannot be cancelled at all (asyncio's ``Task.cancel``
    cancels what a task awaits, which cancels what that awaits... and recurses forever), so
    the deadlocked tasks are left to be destroyed with the loop, quietly.
    """
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)  # "destroyed but it is pending"
    try:
        yield loop
    finally:
        loop.close()
        gc.collect()


def is_rotation(found: tuple[str, ...], cycle: tuple[str, ...]) -> bool:
    """``found`` is ``cycle`` read from some starting point (cycle order kept)."""
    if len(found) != len(cycle):
        return False
    doubled = cycle + cycle
    return any(doubled[i : i + len(cycle)] == found for i in range(len(cycle)))


def line_of(fragment: str, path: str) -> int:
    """Line number of the first line of ``path`` containing ``fragment``."""
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if fragment in line:
                return number
    raise AssertionError(f"{fragment!r} not in {path}")
