"""The deadlock scanner's records: what it remembers per waiting task across scans, what
one scan collects, the wait-for graph it builds, and the per-scan indexes of its stuck checks;
and the cycle probe (``closes_cycle``, ``probe_steps``), which brings the scans forward.

Every class here has ``__slots__`` and is recognised by ``own_record`` so that reference
counting (``_reach``) can tell asyncwatch's own references from the app's.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import sys
import weakref
from collections.abc import Callable, Generator, Iterable
from typing import Any

from ..sync import PrimitiveState
from ._reach import Verdict
from ._waitgraph import _GATHERING, DEAD, LIVE, TASK_TYPES, Wait, is_task

LOCKLIKE = ("lock", "semaphore")


class _Strong:
    """Stands in for a weak reference to a future type without weak-reference support."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __call__(self) -> Any:
        return self.obj


def _ref(fut: asyncio.Future[Any]) -> Any:
    try:
        return weakref.ref(fut)
    except TypeError:
        return _Strong(fut)


class Seen:
    """One task's current wait, across scans. It holds the future the task waits on only
    weakly, and nothing else of the app: a wait that ends between two scans frees its future
    (a finished gather and its results, a finished task) at once, not at the next scan."""

    __slots__ = ("_fut", "check_at", "checks", "follow", "kind", "reported", "since")

    def __init__(self, fut: asyncio.Future[Any], since: float) -> None:
        self._fut = _ref(fut)
        self.since = since
        self.kind: str | None = None  # set when a second scan finds the same wait
        self.follow = False  # an edge kind: part of the deadlock graph every scan
        self.check_at = since  # when next to look at it (classify, then stuck checks)
        self.checks = 0
        self.reported = False

    @property
    def fut(self) -> Any:
        """The future waited on, or None once it is gone."""
        return self._fut()


class Sweep:
    """What one scan collects while it walks the task list (possibly in slices)."""

    __slots__ = ("closed", "current", "due", "followed", "new", "now", "old")

    def __init__(self, old: dict[int, Seen], current: Any, now: float) -> None:
        self.old = old
        self.current = current
        self.now = now
        self.new: dict[int, Seen] = {}
        self.followed: list[Entry] = []
        # (check_at, since, n, task, rec): sortable as is, n breaking ties before the task
        self.due: list[tuple[float, float, int, Any, Seen]] = []
        self.closed = False  # a new wait closed a cycle of tasks awaiting tasks


class Entry:
    """A settled wait during one scan: the task, the future it waits on, and the record."""

    __slots__ = ("fut", "rec", "task", "wait")

    def __init__(self, task: asyncio.Task[Any], fut: asyncio.Future[Any], rec: Seen) -> None:
        self.task = task
        self.fut = fut
        self.rec = rec
        self.wait: Wait | None = None


class Graph:
    """One scan's wait-for graph: task nodes (``nodes``), then lock/semaphore nodes (``res``).
    ``waiting`` has every followed wait, ``nodes`` only those that may be on a cycle."""

    __slots__ = ("live0", "mode", "nodes", "res", "succ", "waiting")

    def __init__(self, nodes: list[Entry]) -> None:
        self.nodes = nodes
        self.waiting: list[Entry] = nodes
        self.succ: list[list[int]] = []
        self.mode: list[str] = []
        self.live0: list[bool] = []
        self.res: list[Wait] = []


class LoopState:
    """What the scanner keeps for one loop. Its futures and handle reference the loop, so the
    loop owns it (through the pending scan's handle) and the detector keeps it only weakly."""

    __slots__ = (
        "__weakref__", "costs", "cycles", "deadlocked", "expedite", "handle", "probe",
        "probe_after", "probe_costs", "probed", "reported", "seen", "stuck",
    )

    def __init__(self) -> None:
        self.seen: dict[int, Seen] = {}
        self.reported: set[int] = set()  # ids of tasks whose current wait was reported stuck
        self.cycles: set[frozenset[tuple[int, int]]] = set()
        self.deadlocked = 0
        self.stuck = 0
        self.handle: Any = None
        self.expedite = 0  # scans still to run right away (a lock wait closed a cycle)
        self.costs: list[float] = []  # CPU seconds of the last timed scans (at most 3)
        self.probe: Any = None  # the cycle probe's pending handle
        self.probed: dict[int, Any] = {}  # id(task) -> weak ref to the future it was probed on
        self.probe_costs: list[float] = []  # CPU seconds of the last probes (at most 3)
        self.probe_after = 0.0  # the probe brings a scan forward again no sooner than this


