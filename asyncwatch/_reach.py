"""Can anything other than the stuck tasks themselves still reach an object?

A task waiting on an Event, a Condition, a Queue or a bare Future can only be woken by code
that holds a reference to that object. ``reach(target, private)`` walks *up* the reference
graph from ``target`` with ``gc.get_referrers`` (one heap pass per level, all the level's
objects at once) and stops at:

* a **root**, something that can still run or be reached by code that runs: a module, a
  class, an event loop, a thread, a pending task or a coroutine/generator/frame that is not
  private: ``REACHABLE``;
* a **private** object (the waiting tasks, the tasks that can only wake through them, their
  coroutines and frames): not followed. When one of those is user code (not asyncio's own
  frames) holding the object (or what holds it) by more than the iterator ``await`` leaves on
  its stack, the object is *held* by the app: that tells a forgotten object from the
  deliberate ``await asyncio.Future()`` / ``await asyncio.Event().wait()`` forever;
* a **finished frame** (kept by a traceback: since 3.11 a frame object only shows its locals
  to gc once its code has returned): it cannot run again, so it cannot wake anything; not
  followed;
* a **hidden** reference: ``sys.getrefcount`` says the object has more references than the
  referrers gc can list (a C extension, a local variable of a function running in another
  thread, ``gc.freeze()``): ``UNKNOWN``;
* the budget (levels, objects): ``UNKNOWN``.

Only ``UNREACHABLE`` (the walk ran out of referrers) makes a stuck task. Each level costs one
pass over every object gc tracks, so the detector calls this rarely: once per waited-on object
per threshold period, at most one object per scan.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

REACHABLE = "reachable"
UNREACHABLE = "unreachable"
UNKNOWN = "unknown"

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
_PKG_DIR = os.path.dirname(__file__) + os.sep
_RUNNABLE = (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)
_PY_AWAIT = asyncio.futures._PyFuture.__await__.__code__  # type: ignore[attr-defined]


def _await_iter(obj: Any) -> bool:
    """What ``await fut`` leaves on the awaiting frame's stack: not a name the app gave."""
    if type(obj).__name__ == "FutureIter":
        return True
    return isinstance(obj, types.GeneratorType) and obj.gi_code is _PY_AWAIT


class Verdict:
    """Outcome of one walk."""

    __slots__ = ("held_by_user", "outcome", "root")

    def __init__(self, outcome: str, root: str = "", held_by_user: bool = False) -> None:
        self.outcome = outcome
        self.root = root  # what made it reachable or unknown, for debugging
        self.held_by_user = held_by_user

    def __repr__(self) -> str:
        return f"<Verdict {self.outcome} {self.root} held_by_user={self.held_by_user}>"


def _is_call_args(obj: Any, frontier: list[Any]) -> bool:
    """The argument tuple of our own ``gc.get_referrers(*frontier)`` call, which Python 3.13
    returns among the referrers (earlier versions leave it out)."""
    return (
        type(obj) is tuple and len(obj) == len(frontier)
        and all(a is b for a, b in zip(obj, frontier, strict=True))
    )


def _root(obj: Any) -> str | None:
    """Why ``obj`` (a non-private referrer) counts as live code or a live namespace."""
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__}"
    if isinstance(obj, type):
        return f"class {obj.__qualname__}"
    if isinstance(obj, _RUNNABLE):
        return f"running code {type(obj).__name__}"
    if isinstance(obj, asyncio.AbstractEventLoop):
        return "the event loop"
    if isinstance(obj, threading.Thread):
        return "a thread"
    if asyncio.isfuture(obj) and hasattr(obj, "get_coro") and not obj.done():
        return "another pending task"
    return None


def is_user_code(obj: Any) -> bool:
    """A coroutine/generator/frame running the app's code (not asyncio's, not ours)."""
    code = getattr(obj, "cr_code", None) or getattr(obj, "gi_code", None)
    code = code or getattr(obj, "ag_code", None) or getattr(obj, "f_code", None)
    if code is None:
        return False
    filename = code.co_filename
    return not filename.startswith(_ASYNCIO_DIR) and not filename.startswith(_PKG_DIR)


