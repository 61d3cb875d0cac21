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
"""

from __future__ import annotations

import asyncio
import asyncio.events
import asyncio.locks
import asyncio.queues
import asyncio.tasks
import collections
import functools
import inspect
import linecache
import os
import sys
import textwrap
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .._core.aio import Patch, current_task
from .._core.aio import running_loop as _RUNNING
from .._core.aio import task_of as _task_of
from .._core.faults import Faults
from .._core.stacks import PACKAGE_DIR

STATE_ATTR = "_asyncwatch_state"
_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep


def _skipped_files() -> set[str]:
    """Files whose frames are not "where it was created": asyncio's and asyncwatch's."""
    out = set()
    for name, module in list(sys.modules.items()):
        if name == "asyncio" or name.startswith(("asyncio.", "asyncwatch")):
            filename = getattr(module, "__file__", None)
            if filename:
                out.add(filename)
    return out


_SKIPPED: set[str] = set()
_APP_FILES: set[str] = set()  # files seen not to be asyncio's or ours (bounded by the app)


def _caller(frame: Any) -> tuple[Any, int] | None:
    """(code, instruction offset) of the first frame from ``frame`` outward outside asyncio
    and asyncwatch; the line number is worked out only if a finding needs it."""
    while frame is not None:
        code = frame.f_code
        filename = code.co_filename
        if filename in _APP_FILES:
            return code, frame.f_lasti
        if filename not in _SKIPPED:
            if not filename.startswith((_ASYNCIO_DIR, PACKAGE_DIR)):
                _APP_FILES.add(filename)
                return code, frame.f_lasti
            _SKIPPED.add(filename)
        frame = frame.f_back
    return None


def _name_at(code: Any, offset: int) -> str | None:
    """The variable a primitive created at ``(code, offset)`` was assigned to, read from the
    source: ``ledger`` in ``accounts, ledger = Lock(), Lock()``, ``self.lock`` in
    ``self.lock = Lock()``. None when the call is not the whole right-hand side of a
    one-line assignment (a list of locks, a call's argument...)."""
    import ast

    try:
        positions = list(code.co_positions())
        line, end_line, col, end_col = positions[offset // 2]
    except (AttributeError, IndexError, ValueError):
        return None
    if line is None or line != end_line or col is None or end_col is None:
        return None
    text = linecache.getline(code.co_filename, line)
    stripped = text.lstrip()
    indent = len(text) - len(stripped)
    try:
        tree = ast.parse(stripped.rstrip())
    except SyntaxError:
        return None
    if len(tree.body) != 1:
        return None
    stmt = tree.body[0]
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target, value = stmt.targets[0], stmt.value
    elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        target, value = stmt.target, stmt.value
    else:
        return None
    pairs: list[tuple[ast.expr, ast.expr]] = [(target, value)]
    if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
        if len(target.elts) != len(value.elts):
            return None
        pairs = list(zip(target.elts, value.elts, strict=True))
    for name, call in pairs:
        if (
            isinstance(call, ast.Call)
            and call.col_offset + indent == col
            and call.end_col_offset is not None
            and call.end_col_offset + indent == end_col
            and isinstance(name, ast.Name | ast.Attribute | ast.Subscript)
        ):
            return ast.unparse(name)
    return None


def _line_of(code: Any, offset: int) -> int:
    for start, stop, line in code.co_lines():
        if start <= offset < stop and line is not None:
            return int(line)
    return int(code.co_firstlineno)


# The lazy ``__init__`` wrapper is generated from this text (as dataclasses generates its
# methods): for Lock and Event, whose ``__init__`` is two attribute stores, those two stores
# then run in the wrapper itself instead of through a second Python call, which takes what
# tracking adds to creating one from about 3,000 to 2,100 instructions (uvicorn makes an
# Event per request). Any other
# ``__init__``, or one that is not exactly the stdlib's, is called as it is.
_LAZY_INIT = """\
def __init__(self{params}):
{body}
    if tracker.active:
        try:
            frame = getframe(1)
            code = frame.f_code
            if code.co_filename in app_files:
                where = (code, frame.f_lasti)
            else:
                where = caller(frame)
            if tracker.on_created:
                tracker.made(self, {name}, where)
            else:
                self._asyncwatch_state = (tracker, {name}, where)
        except Exception as exc:
            tracker.fault(exc)
"""
_CALL_ORIGINAL = """\
    if args or kwargs:
        original(self, *args, **kwargs)
    else:
        original(self)"""
# The __init__ bodies of asyncio.Lock and asyncio.Event as on 3.11 (checked at install:
# on a Python where they differ, the original is called).
_STDLIB_BODIES = (
    "    self._waiters = None\n    self._locked = False",
    "    self._waiters = collections.deque()\n    self._value = False",
)


def _stdlib_body(original: Any) -> str | None:
    """The body of ``original`` as text if it is exactly one of ``_STDLIB_BODIES``: the
    same source, and compiled here, the same constants, names and signature (the bytecode
    itself may differ with how the stdlib was compiled). Else None."""
    code = getattr(original, "__code__", None)
    if code is None or original.__defaults__ or original.__kwdefaults__:
        return None
    if original.__globals__.get("collections", collections) is not collections:
        return None
    try:
        lines = inspect.getsource(original).splitlines()
    except (OSError, TypeError):
        return None
    found = "\n".join(line.rstrip() for line in lines[1:] if line.strip())
    for body in _STDLIB_BODIES:
        if textwrap.dedent(found) != textwrap.dedent(body):
            continue
        namespace: dict[str, Any] = {}
        # In a class body, as the original is (3.14 flags a method's code as such), and with
        # dont_inherit: this module's __future__ flags would change the code's flags.
        method = textwrap.indent(f"def __init__(self):\n{body}\n", "    ")
        exec(compile(f"class Ref:\n{method}", "<ref>", "exec", dont_inherit=True), {}, namespace)
        ref = namespace["Ref"].__dict__["__init__"].__code__
        if (ref.co_consts, ref.co_names, ref.co_varnames, ref.co_argcount,
                ref.co_kwonlyargcount, ref.co_flags) == (
                code.co_consts, code.co_names, code.co_varnames, code.co_argcount,
                code.co_kwonlyargcount, code.co_flags):
            return body
    return None


def _lazy_init(original: Any, tracker: PrimitiveTracker, kind: str | None) -> Any:
    """The lazy ``__init__`` for ``original`` (see ``_LAZY_INIT``): it runs the original,
    then notes the creating frame's code and offset (the common creator, a frame of the
    app's own code, is recognised without a call) in ``_asyncwatch_state``."""
    body = _stdlib_body(original)
    params = ""
    if body is None:
        body, params = _CALL_ORIGINAL, ", *args, **kwargs"
    name = "kind" if kind else "type(self).__name__"
    source = _LAZY_INIT.format(params=params, body=body, name=name)
    filename = f"<asyncwatch {original.__qualname__}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    scope = {
        "original": original, "tracker": tracker, "kind": kind, "getframe": sys._getframe,
        "app_files": _APP_FILES, "caller": _caller, "collections": collections,
    }
    exec(compile(source, filename, "exec", dont_inherit=True), scope, namespace)
    init = namespace["__init__"]
    # Argument errors name the class's method, as the original's would.
    init.__code__ = init.__code__.replace(co_name=original.__code__.co_name,
                                          co_qualname=original.__code__.co_qualname)
    return init


class PrimitiveState:
    """What asyncwatch knows about one Lock, Semaphore, Condition, Event or Queue.

    Only ``tracker``, ``kind`` and the creation site are set at creation; the rest keep the
    class defaults until used (creating a lock stays cheap).
    """

    holder: Any = None  # Lock: the task holding it
    holders: dict[Any, int] | None = None  # Semaphore: task -> permits held
    initial: int | None = None  # Semaphore: permits at creation (None: unknown)
    uncertain = False  # Semaphore: released by a task that did not hold it
    part_of: PrimitiveState | None = None  # a Condition's lock: the Condition
    loop: Any = None  # the loop it was last acquired on (finds the current task cheaply)
    waits = 0  # acquires that found it taken
    wait_s = 0.0  # total time those acquires waited
    track: Any = None  # Semaphore: the advisor's level track (see ``track_semaphore``)
    ordinal = 0  # numbered among the objects described from the same site (``number()``)
    _name: str | None

    def __init__(self, tracker: PrimitiveTracker, kind: str, where: tuple[Any, int] | None):
        self.tracker = tracker
        self.kind = kind
        self._where = where

    @property
    def site(self) -> tuple[str, int, str] | None:
        """(filename, line, function) where the app created it (None: before install)."""
        where = self._where
        if where is None:
            return None
        code, offset = where
        function = getattr(code, "co_qualname", code.co_name)
        return (code.co_filename, _line_of(code, offset), function)

    @property
    def name(self) -> str | None:
        """The variable it was assigned to where the app created it, if that can be read
        (see ``_name_at``); worked out once, when a finding needs it."""
        try:
            return self._name
        except AttributeError:
            pass
        where = self._where
        name = _name_at(*where) if where is not None else None
        self._name = name
        return name

    def held(self) -> int:
        """Permits (or the lock) held now, by tasks asyncwatch saw acquire them."""
        if self.kind == "Lock":
            return 0 if self.holder is None else 1
        return sum(self.holders.values()) if self.holders else 0

    def describe(self) -> str:
        """'Lock 'ledger' created at app.py:12 in main' (or 'the lock of Condition ...')."""
        if self.part_of is not None:
            return f"the lock of {self.part_of.describe()}"
        site = self.site
        if site is None:
            return f"{self.kind} (created before asyncwatch was installed)"
        filename, line, function = site
        name = self.name
        if name:
            named = f" {name!r}"
        elif self.ordinal and self.tracker.site_numbers.get(self._where_key(), 0) > 1:
            named = f" #{self.ordinal}"  # several made on one line, none with a name
        else:
            named = ""
        return f"{self.kind}{named} created at {filename}:{line} in {function}"

    def _where_key(self) -> tuple[Any, ...] | None:
        where = self._where
        return None if where is None else (id(where[0]), where[1])

    def number(self) -> None:
        """Number it among the objects described so far that were created at the same place
        (``Lock #2 created at ...`` when the source gives no name to tell them apart)."""
        if self.ordinal or self._where is None:
            return
        key = self._where_key()
        numbers = self.tracker.site_numbers
        if len(numbers) > 10_000:
            numbers.clear()  # bounded; numbering restarts
        self.ordinal = numbers[key] = numbers.get(key, 0) + 1


class PrimitiveObserver:
    """Extension point: override any of these; only overridden methods are ever called."""

    def created(self, obj: Any, state: PrimitiveState) -> None:
        """A Lock/Semaphore/Condition/Event/Queue was created while installed."""

    def acquired(self, state: PrimitiveState, task: Any, waited_s: float | None) -> None:
        """A Lock or Semaphore was acquired by ``task``; ``waited_s`` is None if it was free."""

    def released(self, state: PrimitiveState, task: Any) -> None:
        """A Lock or Semaphore was released (``task`` is the releasing task, or None)."""


def state_of(obj: Any) -> PrimitiveState | None:
    """The state asyncwatch keeps for ``obj``, if any (any tracker, current or not).

    Creation stores only ``(tracker, kind, site)``; it becomes a ``PrimitiveState`` here, or
    on the first acquire.
    """
    try:
        state = vars(obj).get(STATE_ATTR)
    except TypeError:
        return None
    if state is None or type(state) is PrimitiveState:
        return state
    if type(state) is tuple and len(state) == 3:
        tracker, kind, where = state
        state = PrimitiveState(tracker, kind, where)
        setattr(obj, STATE_ATTR, state)
        return state
    return None


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
        _SKIPPED.update(_skipped_files())
        self.active = True
        locks = asyncio.locks
        fast_paths = _fast_paths_match()
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
        every creation. See ``_lazy_init`` for how the lazy wrapper is kept cheap."""
        original = cls.__dict__["__init__"]
        tracker = self
        getframe = sys._getframe
        caller = _caller

        def eager_init(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            if tracker.active:
                try:
                    tracker.made(self, kind or type(self).__name__, caller(getframe(1)))
                except Exception as exc:
                    tracker.fault(exc)

        self._patch(cls, "__init__", _lazy_init(original, tracker, kind) if lazy else eager_init)

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

    def up(self, task: Any, waited_s: float | None) -> None:
        """Nothing to record."""

    def down(self, task: Any) -> None:
        """Nothing to record."""


_UNTRACKED = _Untracked()


def _fast_paths_match() -> bool:
    """Whether Lock and Semaphore keep the state their fast paths test (``_locked``,
    ``_value``, ``_waiters``) as on 3.11-3.14; if a future Python changes that, the wrappers
    fall back to calling the original ``acquire`` every time."""
    lock = asyncio.locks.Lock.__new__(asyncio.locks.Lock)
    sem = asyncio.locks.Semaphore.__new__(asyncio.locks.Semaphore)
    try:
        asyncio.locks.Lock.__dict__["__init__"](lock)
        asyncio.locks.Semaphore.__dict__["__init__"](sem, 1)
    except Exception:
        return False
    return (
        set(vars(lock)) == {"_waiters", "_locked"} | ({STATE_ATTR} & set(vars(lock)))
        and {"_waiters", "_value"} <= set(vars(sem))
        and vars(lock)["_locked"] is False and not vars(lock)["_waiters"]
        and vars(sem)["_value"] == 1
    )
