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

Hooks for other components (the advisor wants semaphore wait times and holder counts):
subclass ``PrimitiveObserver`` and ``tracker.observe(obs)``; only overridden methods are called.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import asyncio.locks
import asyncio.queues
import asyncio.tasks
import functools
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from ._faults import Faults
from ._tasks import _Patch

STATE_ATTR = "_asyncwatch_state"
_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
_OWN_FILE = __file__

if sys.version_info >= (3, 12):
    _current_task: Callable[[], Any] = asyncio.current_task
else:  # asyncio.current_task is pure Python on 3.11; the C pieces are twice as fast
    _CURRENT = asyncio.tasks._current_tasks  # type: ignore[attr-defined]
    _RUNNING = asyncio.events._get_running_loop

    def _current_task() -> Any:
        return _CURRENT.get(_RUNNING())


def current_task() -> Any:
    """The task running on this thread's loop, or None (never raises)."""
    return _current_task()


def creation_site() -> tuple[str, int, str] | None:
    """(filename, line, function) of the nearest caller outside asyncio and asyncwatch."""
    frame: Any = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_ASYNCIO_DIR) and filename != _OWN_FILE:
            code = frame.f_code
            return (filename, frame.f_lineno, getattr(code, "co_qualname", code.co_name))
        frame = frame.f_back
    return None


class PrimitiveState:
    """What asyncwatch knows about one Lock, Semaphore, Condition, Event or Queue."""

    __slots__ = (
        "__weakref__",
        "holder",
        "holders",
        "initial",
        "kind",
        "part_of",
        "site",
        "tracker",
        "uncertain",
        "wait_s",
        "waits",
    )

    def __init__(self, tracker: PrimitiveTracker, kind: str, site: tuple[str, int, str] | None):
        self.tracker = tracker
        self.kind = kind
        self.site = site
        self.holder: Any = None  # Lock: the task holding it
        self.holders: dict[Any, int] = {}  # Semaphore: task -> permits held
        self.initial: int | None = None  # Semaphore: permits at creation (None: unknown)
        self.uncertain = False  # Semaphore: released by a task that did not hold it
        self.part_of: PrimitiveState | None = None  # a Condition's lock: the Condition
        self.waits = 0  # acquires that found it taken
        self.wait_s = 0.0  # total time those acquires waited

    def held(self) -> int:
        """Permits (or the lock) held now, by tasks asyncwatch saw acquire them."""
        if self.kind == "Lock":
            return 0 if self.holder is None else 1
        return sum(self.holders.values())

    def describe(self) -> str:
        """'Lock created at app.py:12 in main' (or 'the lock of Condition created at...')."""
        if self.part_of is not None:
            return f"the lock of {self.part_of.describe()}"
        if self.site is None:
            return f"{self.kind} (created before asyncwatch was installed)"
        filename, line, function = self.site
        return f"{self.kind} created at {filename}:{line} in {function}"


class PrimitiveObserver:
    """Extension point: override any of these; only overridden methods are ever called."""

    def created(self, obj: Any, state: PrimitiveState) -> None:
        """A Lock/Semaphore/Condition/Event/Queue was created while installed."""

    def acquired(self, state: PrimitiveState, task: Any, waited_s: float | None) -> None:
        """A Lock or Semaphore was acquired by ``task``; ``waited_s`` is None if it was free."""

    def released(self, state: PrimitiveState, task: Any) -> None:
        """A Lock or Semaphore was released (``task`` is the releasing task, or None)."""


def state_of(obj: Any) -> PrimitiveState | None:
    """The state asyncwatch keeps for ``obj``, if any (any tracker, current or not)."""
    try:
        state = vars(obj).get(STATE_ATTR)
    except TypeError:
        return None
    return state if isinstance(state, PrimitiveState) else None


