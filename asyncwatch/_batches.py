"""Batches: the app's own (``asyncwatch.batch``) and fan-outs through ``asyncio.gather``.

* ``asyncwatch.batch(name, size=n)`` is a context manager (``with`` or ``async with``)
  recording one batch of ``n`` items and how long it took; ``asyncwatch.batch(name,
  size=callable)`` is a decorator for a function (sync or async) that processes one batch,
  the callable getting the function's arguments and returning the size. Batches that raise
  are not recorded (a failure's duration says nothing about the batch's cost). Without
  asyncwatch installed both are no-ops.
* While installed, ``asyncio.gather`` (the module attribute, which is what ``asyncio.gather``
  resolves to at call time) is wrapped: a gather of 2 or more awaitables records its size and
  time to completion under its call site (``file:line in function``). Code that bound
  ``gather`` to a name of its own before ``install()`` is not seen. Uninstall puts back the
  original if ours is still in place.

Each site keeps its last ``RING`` batches (size, seconds, ended at) in fixed arrays, and per
size (the first ``SIZES_KEPT`` sizes) the count and total seconds of every batch, so a size
run before still counts once the ring has moved on. At most ``max_sites`` sites; later ones
are not measured.
"""

from __future__ import annotations

import asyncio
import asyncio.tasks
import functools
import inspect
import sys
import threading
import time
from array import array
from collections.abc import Callable
from typing import Any

from ._faults import Faults
from ._tasks import _Patch

RING = 512
SIZES_KEPT = 64
clock = time.perf_counter


class BatchSite:
    """Recent batches of one site, in preallocated arrays (memory flat from the start).

    Writers are the loop's thread (gather) or the app's (``batch``); two threads recording at
    the same instant may overwrite one slot, which loses one sample, never more.
    """

    def __init__(self, label: str, explicit: bool, budget_s: float | None) -> None:
        self.label = label
        self.explicit = explicit
        self.budget_s = budget_s
        self._sizes = array("q", bytes(8 * RING))
        self._seconds = array("d", bytes(8 * RING))
        self._ended = array("d", bytes(8 * RING))
        self.count = 0
        self.by_size: dict[int, list[float]] = {}  # size -> [batches, seconds in all]

    def add(self, size: int, seconds: float, ended: float) -> None:
        """Record one batch."""
        i = self.count % RING
        self._sizes[i] = size
        self._seconds[i] = seconds
        self._ended[i] = ended
        self.count += 1
        totals = self.by_size.get(size)
        if totals is not None:
            totals[0] += 1
            totals[1] += seconds
        elif len(self.by_size) < SIZES_KEPT:
            self.by_size[size] = [1, seconds]

    def recent(self) -> list[tuple[int, float, float]]:
        """The batches kept, oldest first."""
        count = self.count
        first = max(0, count - RING)
        out = []
        for k in range(first, count):
            i = k % RING
            out.append((self._sizes[i], self._seconds[i], self._ended[i]))
        return out


