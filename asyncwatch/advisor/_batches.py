"""Batches: the app's own (``asyncwatch.batch``) and fan-outs through ``asyncio.gather``.

* ``asyncwatch.batch(name, size=n)`` is a context manager (``with`` or ``async with``)
  recording one batch of ``n`` items and how long it took; ``asyncwatch.batch(name,
  size=callable)`` is a decorator for a function (sync or async) that processes one batch,
  the callable getting the function's arguments and returning the size. Batches that raise
  are not recorded (a failure's duration says nothing about the batch's cost). Without
  asyncwatch installed both are no-ops.
* While installed, a gather of 2 or more awaitables records its size and time to completion
  under its call site (``file:line in function``). ``asyncio.gather`` itself is not replaced
  (a wrapper shows: its code, its frame in tracebacks, a done-callback on the outer future
  that costs the loop a callback and shows in the future's repr, identity for code that bound
  ``gather`` earlier; CPython's gather tests see them). Instead gather's outer future is
  observed: ``asyncio.tasks._GatheringFuture``, which ``gather`` looks up at each call, is a
  subclass of the original (same name and module, so ``isinstance`` and the repr are
  unchanged) whose ``__init__`` notes the size, the call site and the time, and whose
  ``set_result`` records the batch after the original's (so cancelled and failed gathers are
  not recorded, and nothing is added to the future but one slot of ours: no callback, no
  loop callback, the exception's "never retrieved" state untouched). Uninstall puts back the
  original class if ours is still in place; futures created meanwhile keep working and stop
  recording.

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

from .._core.aio import Patch
from .._core.faults import Faults

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
    """Holds the batch sites and observes ``gather``'s outer futures."""

    def __init__(self, faults: Faults, *, max_sites: int = 100, gather: bool = True) -> None:
        self.faults = faults
        self.max_sites = max_sites
        self.watch_gather = gather
        self.active = False
        self.unmeasured = 0
        self._sites: dict[Any, BatchSite] = {}
        self._lock = threading.Lock()
        self._patches: list[Patch] = []

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
        """Observe gathers (see the module docstring). Idempotent."""
        self.active = True
        if self._patches or not self.watch_gather:
            return
        original = getattr(asyncio.tasks, "_GatheringFuture", None)
        if not (isinstance(original, type) and issubclass(original, asyncio.Future)):
            return  # an asyncio we do not know: gathers are not measured
        observed = self._observed_class(original)
        self._patches.append(Patch(asyncio.tasks, "_GatheringFuture", observed))  # type: ignore[arg-type]

    def uninstall(self) -> None:
        """Put back ``asyncio.tasks._GatheringFuture`` if still ours. Idempotent."""
        self.active = False
        patches, self._patches = self._patches, []
        for patch in reversed(patches):
            patch.undo()

    def _observed_class(self, original: type) -> type:
        probe = self
        getframe = sys._getframe
        gather_code = inspect.unwrap(asyncio.tasks.gather).__code__

        class Observed(original):  # type: ignore[misc]
            __slots__ = ("_asyncwatch_batch",)

            def __init__(self, children: Any, *args: Any, **kwargs: Any) -> None:
                super().__init__(children, *args, **kwargs)
                self._asyncwatch_batch: tuple[BatchSite, int, float] | None = None
                if not probe.active:
                    return
                try:
                    size = len(children)
                    if size < 2:
                        return
                    if getframe(1).f_code is not gather_code:
                        return  # built by someone else than gather: no call site to name
                    frame = getframe(2)
                    key = (frame.f_code, frame.f_lasti)
                    site = probe._sites.get(key)
                    if site is None:
                        site = probe.site(key, lambda: _describe(frame), explicit=False)
                        if site is None:
                            return
                    self._asyncwatch_batch = (site, size, clock())
                except Exception as exc:
                    probe.fault(exc)

            def set_result(self, result: Any) -> None:
                super().set_result(result)
                batch = self._asyncwatch_batch
                if batch is not None and probe.active:
                    try:
                        site, size, began = batch
                        now = clock()
                        site.add(size, now - began, now)
                    except Exception as exc:
                        probe.fault(exc)

        for attr in ("__name__", "__qualname__", "__module__", "__doc__"):
            setattr(Observed, attr, getattr(original, attr))
        return Observed

    def fault(self, exc: BaseException) -> None:
        """Internal error while observing a gather: counted; the gather is unaffected."""
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