class Checks:
    """Per-scan state of the stuck checks: verdicts per object, reverse edges on demand."""

    __slots__ = ("_rev", "by_task", "graph", "verdicts")

    def __init__(self, by_task: dict[int, Entry], graph: Graph) -> None:
        self.by_task = by_task  # this scan's entries (followed waits and checked ones)
        self.graph = graph
        self.verdicts: dict[int, tuple[Verdict, list[Any]] | None] = {}
        self._rev: dict[int, list[Entry]] | None = None

    @staticmethod
    def waiters_of(wait: Wait) -> list[Any]:
        """Tasks waiting on the same object: the owners of the wake-up callbacks of its
        waiter futures (or of the future itself)."""
        obj = wait.obj
        futs = [obj] if wait.kind == "future" else []
        for holder in (obj, getattr(obj, "_finished", None)):
            for attr in ("_waiters", "_getters", "_putters"):
                futs.extend(getattr(holder, attr, None) or ())
        out: dict[int, Any] = {}
        for f in futs:
            for entry in getattr(f, "_callbacks", None) or ():
                cb = entry[0] if isinstance(entry, tuple) else entry
                owner = getattr(cb, "__self__", None)
                if is_task(owner) and getattr(owner, "_fut_waiter", None) is f:
                    out[id(owner)] = owner
        return list(out.values())

    def own_refs(self, waiters: list[Any]) -> list[Any]:
        """asyncwatch's own records that may reference the waiters' object: this scan's
        entries of the waiters (task, future, Wait). A reference missed here only sends the
        decision to the heap walk, which skips asyncwatch's objects by type."""
        by_task = self.by_task
        out: dict[int, Any] = {}
        for t in waiters:
            e = by_task.get(id(t))
            if e is not None:
                out[id(e)] = e
                if e.wait is not None:
                    out[id(e.wait)] = e.wait
                    out[id(e.wait.succ)] = e.wait.succ
        return list(out.values())

    def rev_steps(self, per_slice: int) -> Generator[str, None, None]:
        """Build the reverse edges ``dependents`` follows, yielding every ``per_slice``
        waits (call before ``dependents``; it builds them at once otherwise)."""
        rev: dict[int, list[Entry]] = {}
        for k, e in enumerate(self.graph.waiting):
            if e.wait is not None and not e.wait.escapable:
                for t in e.wait.succ:
                    rev.setdefault(id(t), []).append(e)
            if k % per_slice == per_slice - 1:
                yield "stuck"
        self._rev = rev

    def dependents(self, private: set[int]) -> list[Any]:
        """Tasks that can only wake through the tasks in ``private`` (added to it). Only
        waits that still hold count (code may have run since the graph was built)."""
        if self._rev is None:
            for _ in self.rev_steps(1 << 30):
                pass
        assert self._rev is not None
        out: list[Any] = []
        todo = list(private)
        while todo:
            for e in self._rev.get(todo.pop(), ()):
                tid = id(e.task)
                if tid in private or not still(e.task, e.rec):
                    continue
                wait = e.wait
                assert wait is not None
                ids = [id(t) for t in wait.succ if is_task(t) and not t.done()]
                if wait.kind in LOCKLIKE or wait.mode == "or":
                    caught = all(x in private for x in ids)
                else:
                    caught = True
                if caught:
                    private.add(tid)
                    out.append(e.task)
                    todo.append(tid)
        return out


if sys.version_info >= (3, 12):

    def tasks_of(loop: asyncio.AbstractEventLoop) -> list[Any]:
        return list(asyncio.all_tasks(loop))

else:  # 3.11's all_tasks calls a Python helper per task; this is the same filter inline

    def tasks_of(loop: asyncio.AbstractEventLoop) -> list[Any]:
        registry = asyncio.tasks._all_tasks  # type: ignore[attr-defined]
        for _ in range(1000):
            try:
                every = list(registry)
                break
            except RuntimeError:  # changed size during iteration (another thread)
                continue
        else:
            return list(asyncio.all_tasks(loop))
        return [t for t in every if getattr(t, "_loop", None) is loop and not t.done()]


