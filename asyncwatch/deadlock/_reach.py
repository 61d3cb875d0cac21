"""Can anything other than the stuck tasks themselves still reach an object?

A task waiting on an Event, a Condition, a Queue or a bare Future can only be woken by code
that holds a reference to that object. ``reach(target, private)`` walks *up* the reference
graph from ``target`` with ``gc.get_referrers`` (one heap pass per level, or per 16 objects
of a level; ``Walk`` makes them one at a time so that the loop can run in between) and stops
at:

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

Only ``UNREACHABLE`` (the walk ran out of referrers, and a closing reference count over
everything it met, made at one instant, confirms that nothing else refers to any of it)
makes a stuck task. Each pass goes over every object gc tracks, so the detector walks rarely:
once per waited-on object per threshold period, at most one object per scan, and in a timed
scan only when one pass is expected to fit a slice.
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

from .._core.stacks import PACKAGE_DIR

REACHABLE = "reachable"
UNREACHABLE = "unreachable"
UNKNOWN = "unknown"

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
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
    return not filename.startswith(_ASYNCIO_DIR) and not filename.startswith(PACKAGE_DIR)


class Walk:
    """A walk up from ``target`` made in steps, each one ``gc.get_referrers`` pass over at most
    ``per_pass`` objects of the current level (``step()``), so that a caller can let its loop
    run between passes. Between steps the walk holds the objects it has visited (at most
    ``max_objects``, dropped with the walk).

    Other code may run between two steps and move references around, so an ``UNREACHABLE``
    outcome is confirmed in the last step, at one instant and without a heap pass: every
    reference to every visited object must come from a visited object, a private object, or
    a dead end met on the way (a finished frame, asyncwatch's own records), as
    ``sys.getrefcount`` counts them. A set so closed can only be reached through the private
    objects. Otherwise the outcome is ``UNKNOWN``.
    """

    __slots__ = (
        "_end_ids", "_ends", "_frontier", "_held", "_level", "_next", "_seen",
        "_visited", "done", "max_levels", "max_objects", "max_s", "passes",
        "per_pass", "private", "skip", "spent", "verdict",
    )

    def __init__(
        self,
        target: list[Any],
        private: set[int],
        skip: Callable[[Any], bool] = lambda obj: False,
        *,
        max_levels: int = 8,
        max_objects: int = 2000,
        max_s: float = 0.1,
        per_pass: int = 16,
    ) -> None:
        self.private = private
        self.skip = skip
        self.max_levels = max_levels
        self.max_objects = max_objects
        self.max_s = max_s
        self.per_pass = per_pass
        self.passes = 0
        self.done = False
        self.verdict: Verdict | None = None
        self._seen = {id(o) for o in target}
        self._visited: list[Any] = list(target)  # every object met on the way up, once
        # private referrers and dead ends (finished frames, asyncwatch's records) met
        self._ends: list[Any] = []
        self._end_ids: set[int] = set()
        self._frontier: list[Any] = target  # this level's objects not yet passed over
        self._next: list[Any] = []  # the next level's
        self._level = 0
        self._held = False
        self.spent = 0.0  # time spent in passes so far

    def _finish(self, verdict: Verdict) -> Verdict:
        self.verdict = verdict
        self.done = True
        self._visited = self._ends = self._frontier = self._next = []
        return verdict

    def step(self) -> Verdict | None:
        """One heap pass (or, at the end, the closing check): the verdict once decided."""
        if self.done:
            return self.verdict
        if not self._frontier:
            if not self._next:
                return self._finish(self._confirm())
            self._level += 1
            self._frontier, self._next = self._next, []
            if self._level >= self.max_levels:
                return self._finish(Verdict(UNKNOWN, "level budget", self._held))
        if self.spent > self.max_s:
            return self._finish(Verdict(UNKNOWN, "time budget", self._held))
        began = time.perf_counter()
        chunk = self._frontier[: self.per_pass]
        del self._frontier[: self.per_pass]
        verdict = self._pass(chunk)
        self.passes += 1
        self.spent += time.perf_counter() - began
        if verdict is not None:
            return self._finish(verdict)
        if len(self._seen) > self.max_objects:
            return self._finish(Verdict(UNKNOWN, "object budget", self._held))
        return None

    def _pass(self, frontier: list[Any]) -> Verdict | None:
        private, seen, skip = self.private, self._seen, self.skip
        nxt, ends, end_ids = self._next, self._ends, self._end_ids
        held = self._held
        # Passed as is, this tuple is the call's argument tuple, which some versions return
        # among the referrers: known by identity (a closure's one-cell tuple looks the same).
        args = tuple(frontier)
        refs = gc.get_referrers(*args)
        if any(r is args for r in refs):
            # 3.13+ copies the arguments into a tuple of its own, so ours is a referrer: left
            # in ``refs`` it would outlive ``del args`` below and count as a hidden reference.
            refs = [r for r in refs if r is not args]
        position = {id(o): i for i, o in enumerate(frontier)}
        found = [0] * len(frontier)
        # our own lists holding a frontier object: `refs`, and the walk's `_visited`
        in_refs = [0] * len(frontier)
        mine_ids = (
            id(frontier), id(nxt), id(self._visited), id(self._frontier), id(ends), id(args)
        )
        root = ""
        for r in refs:
            rid = id(r)
            if rid in mine_ids:
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
            if rid in seen:
                continue
            if rid in private or skip(r) or isinstance(r, types.FrameType):
                if rid not in end_ids:
                    end_ids.add(rid)
                    ends.append(r)
                continue
            seen.add(rid)
            why = _root(r)
            if why is not None:
                root = why
                break
            nxt.append(r)
            self._visited.append(r)
        r = x = None  # drop loop references before counting
        del args
        self._held = held
        if root:
            return Verdict(REACHABLE, root, held)
        for i in range(len(frontier)):
            # held by: `frontier`, `_visited` (both counted in _BASE_WALK), `refs` (in_refs)
            hidden = sys.getrefcount(frontier[i]) - _BASE_WALK - found[i] - in_refs[i]
            if hidden > 0:
                return Verdict(UNKNOWN, f"{hidden} reference(s) gc cannot see", held)
        del refs
        return None

    def _confirm(self) -> Verdict:
        """The closing check (see the class docstring), one pass over the visited objects'
        and the holders' references: no heap pass."""
        visited = self._visited
        index = {id(o): i for i, o in enumerate(visited)}
        counted = [0] * len(visited)
        holders = [*visited, *self._ends]
        for h in holders:
            for x in gc.get_referents(h):
                i = index.get(id(x))
                if i is not None:
                    counted[i] += 1
        h = x = None  # drop loop references before counting
        del holders
        for i in range(len(visited)):
            if sys.getrefcount(visited[i]) - _BASE - counted[i] != 0:
                return Verdict(UNKNOWN, "changed during the walk", self._held)
        return Verdict(UNREACHABLE, held_by_user=self._held)


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


_OPAQUE = (types.ModuleType, types.CodeType, type, types.BuiltinFunctionType)


def closed(target: list[Any], private: list[Any], own: list[Any], *, max_objects: int = 200,
           max_depth: int = 4) -> Verdict | None:
    """Decide ``UNREACHABLE`` without a heap pass, for an object the waiters hold through
    objects of their own (``self.event`` on an object only their frames know, a queue in a
    closure cell): follow references *down* from the ``private`` objects (up to
    ``max_depth`` levels and ``max_objects`` objects, into functions' closures only, not into
    modules, classes, code or anything that counts as a root; from the waiters' coroutines
    and frames, not from the task objects themselves), keep the objects that lead to ``target``, and
    check with ``sys.getrefcount`` that every reference to each of them comes from one of
    them, a private object or asyncwatch's ``own`` records. Such a set can only be reached
    through the private objects. None when that does not hold (a heap walk may still tell).
    ``target``: a list holding the object, which the caller gives up (it is reused).
    """
    private_ids = {id(p) for p in private}
    objs = target  # every object met, once; `index` gives its position
    del target[1:]
    index: dict[int, int] = {id(objs[0]): 0}
    holders_of: list[list[int]] = [[]]  # positions of the met objects referencing each
    todo: list[int] = []
    for h in private:
        if asyncio.isfuture(h):
            continue  # a task: its coroutine is among the private objects too
        for x in gc.get_referents(h):
            xid = id(x)
            if xid in private_ids or xid in index or not gc.is_tracked(x):
                continue
            if len(objs) >= max_objects:
                break
            if isinstance(x, _OPAQUE) or _root(x) is not None:
                continue
            index[xid] = len(objs)
            objs.append(x)
            holders_of.append([])
            todo.append(len(objs) - 1)
    depth = 1
    while todo and depth < max_depth and len(objs) < max_objects:
        depth += 1
        nxt: list[int] = []
        for i in todo:
            if i == 0:
                continue  # (the target's own references do not matter)
            obj = objs[i]
            refs: Any
            # A function is followed into its closure only (not its globals, defaults...).
            if isinstance(obj, types.FunctionType):
                refs = [] if obj.__closure__ is None else [obj.__closure__]
            else:
                refs = gc.get_referents(obj)
            obj = None
            for x in refs:
                xid = id(x)
                j = index.get(xid)
                if j is not None:
                    holders_of[j].append(i)
                    continue
                if xid in private_ids or not gc.is_tracked(x) or len(objs) >= max_objects:
                    continue
                if isinstance(x, _OPAQUE) or _root(x) is not None:
                    continue
                index[xid] = len(objs)
                objs.append(x)
                holders_of.append([i])
                nxt.append(len(objs) - 1)
        todo = nxt
    x = refs = None
    # The objects that lead to the target (the target included).
    path = {0}
    stack = [0]
    while stack:
        for i in holders_of[stack.pop()]:
            if i not in path:
                path.add(i)
                stack.append(i)
    counted = dict.fromkeys(path, 0)
    held = False
    for h in [*private, *own]:
        user = not held and id(h) in private_ids and is_user_code(h)
        for x in gc.get_referents(h):
            j = index.get(id(x))
            if j is not None and j in counted:
                counted[j] += 1
                if user and not _await_iter(x):
                    held = True
    for i in path:
        for x in gc.get_referents(objs[i]):
            j = index.get(id(x))
            if j is not None and j in counted:
                counted[j] += 1
    h = x = None  # drop loop references before counting
    for j, n in counted.items():
        if sys.getrefcount(objs[j]) - _BASE - n != 0:
            return None
    return Verdict(UNREACHABLE, "", held)


def reach(
    target: list[Any],
    private: set[int],
    skip: Callable[[Any], bool] = lambda obj: False,
    *,
    max_levels: int = 8,
    max_objects: int = 2000,
    max_s: float = 0.1,
) -> Verdict:
    """Walk up from the objects in ``target`` (a list the caller gives up: it is reused), all
    the passes in one go (``Walk`` makes them one at a time).

    ``private``: ids of objects whose references do not count (not followed). ``skip``:
    asyncwatch's own bookkeeping objects (counted, not followed). The walk gives up
    (``UNKNOWN``) past ``max_levels`` levels, ``max_objects`` objects or ``max_s`` of passes.
    """
    walk = Walk(target, private, skip, max_levels=max_levels, max_objects=max_objects,
                max_s=max_s)
    while True:
        verdict = walk.step()
        if verdict is not None:
            return verdict


def _measure(frontier: list[Any]) -> int:
    """What ``_walk`` counts for an object held by nothing but its frontier list (the same
    expression shape, so interpreter details such as borrowed stack references cancel out)."""
    return sys.getrefcount(frontier[0])


_BASE = _measure([object()])
_BASE_WALK = _BASE + 1  # a walk's object is in its pass's frontier and in ``_visited``