class BatchProbe:
    """Holds the batch sites and installs the ``gather`` wrapper."""

    def __init__(self, faults: Faults, *, max_sites: int = 100, gather: bool = True) -> None:
        self.faults = faults
        self.max_sites = max_sites
        self.watch_gather = gather
        self.active = False
        self.unmeasured = 0
        self._sites: dict[Any, BatchSite] = {}
        self._lock = threading.Lock()
        self._patches: list[_Patch] = []

    def sites(self) -> list[BatchSite]:
        """Every site measured."""
        with self._lock:
            return list(self._sites.values())

    def reset(self) -> None:
        """Forget everything (after fork)."""
        self._lock = threading.Lock()
        self._sites = {}
        self.unmeasured = 0

    def site(self, key: Any, label: Callable[[], str], explicit: bool,
             budget_s: float | None = None) -> BatchSite | None:
        """The site under ``key``, created on first use (None past the cap)."""
        site = self._sites.get(key)
        if site is None:
            with self._lock:
                site = self._sites.get(key)
                if site is None:
                    if len(self._sites) >= self.max_sites:
                        self.unmeasured += 1
                        return None
                    site = self._sites[key] = BatchSite(label(), explicit, budget_s)
        if budget_s is not None:
            site.budget_s = budget_s
        return site

    # ------------------------------------------------------------------ gather

    def install(self) -> None:
        """Wrap ``asyncio.gather``. Idempotent."""
        self.active = True
        if self._patches or not self.watch_gather:
            return
        original = asyncio.tasks.gather
        wrapper = self._gather_wrapper(original)
        self._patches.append(_Patch(asyncio.tasks, "gather", wrapper))  # type: ignore[arg-type]
        if asyncio.gather is original:
            self._patches.append(_Patch(asyncio, "gather", wrapper))  # type: ignore[arg-type]

    def uninstall(self) -> None:
        """Put back ``asyncio.gather`` if still ours. Idempotent."""
        self.active = False
        patches, self._patches = self._patches, []
        for patch in reversed(patches):
            patch.undo()

    def _gather_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        probe = self
        getframe = sys._getframe

        @functools.wraps(original)
        def gather(*coros_or_futures: Any, return_exceptions: bool = False) -> Any:
            outer = original(*coros_or_futures, return_exceptions=return_exceptions)
            size = len(coros_or_futures)
            if size < 2 or not probe.active:
                return outer
            try:
                frame = getframe(1)
                key = (frame.f_code, frame.f_lasti)
                site = probe._sites.get(key)
                if site is None:
                    site = probe.site(key, lambda: _describe(frame), explicit=False)
                    if site is None:
                        return outer
                began = clock()

                def done(fut: Any) -> None:
                    if not fut.cancelled() and getattr(fut, "_exception", None) is None:
                        now = clock()
                        site.add(size, now - began, now)

                outer.add_done_callback(done)
            except Exception as exc:
                probe.fault(exc)
            return outer

        return gather

    def fault(self, exc: BaseException) -> None:
        """Internal error in the wrapper: counted; the gather is unaffected."""
        if self.faults.report("gather", exc):
            self.active = False


def _describe(frame: Any) -> str:
    code = frame.f_code
    name = getattr(code, "co_qualname", code.co_name)
    return f"gather at {code.co_filename}:{frame.f_lineno} in {name}"


# ---------------------------------------------------------------- the explicit API


class Batch:
    """``asyncwatch.batch(name, size=n)``: see the module docstring."""

    __slots__ = ("_began", "_site", "_size")

    def __init__(self, site: BatchSite | None, size: int) -> None:
        self._site = site
        self._size = size
        self._began = 0.0

    def __enter__(self) -> Batch:
        self._began = clock()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        site = self._site
        if site is not None and exc_type is None:
            now = clock()
            site.add(self._size, now - self._began, now)

    async def __aenter__(self) -> Batch:
        return self.__enter__()

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)


def batch_decorator(
    site_of: Callable[[], BatchSite | None], size: Callable[..., int]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator form: each call is one batch whose size is ``size(*args, **kwargs)``."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                site = site_of()
                if site is None:
                    return await fn(*args, **kwargs)
                n = _size_of(size, args, kwargs)
                began = clock()
                result = await fn(*args, **kwargs)
                if n is not None:
                    now = clock()
                    site.add(n, now - began, now)
                return result

            return run_async

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            site = site_of()
            if site is None:
                return fn(*args, **kwargs)
            n = _size_of(size, args, kwargs)
            began = clock()
            result = fn(*args, **kwargs)
            if n is not None:
                now = clock()
                site.add(n, now - began, now)
            return result

        return run

    return decorate


def _size_of(size: Callable[..., int], args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    try:
        n = size(*args, **kwargs)
    except Exception:  # the app's size function failed: the batch goes unrecorded
        return None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