def task_refs(loop: asyncio.AbstractEventLoop) -> tuple[list[Any], bool]:
    """The loop's tasks for a scan made in slices: ``(items, weak)``. Where asyncio keeps its
    tasks in a ``WeakSet`` (3.11 to 3.13), the items are weak references copied from it at
    once (in C: no Python code per task), so that nothing is held between slices; a task
    that is gone, done or of another loop is left out when its slice comes. Elsewhere,
    ``asyncio.all_tasks(loop)`` as a list (``weak`` False)."""
    registry = getattr(asyncio.tasks, "_all_tasks", None)  # 3.11
    if registry is None and sys.version_info < (3, 14):
        registry = getattr(asyncio.tasks, "_scheduled_tasks", None)  # 3.12, 3.13
    data = getattr(registry, "data", None)
    if isinstance(registry, weakref.WeakSet) and isinstance(data, set):
        for _ in range(1000):
            try:
                return list(data), True
            except RuntimeError:  # changed size during the copy (another thread)
                continue
    return list(asyncio.all_tasks(loop)), False


# ---------------------------------------------------------------------- the cycle probe

Follow = Callable[[Any, Any], Iterable[Any]]  # (task, the future it waits on) -> what on
MAX_CHAIN = 64  # tasks and gathers followed from a new wait looking for a way back to it
PROBE_SLICE = 4096  # tasks a probe slice reads the wait of (in C: no Python code per task)
PROBE_LOOKS = 100  # of which new waits on a task or gather followed (at most MAX_CHAIN each)
# Futures a probed wait may be on: a task, or the future of a gather() (and their subclasses:
# asyncwatch's own gather observer, _batches, is one).
PROBED_TYPES: tuple[type, ...] = (*TASK_TYPES, _GATHERING) if _GATHERING is not None else TASK_TYPES


def closes_cycle(task: asyncio.Task[Any], fut: Any, follow: Follow | None = None) -> bool:
    # ``fut``: what the task waits on (a future, a gather, a task: read through private fields)
    """Does ``task``, waiting on ``fut``, close a cycle of tasks awaiting tasks, directly or
    through ``gather()``? Follows each pending task's ``_fut_waiter`` and each gather's
    children, depth first, at most ``MAX_CHAIN`` tasks and gathers; a few attribute reads each.
    A task waiting on anything else is followed through ``follow(task, its future)`` (what
    that wait waits on: a TaskGroup's tasks, a lock's holders...), when given. A yes only
    brings the scans forward: they decide (``doomed``) whether it is a deadlock."""
    probed, gathering = PROBED_TYPES, _GATHERING
    todo = [fut]
    seen: set[int] = set()
    while todo:
        node = todo.pop()
        if node is task:
            return True
        if id(node) in seen or not issubclass(type(node), probed) or node.done():
            continue
        seen.add(id(node))
        if len(seen) > MAX_CHAIN:
            return False
        if gathering is not None and isinstance(node, gathering):
            todo.extend(getattr(node, "_children", None) or ())
            continue
        nxt = getattr(node, "_fut_waiter", None)
        if nxt is None or nxt.done():
            continue
        if issubclass(type(nxt), probed) or follow is None:
            todo.append(nxt)
        else:
            todo.extend(follow(node, nxt))
    return False