class PrimitiveTracker:
    """Installs the wrappers described in the module docstring."""

    def __init__(self, faults: Faults, clock: Callable[[], float] = time.perf_counter) -> None:
        self.faults = faults
        self.clock = clock
        self.active = False
        self._patches: list[_Patch] = []
        self._observers: list[PrimitiveObserver] = []
        self.on_created: tuple[Callable[..., None], ...] = ()
        self.on_acquired: tuple[Callable[..., None], ...] = ()
        self.on_released: tuple[Callable[..., None], ...] = ()
        self._semaphores: weakref.WeakSet[Any] = weakref.WeakSet()

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
        state = PrimitiveState(self, kind, old.site if old is not None else None)
        if old is not None:
            state.initial = old.initial
            state.part_of = old.part_of
        vars(obj)[STATE_ATTR] = state
        return state

    def created(self, obj: Any, kind: str) -> PrimitiveState:
        """Called by the ``__init__`` wrappers: a new object, whose whole life is seen."""
        state = PrimitiveState(self, kind, creation_site())
        if kind in ("Semaphore", "BoundedSemaphore"):
            bound = getattr(obj, "_bound_value", None)
            state.initial = obj._value if bound is None else bound
        vars(obj)[STATE_ATTR] = state
        if kind in ("Semaphore", "BoundedSemaphore"):
            self._semaphores.add(obj)
        for hook in self.on_created:
            hook(obj, state)
        return state

    # ------------------------------------------------------------------ install

    def install(self) -> None:
        """Patch the classes. Idempotent."""
        if self._patches:
            return
        self.active = True
        locks = asyncio.locks
        self._wrap_init(locks.Lock, "Lock")
        self._wrap_init(locks.Semaphore, None)
        self._wrap_init(locks.Condition, "Condition")
        self._wrap_init(locks.Event, "Event")
        self._wrap_init(asyncio.queues.Queue, None)
        self._wrap_lock()
        self._wrap_semaphore()

    def uninstall(self) -> None:
        """Put back every class attribute that is still ours. Idempotent."""
        self.active = False
        patches, self._patches = self._patches, []
        for patch in reversed(patches):
            patch.undo()

    def _patch(self, cls: type, name: str, fn: Any) -> None:
        original = cls.__dict__[name]
        functools.update_wrapper(fn, original)
        self._patches.append(_Patch(cls, name, fn))

    def _wrap_init(self, cls: type, kind: str | None) -> None:
        original = cls.__dict__["__init__"]
        tracker = self

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            if tracker.active:
                try:
                    state = tracker.created(self, kind or type(self).__name__)
                    if kind == "Condition":
                        lock_state = state_of(self._lock)
                        if lock_state is not None and lock_state.tracker is tracker:
                            lock_state.part_of = state
                except Exception as exc:
                    tracker.fault(exc)

        self._patch(cls, "__init__", __init__)

    def _wrap_lock(self) -> None:
        cls = asyncio.locks.Lock
        acquire_original = cls.__dict__["acquire"]
        release_original = cls.__dict__["release"]
        tracker = self
        clock = self.clock
        current = _current_task

        async def acquire(self: Any) -> Any:
            if not tracker.active:
                return await acquire_original(self)
            if self._locked or self._waiters:
                began = clock()
                result = await acquire_original(self)
                waited: float | None = clock() - began
            else:
                result = await acquire_original(self)
                waited = None
            try:
                try:
                    state = self._asyncwatch_state
                except AttributeError:
                    state = tracker.adopt(self, "Lock")
                if state.tracker is not tracker:
                    state = tracker.adopt(self, "Lock")
                task = current()
                state.holder = task
                if waited is not None:
                    state.waits += 1
                    state.wait_s += waited
                for hook in tracker.on_acquired:
                    hook(state, task, waited)
            except Exception as exc:
                tracker.fault(exc)
            return result

        def release(self: Any) -> None:
            release_original(self)
            if tracker.active:
                try:
                    state = self.__dict__.get(STATE_ATTR)
                    if state is not None and state.tracker is tracker:
                        state.holder = None
                        if tracker.on_released:
                            task = current()
                            for hook in tracker.on_released:
                                hook(state, task)
                except Exception as exc:
                    tracker.fault(exc)

        self._patch(cls, "acquire", acquire)
        self._patch(cls, "release", release)

    def _wrap_semaphore(self) -> None:
        cls = asyncio.locks.Semaphore
        acquire_original = cls.__dict__["acquire"]
        release_original = cls.__dict__["release"]
        tracker = self
        clock = self.clock
        current = _current_task

        async def acquire(self: Any) -> Any:
            if not tracker.active:
                return await acquire_original(self)
            if self._value <= 0 or self._waiters:
                began = clock()
                result = await acquire_original(self)
                waited: float | None = clock() - began
            else:
                result = await acquire_original(self)
                waited = None
            try:
                try:
                    state = self._asyncwatch_state
                except AttributeError:
                    state = tracker.adopt(self, type(self).__name__)
                if state.tracker is not tracker:
                    state = tracker.adopt(self, type(self).__name__)
                task = current()
                if task is None:
                    state.uncertain = True  # acquired outside any task: no owner to name
                else:
                    holders = state.holders
                    holders[task] = holders.get(task, 0) + 1
                if waited is not None:
                    state.waits += 1
                    state.wait_s += waited
                for hook in tracker.on_acquired:
                    hook(state, task, waited)
            except Exception as exc:
                tracker.fault(exc)
            return result

        def release(self: Any) -> None:
            release_original(self)
            if tracker.active:
                try:
                    state = self.__dict__.get(STATE_ATTR)
                    if state is not None and state.tracker is tracker:
                        task = current()
                        holders = state.holders
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
                        for hook in tracker.on_released:
                            hook(state, task)
                except Exception as exc:
                    tracker.fault(exc)

        self._patch(cls, "acquire", acquire)
        self._patch(cls, "release", release)
