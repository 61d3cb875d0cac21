"""Busy time per coroutine while a profile runs: how long each task's steps held the loop.

yappi's wall-clock figures give a coroutine's whole life, awaits included, so they cannot say
which coroutine kept the loop busy. This times every ``asyncio.events.Handle._run`` (each
callback the loop runs; a task step is one) for the length of a profile only, and charges the
time to the coroutine of the task the step belongs to. It patches one class attribute while
armed and puts it back after (only if nobody replaced it meanwhile). uvloop runs its handles
in Cython, so there it measures nothing and the report says so.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .._core.measure import coroutine_key

_MAX_KEYS = 1000
_OTHER = "_OTHER"


class StepTimer:
    """Times task steps per coroutine between ``install()`` and ``collect()``."""

    def __init__(self) -> None:
        # id(code) -> [key, seconds, steps, code]; the code object is kept so its id stays unique
        self._by_code: dict[int, list[Any]] = {}
        self._ours: Any = None
        self._saved: Any = None
        self.callbacks = 0
        self.names_by_code: dict[int, str] = {}  # id(code) -> name, filled by collect()

    def install(self) -> None:
        """Start timing (patches ``Handle._run``)."""
        if self._ours is not None:
            return
        original = asyncio.events.Handle._run
        by_code = self._by_code
        clock = time.perf_counter
        task_type = asyncio.Task
        timer = self

        def _run(handle: Any) -> None:
            task = getattr(handle._callback, "__self__", None)
            if not isinstance(task, task_type):
                original(handle)
                return
            coro = task.get_coro()
            code = getattr(coro, "cr_code", None)
            entry = by_code.get(id(code))
            if entry is None:
                entry = timer._entry(coro, code)  # before the step: a finished coro has no frame
            began = clock()
            try:
                original(handle)
            finally:
                entry[1] += clock() - began
                entry[2] += 1
                timer.callbacks += 1

        _run.__wrapped__ = original  # type: ignore[attr-defined]
        self._saved = original
        self._ours = _run
        asyncio.events.Handle._run = _run  # type: ignore[method-assign, assignment]

    def _entry(self, coro: Any, code: Any) -> list[Any]:
        if len(self._by_code) >= _MAX_KEYS:
            other = self._by_code.get(0)
            if other is None:
                other = self._by_code[0] = [_OTHER, 0.0, 0, None]
            return other
        try:
            key = coroutine_key(coro)
        except Exception:
            key = _OTHER
        entry = [key, 0.0, 0, code]
        self._by_code[id(code)] = entry
        return entry

    def uninstall(self) -> None:
        """Stop timing; restore ``Handle._run`` if ours is still the one in place."""
        if self._ours is None:
            return
        if asyncio.events.Handle.__dict__.get("_run") is self._ours:
            asyncio.events.Handle._run = self._saved  # type: ignore[method-assign]
        self._ours = None

    def collect(self) -> dict[str, tuple[float, int]] | None:
        """Busy seconds and steps per coroutine name; None if no task step was seen."""
        self.uninstall()
        if not self.callbacks:
            return None
        out: dict[str, tuple[float, int]] = {}
        for code_id, (key, spent, steps, _) in list(self._by_code.items()):
            self.names_by_code[code_id] = key
            total, count = out.get(key, (0.0, 0))
            out[key] = (total + spent, count + steps)
        self._by_code.clear()
        return out
