"""Ownership and wait bookkeeping for asyncio's Lock, Semaphore and Condition.

While installed, ``PrimitiveTracker`` replaces a few class attributes:

* ``acquire``/``release`` of ``asyncio.Lock`` and ``asyncio.Semaphore`` (``BoundedSemaphore``
  inherits ``acquire`` and calls ``Semaphore.release`` through ``super()``; ``Condition``
  binds its lock's methods at construction): after the original ``acquire`` returns, the
  current task is recorded as holder; ``release`` forgets it. A clock is read only when the
  primitive was already taken on entry (the call is about to wait), for wait times.
* ``__init__`` of ``Lock``, ``Semaphore``, ``Condition``, ``Event`` and ``Queue``: one frame is
  read to remember where the object was created (the first caller outside asyncio).

The state lives in one ``PrimitiveState`` per object, under the instance attribute
``_asyncwatch_state``; the originals run unchanged (same results, exceptions and
cancellation behaviour). ``uninstall()`` puts back each class attribute that is still ours.
Objects created while installed keep their (inert) state attribute, and Conditions made then
keep calling the wrapper, which only forwards once the tracker is off.

Hooks for other components: subclass ``PrimitiveObserver`` and ``tracker.observe(obs)``; only
overridden methods are called. The advisor measures semaphores through a cheaper, dedicated
hook: ``tracker.track_semaphore(state)`` is asked once per semaphore for a track (kept as
``state.track``), whose ``up(task, waited_s)`` and ``down(task)`` the semaphore wrappers call
directly, inside the same wrapper that records holders (one wrapper per method, not two).

Beside it in this package: ``_state`` (``PrimitiveState``, ``state_of``, the observer hooks),
``_sites`` (where an object was made, and its name there) and ``_inline`` (the generated lazy
``__init__`` and the fast-path check).
"""

from __future__ import annotations

import asyncio
import asyncio.locks
import asyncio.queues
import functools
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .._core.aio import Patch, current_task
from .._core.aio import running_loop as _RUNNING
from .._core.aio import task_of as _task_of
from .._core.faults import Faults
from ._inline import fast_paths_match, lazy_init
from ._sites import SKIPPED, caller, skipped_files
from ._state import STATE_ATTR, PrimitiveObserver, PrimitiveState, state_of