def probe_steps(
    loop: asyncio.AbstractEventLoop, state: LoopState, follow: Follow | None = None) -> Generator[
    str, None, bool
]:
    """The cycle probe: does a wait of a task of ``loop`` on a task or a gather that no probe
    followed yet (``state.probed``) close a cycle (``closes_cycle``, with ``follow``)?
    Cheaper than a scan by far: the waits of all tasks are read in C (``PROBE_SLICE`` a
    slice), and only new waits on a task or gather run Python code (``PROBE_LOOKS`` a slice,
    counting each call of ``follow`` as one too). Yields between slices; holds the tasks only
    within a slice, and keeps weak references to the futures only."""
    items, weak = task_refs(loop)
    old, new = state.probed, {}
    get, deref, repeat = old.get, operator.call, itertools.repeat
    wait_of = operator.attrgetter("_fut_waiter")
    found = False
    looks = 0
    counted: Follow | None = None
    if follow is not None:
        inner = follow

        def counted(task: asyncio.Task[Any], fut: asyncio.Future[Any]) -> Iterable[Any]:
            nonlocal looks
            looks -= 1
            return inner(task, fut)
    start = 0
    while start < len(items):
        chunk = items[start : start + PROBE_SLICE]
        tasks = list(map(deref, chunk)) if weak else chunk
        del chunk
        try:
            futs: list[Any] = list(map(wait_of, tasks))
        except AttributeError:  # a task gone (None), or a task class without _fut_waiter
            futs = list(map(getattr, tasks, repeat("_fut_waiter"), repeat(None)))
        kinds = list(map(type, futs))
        probed = {k for k in set(kinds) if issubclass(k, PROBED_TYPES)}  # a few types
        hits = list(itertools.compress(range(len(futs)), map(probed.__contains__, kinds)))
        del kinds
        looks = PROBE_LOOKS
        end = len(tasks)
        for i in hits:
            task, fut = tasks[i], futs[i]
            if getattr(task, "_loop", None) is not loop or fut.done():
                continue
            tid = id(task)
            ref = get(tid)
            if ref is not None and ref() is fut:
                new[tid] = ref
                continue
            if looks <= 0:  # the rest of this chunk waits for the next slice
                end = i
                break
            looks -= 1
            new[tid] = _ref(fut)
            if not found:
                found = closes_cycle(task, fut, counted)
        task = fut = None  # nothing of the app's kept between slices
        del tasks, futs, hits
        start += end
        if start < len(items):
            yield "probe"
    state.probed = new
    return found


OWN_TYPES = (Wait, Seen, Sweep, Entry, Graph, Checks, LoopState, PrimitiveState)


def own_record(obj: Any) -> bool:
    return isinstance(obj, OWN_TYPES)




def trim(entries: list[Entry]) -> list[Entry]:
    """``trim_steps`` in one go."""
    steps = trim_steps(entries, 1 << 30)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            kept: list[Entry] = stop.value
            return kept


def trim_steps(entries: list[Entry], per_slice: int) -> Generator[str, None, list[Entry]]:
    """Leave out waits that cannot be on a cycle: those on nothing but tasks outside the set
    (running, runnable, or waiting on something that can wake them), repeatedly. What is left
    out is live, exactly as if it were in the graph; a lock held by a finished task stays.
    Linear: each wait counts its successors in the set, and a wait left out takes one off
    the count of each wait on it. Yields every ``per_slice`` waits counted."""
    index = {id(e.task): i for i, e in enumerate(entries)}
    support = [0] * len(entries)
    preds: dict[int, list[int]] = {}
    for i, e in enumerate(entries):
        wait = e.wait
        assert wait is not None
        lock = wait.kind in LOCKLIKE
        for s in wait.succ:
            j = index.get(id(s))
            if j is not None:
                support[i] += 1
                preds.setdefault(j, []).append(i)
            elif lock and s.done():
                support[i] += 1  # for good: a finished holder never releases
        if i % per_slice == per_slice - 1:
            yield "graph"
    out = [n == 0 for n in support]
    todo = [i for i, gone in enumerate(out) if gone]
    while todo:
        for i in preds.get(todo.pop(), ()):
            if not out[i]:
                support[i] -= 1
                if support[i] == 0:
                    out[i] = True
                    todo.append(i)
    return [e for i, e in enumerate(entries) if not out[i]]


def still(task: asyncio.Task[Any], rec: Seen) -> bool:
    """Whether ``task`` still waits on the future ``rec`` recorded."""
    fut = getattr(task, "_fut_waiter", None)
    return fut is rec.fut and fut is not None and not fut.done()


def node_of(obj: Any, index: dict[int, int], *, holder: bool) -> int:
    """Graph node of a successor: a settled task's index, LIVE or DEAD."""
    if not is_task(obj):
        return LIVE  # a plain future: whoever resolves it is not followed
    if obj.done():
        return DEAD if holder else LIVE
    j = index.get(id(obj))
    return LIVE if j is None else j


def behind(group: list[int], succ: list[list[int]], bad: list[bool]) -> list[int]:
    """Doomed nodes outside ``group`` that wait (transitively) on it."""
    members = set(group)
    preds: dict[int, list[int]] = {}
    for v, edges in enumerate(succ):
        if bad[v]:
            for w in edges:
                if w >= 0:
                    preds.setdefault(w, []).append(v)
    out: list[int] = []
    seen = set(members)
    todo = list(members)
    while todo:
        for v in preds.get(todo.pop(), ()):
            if v not in seen:
                seen.add(v)
                out.append(v)
                todo.append(v)
    return sorted(out)
