"""Queues as metrics: depth, and the time tasks wait to get from an empty queue or put into
a full one, per queue site.

``asyncio.Queue.get`` and ``put`` are wrapped while installed (as the semaphore's acquire is
by the primitive tracker: an ``async def`` awaiting the original, so results, exceptions,
cancellation and the deadlock detector's view of the wait are unchanged). A wait is timed
only when the call will wait (the queue is empty for ``get``, full for ``put``); otherwise the
wrapper costs an attribute read. Each queue is keyed by where it was created when the
primitive tracker noted it (deadlock detection on), else by where it was first used; at most
``max_sites`` sites, then ``_OTHER``. Depth is read at collection: the sum of ``qsize()``
over the site's live queues (weakly held).
"""

from __future__ import annotations

import asyncio
import asyncio.queues
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from .._core import names as n
from .._core.aio import Patch
from .._core.faults import Faults
from ..sync import state_of

clock = time.perf_counter
ATTR = "_asyncwatch_queue_site"


class QueueSite:
    """One queue site's figures."""

    __slots__ = ("get_wait_s", "get_waiting", "label", "put_wait_s", "put_waiting", "queues")

    def __init__(self, label: str) -> None:
        self.label = label
        self.get_wait_s = self.put_wait_s = 0.0
        self.get_waiting = self.put_waiting = 0
        self.queues: weakref.WeakSet[Any] = weakref.WeakSet()

    def depth(self) -> int:
        for _ in range(3):
            try:
                return sum(q.qsize() for q in list(self.queues))
            except RuntimeError:  # the set changed while copied (a queue was added)
                continue
        return 0


class QueueProbe:
    """Installs the ``get``/``put`` wrappers and keeps the sites."""

    def __init__(self, faults: Faults, max_sites: int = 100) -> None:
        self.faults = faults
        self.max_sites = max_sites
        self.active = False
        self._sites: dict[str, QueueSite] = {}
        self._lock = threading.Lock()
        self._patches: list[Patch] = []

    def reset(self) -> None:
        """Forget everything (after fork)."""
        self._lock = threading.Lock()
        self._sites = {}

    def install(self) -> None:
        """Wrap ``Queue.get`` and ``Queue.put``. Idempotent."""
        self.active = True
        if self._patches:
            return
        cls = asyncio.queues.Queue
        for name, wrap in (("get", self._get_wrapper), ("put", self._put_wrapper)):
            original = cls.__dict__[name]
            wrapper = wrap(original)
            wrapper.__qualname__ = f"Queue.{name}"
            wrapper.__doc__ = original.__doc__
            wrapper.__wrapped__ = original  # type: ignore[attr-defined]
            self._patches.append(Patch(cls, name, wrapper))

    def uninstall(self) -> None:
        """Put back ``get`` and ``put`` if still ours. Idempotent."""
        self.active = False
        patches, self._patches = self._patches, []
        for patch in reversed(patches):
            patch.undo()

    def site_of(self, queue: Any) -> QueueSite | None:
        """The site of ``queue`` (registered on first use)."""
        site: QueueSite | None = queue.__dict__.get(ATTR)
        if site is not None:
            return site
        state = state_of(queue)
        where = state.site if state is not None else None
        if where is not None:
            label = f"Queue created at {where[0]}:{where[1]} in {where[2]}"
        else:
            try:
                frame = sys._getframe(2)  # the caller of get/put (here, then the wrapper)
                code = frame.f_code
                label = (f"Queue first used at {code.co_filename}:{frame.f_lineno} in "
                         f"{getattr(code, 'co_qualname', code.co_name)}")
            except ValueError:  # called from the top of a thread's stack
                label = "Queue (site unknown)"
        with self._lock:
            site = self._sites.get(label)
            if site is None:
                if len(self._sites) >= self.max_sites:
                    label = n.OVERFLOW
                    site = self._sites.get(label)
                if site is None:
                    site = self._sites[label] = QueueSite(label)
        site.queues.add(queue)
        queue.__dict__[ATTR] = site
        return site

    def _get_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        probe = self

        async def get(self: Any) -> Any:
            site = None
            if probe.active:
                try:
                    site = probe.site_of(self)
                except Exception as exc:
                    probe.faults.report("advisor:queues", exc)
            if site is None or not self.empty():
                return await original(self)
            began = clock()
            site.get_waiting += 1
            try:
                return await original(self)
            finally:
                site.get_waiting -= 1
                site.get_wait_s += clock() - began

        return get

    def _put_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        probe = self

        async def put(self: Any, item: Any) -> Any:
            site = None
            if probe.active:
                try:
                    site = probe.site_of(self)
                except Exception as exc:
                    probe.faults.report("advisor:queues", exc)
            if site is None or not self.full():
                return await original(self, item)
            began = clock()
            site.put_waiting += 1
            try:
                return await original(self, item)
            finally:
                site.put_waiting -= 1
                site.put_wait_s += clock() - began

        return put

    def points(self) -> Iterable[Any]:
        """Metric points (any thread)."""
        start = 0
        with self._lock:
            sites = list(self._sites.values())
        for site in sites:
            attrs = {n.RESOURCE: site.label}
            yield n.QUEUE_DEPTH, attrs, site.depth(), start
            for op, waited, waiting in (("get", site.get_wait_s, site.get_waiting),
                                        ("put", site.put_wait_s, site.put_waiting)):
                op_attrs = {**attrs, n.QUEUE_OPERATION: op}
                yield n.QUEUE_WAIT_TIME, op_attrs, waited, start
                yield n.QUEUE_WAITING, op_attrs, waiting, start