class PrimitiveTracker:
    """Installs the wrappers described in the module docstring."""

    def __init__(self, faults: Faults, clock: Callable[[], float] = time.perf_counter) -> None:
        self.faults = faults
        self.clock = clock
        self.active = False
        self._patches: list[Patch] = []
        self._observers: list[PrimitiveObserver] = []
        self.on_created: tuple[Callable[..., None], ...] = ()
        self.on_acquired: tuple[Callable[..., None], ...] = ()
        self.on_released: tuple[Callable[..., None], ...] = ()
        # the advisor: state -> track with up(task, waited_s) / down(task), or None
        self.track_semaphore: Callable[[PrimitiveState], Any] | None = None
        # the deadlock detector: called as ``on_lock_wait(lock, task)`` when a task is about
        # to wait for a Lock that is taken; ``lock_waits`` then maps id(task) to that lock
        # until its acquire returns or fails (removed in a ``finally``: the waiting coroutine
        # references the lock anyway while the entry exists).
        self.on_lock_wait: Callable[[Any, Any], None] | None = None
        self.lock_waits: dict[int, Any] = {}
        self._semaphores: weakref.WeakSet[Any] = weakref.WeakSet()
        # (code id, offset) -> objects numbered there (``PrimitiveState.number``)
        self.site_numbers: dict[Any, int] = {}

    # ------------------------------------------------------------------ hooks

    def observe(self, observer: PrimitiveObserver) -> None:
        """Call ``observer``'s overridden methods from now on."""
        self._observers.append(observer)
        self._rebind()

    def unobserve(self, observer: PrimitiveObserver) -> None:
        """Stop calling ``observer``."""
        self._observers = [o for o in self._observers if o is not observer]
        self._rebind()

    def _rebind(self) -> None:
        def bound(name: str) -> tuple[Callable[..., None], ...]:
            base = getattr(PrimitiveObserver, name)
            return tuple(
                getattr(o, name) for o in self._observers if getattr(type(o), name) is not base
            )

        self.on_created = bound("created")
        self.on_acquired = bound("acquired")
        self.on_released = bound("released")

    def semaphores(self) -> Iterator[tuple[Any, PrimitiveState]]:
        """Live semaphores created while installed, with their state (holder counts...)."""
        for sem in list(self._semaphores):
            state = state_of(sem)
            if state is not None and state.tracker is self:
                yield sem, state

    def fault(self, exc: BaseException) -> None:
        """An internal error in a wrapper: counted, never raised into the app (unless strict)."""
        if self.faults.report("primitives", exc):
            self.active = False

    # ------------------------------------------------------------------ state

    def adopt(self, obj: Any, kind: str) -> PrimitiveState:
        """Give ``obj`` a state owned by this tracker: first seen now, so who holds it (and a
        semaphore's initial value) is unknown; a state left by an earlier install lends its
        creation site and initial value."""
        old = state_of(obj)
        if old is not None and old.tracker is self:
            return old  # created while installed: its whole life was seen
        state = PrimitiveState(self, kind, old._where if old is not None else None)
        if old is not None:
            state.initial = old.initial
            state.part_of = old.part_of
        obj._asyncwatch_state = state
        return state

    def holder_task(self, state: PrimitiveState) -> Any:
        """The task running now: looked up on the loop the primitive was last used on (no
        system call), else on this thread's running loop."""
        loop = state.loop
        task = _task_of(loop) if loop is not None else None
        if task is None:
            loop = state.loop = _RUNNING()
            task = _task_of(loop) if loop is not None else None
        return task

    # ------------------------------------------------------------------ install

    def install(self, *, semaphores_only: bool = False) -> None:
        """Patch the classes. Idempotent. ``semaphores_only``: only what the advisor reads
        (semaphores), for when the deadlock detector is off: every Lock, Event, Condition
        and Queue the app (or its server, once per request) creates then costs nothing."""
        if self._patches:
            return
        SKIPPED.update(skipped_files())
        self.active = True
        locks = asyncio.locks
        fast_paths = fast_paths_match()
        if not semaphores_only:
            self._wrap_init(locks.Lock, "Lock", lazy=True)
            self._wrap_init(locks.Condition, "Condition", lazy=False)
            self._wrap_init(locks.Event, "Event", lazy=True)
            self._wrap_init(asyncio.queues.Queue, None, lazy=True)
            self._wrap_lock(fast_paths)
        self._wrap_init(locks.Semaphore, None, lazy=False)
        self._wrap_semaphore(fast_paths)

    def uninstall(self) -> None:
        """Put back every class attribute that is still ours. Idempotent."""
        self.active = False
        patches, self._patches = self._patches, []
        for patch in reversed(patches):
            patch.undo()

    def _patch(self, cls: type, name: str, fn: Any) -> None:
        original = cls.__dict__[name]
        functools.update_wrapper(fn, original)
        self._patches.append(Patch(cls, name, fn))

    def made(self, obj: Any, name: str, where: Any) -> None:
        """Build the state of ``obj``, just created (at ``where``), and tell the hooks."""
        state = PrimitiveState(self, name, where)
        obj._asyncwatch_state = state
        if name.endswith("Semaphore"):
            bound = getattr(obj, "_bound_value", None)
            state.initial = obj._value if bound is None else bound
            self._semaphores.add(obj)
        elif name == "Condition":
            lock_state = state_of(obj._lock)
            if lock_state is not None and lock_state.tracker is self:
                lock_state.part_of = state
        for hook in self.on_created:
            hook(obj, state)

    def _wrap_init(self, cls: type, kind: str | None, *, lazy: bool) -> None:
        """Wrap ``cls.__init__`` to note where each instance is made. Semaphores and
        Conditions get their state at once; a lazy kind (Lock, Event, Queue: apps and servers
        make these per request, so this is a hot path) only notes where it was made, and its
        state is built when a scan first needs it (see ``state_of``), unless a hook wants
        every creation. See ``lazy_init`` for how the lazy wrapper is kept cheap."""
        original = cls.__dict__["__init__"]
        tracker = self
        getframe = sys._getframe
        first_outside = caller

        def eager_init(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            if tracker.active:
                try:
                    tracker.made(self, kind or type(self).__name__, first_outside(getframe(1)))
                except Exception as exc:
                    tracker.fault(exc)

        self._patch(cls, "__init__", lazy_init(original, tracker, kind) if lazy else eager_init)

    def _wrap_lock(self, inline: bool) -> None:
        cls = asyncio.locks.Lock
        acquire_original = cls.__dict__["acquire"]
        release_original = cls.__dict__["release"]
        tracker = self
        clock = self.clock
        task_of = _task_of

        def took(lock: Any, waited: float | None) -> None:
            state = state_of(lock)
            if state is None or state.tracker is not tracker:
                state = tracker.adopt(lock, "Lock")
            task = tracker.holder_task(state)
            state.holder = task
            if waited is not None:
                state.waits += 1
                state.wait_s += waited
            for hook in tracker.on_acquired:
                hook(state, task, waited)

        async def acquire(self: Any) -> Any:
            if inline and not self._locked and not self._waiters and tracker.active:
                # asyncio's own fast path, verbatim (its condition is a superset of this one).
                self._locked = True
                try:
                    try:
                        state = self._asyncwatch_state
                        loop = state.loop
                    except AttributeError:  # not seen yet, or still a creation tuple
                        state = loop = None
                    task = task_of(loop) if loop is not None else None
                    if task is None or state.tracker is not tracker:
                        took(self, None)
                    else:
                        state.holder = task
                        for hook in tracker.on_acquired:
                            hook(state, task, None)
                except Exception as exc:
                    tracker.fault(exc)
                return True
            if not tracker.active:
                return await acquire_original(self)
            waits = bool(self._locked or self._waiters)
            began = clock() if waits else 0.0
            hook = tracker.on_lock_wait if waits else None
            if hook is None:
                result = await acquire_original(self)
            else:
                key = 0
                try:
                    waiter = current_task()
                    if waiter is not None:
                        key = id(waiter)
                        tracker.lock_waits[key] = self
                        hook(self, waiter)
                except Exception as exc:
                    tracker.fault(exc)
                try:
                    result = await acquire_original(self)
                finally:
                    if key:
                        tracker.lock_waits.pop(key, None)
            try:
                took(self, clock() - began if waits else None)
            except Exception as exc:
                tracker.fault(exc)
            return result

        def release(self: Any) -> None:
            release_original(self)
            if tracker.active:
                try:
                    try:
                        state = self._asyncwatch_state
                    except AttributeError:
                        return
                    if type(state) is PrimitiveState and state.tracker is tracker:
                        state.holder = None
                        if tracker.on_released:
                            task = tracker.holder_task(state)
                            for hook in tracker.on_released:
                                hook(state, task)
                except Exception as exc:
                    tracker.fault(exc)

        self._patch(cls, "acquire", acquire)
        self._patch(cls, "release", release)

    def _wrap_semaphore(self, inline: bool) -> None:
        cls = asyncio.locks.Semaphore
        acquire_original = cls.__dict__["acquire"]
        release_original = cls.__dict__["release"]
        tracker = self
        clock = self.clock
        task_of = _task_of

        def took(sem: Any, waited: float | None) -> None:
            state = state_of(sem)
            if state is None or state.tracker is not tracker:
                state = tracker.adopt(sem, type(sem).__name__)
            task = tracker.holder_task(state)
            if task is None:
                state.uncertain = True  # acquired outside any task: no owner to name
            else:
                holders = state.holders
                if holders is None:
                    holders = state.holders = {}
                holders[task] = holders.get(task, 0) + 1
            if waited is not None:
                state.waits += 1
                state.wait_s += waited
            track = state.track
            if track is None and tracker.track_semaphore is not None:
                track = state.track = tracker.track_semaphore(state) or _UNTRACKED
            if track is not None:
                track.up(task, waited)
            for hook in tracker.on_acquired:
                hook(state, task, waited)

        async def acquire(self: Any) -> Any:
            if inline and self._value > 0 and not self._waiters and tracker.active:
                # asyncio's own fast path, verbatim (its condition is a superset of this one).
                self._value -= 1
                try:
                    state = self.__dict__.get(STATE_ATTR)
                    loop = state.loop if type(state) is PrimitiveState else None
                    task = task_of(loop) if loop is not None else None
                    holders = state.holders if task is not None else None
                    if holders is None or state.tracker is not tracker:
                        took(self, None)  # first use, outside a task, or an older tracker's
                    else:  # took(), inlined for the common case
                        holders[task] = holders.get(task, 0) + 1
                        track = state.track
                        if track is not None:
                            track.up(task, None)
                        for hook in tracker.on_acquired:
                            hook(state, task, None)
                except Exception as exc:
                    tracker.fault(exc)
                return True
            if not tracker.active:
                return await acquire_original(self)
            waits = bool(self._value <= 0 or self._waiters)
            began = clock() if waits else 0.0
            result = await acquire_original(self)
            try:
                took(self, clock() - began if waits else None)
            except Exception as exc:
                tracker.fault(exc)
            return result

        def release(self: Any) -> None:
            release_original(self)
            if tracker.active:
                try:
                    state = self.__dict__.get(STATE_ATTR)
                    if type(state) is PrimitiveState and state.tracker is tracker:
                        loop = state.loop
                        task = task_of(loop) if loop is not None else None
                        if task is None:
                            task = tracker.holder_task(state)
                        holders = state.holders or {}
                        count = holders.get(task)
                        if count is not None:
                            if count > 1:
                                holders[task] = count - 1
                            else:
                                del holders[task]
                        elif holders:
                            # Released by a task that did not acquire it: a permit changed
                            # hands, and who holds which one can no longer be known.
                            del holders[next(iter(holders))]
                            state.uncertain = True
                        track = state.track
                        if track is not None:
                            track.down(task)
                        for hook in tracker.on_released:
                            hook(state, task)
                except Exception as exc:
                    tracker.fault(exc)

        self._patch(cls, "acquire", acquire)
        self._patch(cls, "release", release)


class _Untracked:
    """A semaphore the advisor does not measure (over its limit count)."""

    __slots__ = ()

    def up(self, task: asyncio.Task[Any], waited_s: float | None) -> None:
        """Nothing to record."""

    def down(self, task: asyncio.Task[Any]) -> None:
        """Nothing to record."""


_UNTRACKED = _Untracked()