def _walk(
    frontier: list[Any],
    private: set[int],
    skip: Callable[[Any], bool],
    *,
    max_levels: int,
    max_objects: int,
    max_s: float,
) -> Verdict:
    seen = {id(o) for o in frontier}
    held = False
    began = time.perf_counter()
    for _level in range(max_levels):
        if not frontier:
            return Verdict(UNREACHABLE, held_by_user=held)
        if time.perf_counter() - began > max_s:
            return Verdict(UNKNOWN, "time budget", held)
        refs = gc.get_referrers(*frontier)
        position = {id(o): i for i, o in enumerate(frontier)}
        found = [0] * len(frontier)
        in_refs = [0] * len(frontier)  # our own list `refs` holding a frontier object
        nxt: list[Any] = []
        root = ""
        for r in refs:
            rid = id(r)
            if rid == id(frontier) or rid == id(nxt):
                continue
            mine = position.get(rid)
            if mine is not None:
                in_refs[mine] += 1
            user = rid in private and not held and is_user_code(r)
            for x in gc.get_referents(r):
                i = position.get(id(x))
                if i is not None:
                    found[i] += 1
                    if user and not _await_iter(x):
                        held = True
            if (
                rid in private or rid in seen or skip(r) or isinstance(r, types.FrameType)
                or _is_call_args(r, frontier)
            ):
                continue
            seen.add(rid)
            why = _root(r)
            if why is not None:
                root = why
                break
            nxt.append(r)
        r = x = None  # drop loop references before counting
        if root:
            return Verdict(REACHABLE, root, held)
        for i in range(len(frontier)):
            hidden = sys.getrefcount(frontier[i]) - _BASE - found[i] - in_refs[i]
            if hidden > 0:
                return Verdict(UNKNOWN, f"{hidden} reference(s) gc cannot see", held)
        del refs
        frontier = nxt
        if len(seen) > max_objects:
            return Verdict(UNKNOWN, "object budget", held)
    if not frontier:
        return Verdict(UNREACHABLE, held_by_user=held)
    return Verdict(UNKNOWN, "level budget", held)


def direct(target: list[Any], private: list[Any], own: list[Any]) -> Verdict | None:
    """The cheap case, decided without a heap pass: every reference to ``target[0]`` comes
    from ``private`` objects (the waiters' tasks and coroutines), from what they alone hold
    on their stacks (the bound ``__aexit__`` of ``async with obj``, the iterator of
    ``await fut``), or from asyncwatch's own ``own`` records, as ``sys.getrefcount``
    confirms (so no hidden reference either). Returns an ``UNREACHABLE`` verdict then, else
    None (a walk is needed)."""
    wanted = id(target[0])
    counted = 0
    held = False
    wrappers: dict[int, list[Any]] = {}  # id -> [wrapper, references from private, by user]
    for holder in private:
        user = is_user_code(holder)
        for x in gc.get_referents(holder):
            if id(x) == wanted:
                counted += 1
                held = held or user
            elif isinstance(x, types.MethodType) or _await_iter(x):
                entry = wrappers.get(id(x))
                if entry is None:
                    entry = wrappers[id(x)] = [x, 0, False]
                entry[1] += 1
                entry[2] = entry[2] or user
    for holder in own:
        for x in gc.get_referents(holder):
            if id(x) == wanted:
                counted += 1
    x = holder = None  # drop loop references before counting
    for entry in wrappers.values():
        inner = sum(1 for y in gc.get_referents(entry[0]) if id(y) == wanted)
        if inner and sys.getrefcount(entry[0]) - _BASE == entry[1]:
            counted += inner
            # `async with obj` on the app's own frame uses the object by name; the iterator
            # `await asyncio.Future()` leaves does not.
            held = held or (entry[2] and isinstance(entry[0], types.MethodType))
    if sys.getrefcount(target[0]) - _BASE - counted == 0:
        return Verdict(UNREACHABLE, "", held)
    return None


def reach(
    target: list[Any],
    private: set[int],
    skip: Callable[[Any], bool] = lambda obj: False,
    *,
    max_levels: int = 8,
    max_objects: int = 5000,
    max_s: float = 0.1,
) -> Verdict:
    """Walk up from the objects in ``target`` (a list the caller gives up: it is reused).

    ``private``: ids of objects whose references do not count (not followed). ``skip``:
    asyncwatch's own bookkeeping objects (counted, not followed). The walk gives up
    (``UNKNOWN``) past ``max_levels`` heap passes, ``max_objects`` objects or ``max_s``.
    """
    return _walk(target, private, skip, max_levels=max_levels, max_objects=max_objects,
                 max_s=max_s)


def _measure(frontier: list[Any]) -> int:
    """What ``_walk`` counts for an object held by nothing but its frontier list (the same
    expression shape, so interpreter details such as borrowed stack references cancel out)."""
    return sys.getrefcount(frontier[0])


_BASE = _measure([object()])
