"""Live deadlock and stuck-task detection over the await graph and lock waits.

**Where it runs.** Each instrumented event loop scans itself with ``loop.call_later`` every
``deadlock_interval_s``: the scan reads only that loop's own state (tasks' ``_fut_waiter``,
await chains, lock waiter queues, holders recorded by ``_primitives``), and on the loop's own
thread that state cannot change under it, so no lock is needed and no half-updated hand-over
(a lock released, its next owner not yet running) can be mistaken for a cycle, which a thread
reading the same structures concurrently could not promise. A deadlocked loop is idle, so the
scan always gets to run. The price is that the scan blocks its loop while it runs; it is kept
to O(tasks) cheap attribute reads (measured in the README), and the interval stretches so
that scans never take more than 1% of the loop's time.

**Deciding** (``scan()``, called by the timer or directly by tests):

1. Every pending task suspended on a future is recorded with the time it was first seen on
   that future. A wait seen by two scans in a row is *settled*; only settled waits are judged.
2. Settled waits are classified (``_waitgraph.classify``) and the graph of what waits on what
   is built: tasks on tasks (await, gather, TaskGroup, wait, shield, wait_for) and tasks on
   locks/semaphores on their holders. ``doomed()`` finds the nodes that can never wake, a
   timeout rescues a node, and the strongly connected groups with a cycle are deadlocks,
   reported once per cycle (the same tasks on the same futures).
3. A settled wait older than ``stuck_task_after_s`` on an event, condition, queue, bare future
   or signalling semaphore is checked with ``_reach.reach``: if nothing but the waiting tasks
   (and tasks waiting on them) can reach the object, and the app's own code holds it, the task
   is stuck. A lock or semaphore held only by finished tasks is stuck at once. Sleeps, I/O,
   waits with a timeout, ``idle()`` blocks and ``idle_coroutines`` never are.
"""

from __future__ import annotations

import asyncio
import fnmatch
import heapq
import logging
import math
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import _names as n
from ._deadlock_report import (
    DeadlockFinding,
    StuckTaskFinding,
    await_chain,
    describe_object,
    primitive_info,
    task_name,
    waits_for_words,
    where,
)
from ._faults import Faults
from ._findings import FindingsLog
from ._idle import is_idle
from ._primitives import PrimitiveState, PrimitiveTracker
from ._reach import UNREACHABLE, Verdict, direct, reach
from ._recorder import coroutine_key
from ._waitgraph import (
    DEAD,
    EDGE_KINDS,
    LIVE,
    SIGNAL_KINDS,
    TASK_TYPES,
    Wait,
    _shielded,
    classify,
    coro_chain,
    cycle_order,
    cycles,
    doomed,
    frame_of,
    has_deadline,
    is_task,
    timer_targets,
    wait_kind,
)

logger = logging.getLogger("asyncwatch")

MAX_SHARE = 0.01  # most of a loop's time the scans may take
SLICE = 2000  # tasks settled per slice of a timed scan (the loop runs between slices)
_DONE = object()
CHECK_BUDGET_S = 0.005  # stuck checks per scan stop after this long; the rest wait a scan
CHECKS_PER_SCAN = 256  # candidates considered per scan (the longest unchecked first)
WALK_SHARE = 0.002  # most of a loop's time the reference walks (gc.get_referrers) may take
LISTED = 20  # tasks named in blocked_behind
LOCKLIKE = ("lock", "semaphore")


class _Seen:
    """One task's current wait, across scans. It holds the future the task waits on (the task
    holds it too, while it waits); no reference to the task itself."""

    __slots__ = ("check_at", "checks", "follow", "fut", "kind", "reported", "since", "wait")

    def __init__(self, fut: Any, since: float) -> None:
        self.fut = fut
        self.since = since
        self.kind: str | None = None  # set when a second scan finds the same wait
        self.follow = False  # an edge kind: part of the deadlock graph every scan
        self.check_at = since  # when next to look at it (classify, then stuck checks)
        self.checks = 0
        self.reported = False
        # The Wait of a kind whose edges cannot change while the future is the same (task,
        # gather, shield) or of a signal kind: it references only what the waiting task's
        # future already does.
        self.wait: Wait | None = None


class _Sweep:
    """What one scan collects while it walks the task list (possibly in slices)."""

    __slots__ = ("current", "due", "followed", "new", "now", "old")

    def __init__(self, old: dict[int, _Seen], current: Any, now: float) -> None:
        self.old = old
        self.current = current
        self.now = now
        self.new: dict[int, _Seen] = {}
        self.followed: list[_Entry] = []
        # (check_at, since, n, task, rec): sortable as is, n breaking ties before the task
        self.due: list[tuple[float, float, int, Any, _Seen]] = []


class _Entry:
    """A settled wait during one scan (the future is reached through ``rec``, so that the
    records referencing a waited-on object are exactly the ``_Seen`` ones)."""

    __slots__ = ("rec", "task", "wait")

    def __init__(self, task: Any, rec: _Seen) -> None:
        self.task = task
        self.rec = rec
        self.wait: Wait | None = None

    @property
    def fut(self) -> Any:
        return self.rec.fut


class _Graph:
    """One scan's wait-for graph: task nodes (``nodes``), then lock/semaphore nodes (``res``).
    ``waiting`` has every followed wait, ``nodes`` only those that may be on a cycle."""

    __slots__ = ("live0", "mode", "nodes", "res", "succ", "waiting")

    def __init__(self, nodes: list[_Entry]) -> None:
        self.nodes = nodes
        self.waiting: list[_Entry] = nodes
        self.succ: list[list[int]] = []
        self.mode: list[str] = []
        self.live0: list[bool] = []
        self.res: list[Wait] = []


class _LoopState:
    __slots__ = ("cycles", "deadlocked", "handle", "reported", "seen", "stuck")

    def __init__(self) -> None:
        self.seen: dict[int, _Seen] = {}
        self.reported: set[int] = set()  # ids of tasks whose current wait was reported stuck
        self.cycles: set[frozenset[tuple[int, int]]] = set()
        self.deadlocked = 0
        self.stuck = 0
        self.handle: Any = None


class _Checks:
    """Per-scan state of the stuck checks: verdicts per object, reverse edges on demand."""

    __slots__ = ("_rev", "graph", "seen", "verdicts")

    def __init__(self, seen: dict[int, _Seen], graph: _Graph) -> None:
        self.seen = seen
        self.graph = graph
        self.verdicts: dict[int, tuple[Verdict, list[Any]] | None] = {}
        self._rev: dict[int, list[_Entry]] | None = None

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
        """asyncwatch's own records that may reference the waiters' object: their ``_Seen``
        records (future, cached Wait). A reference missed here only sends the decision to
        the heap walk, which skips asyncwatch's objects by type."""
        out: dict[int, Any] = {}
        for t in waiters:
            rec = self.seen.get(id(t))
            if rec is not None:
                out[id(rec)] = rec
                if rec.wait is not None:
                    out[id(rec.wait)] = rec.wait
                    out[id(rec.wait.succ)] = rec.wait.succ
        return list(out.values())

    def dependents(self, private: set[int]) -> list[Any]:
        """Tasks that can only wake through the tasks in ``private`` (added to it)."""
        if self._rev is None:
            self._rev = {}
            for e in self.graph.waiting:
                if e.wait is not None and not e.wait.escapable:
                    for t in e.wait.succ:
                        self._rev.setdefault(id(t), []).append(e)
        out: list[Any] = []
        todo = list(private)
        while todo:
            for e in self._rev.get(todo.pop(), ()):
                tid = id(e.task)
                if tid in private:
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

    def _tasks_of(loop: Any) -> list[Any]:
        return list(asyncio.all_tasks(loop))

else:  # 3.11's all_tasks calls a Python helper per task; this is the same filter inline

    def _tasks_of(loop: Any) -> list[Any]:
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


_OWN_TYPES = (Wait, _Seen, _Sweep, _Entry, _Graph, _Checks, _LoopState, PrimitiveState)


def _own(obj: Any) -> bool:
    return isinstance(obj, _OWN_TYPES)


class DeadlockDetector:
    """Scans loops for deadlocks and stuck tasks; see the module docstring."""

    def __init__(
        self,
        tracker: PrimitiveTracker | None,
        findings: FindingsLog,
        faults: Faults,
        *,
        interval_s: float = 5.0,
        stuck_after_s: float = 60.0,
        idle_patterns: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.tracker = tracker
        self.findings = findings
        self.faults = faults
        self.interval_s = interval_s
        self.stuck_after_s = stuck_after_s
        self.idle_patterns = tuple(idle_patterns)
        self.clock = clock
        self.wall = wall
        self.active = False
        self._states: weakref.WeakKeyDictionary[Any, _LoopState] = weakref.WeakKeyDictionary()
        self.deadlocks_found = 0
        self.stuck_found = 0
        self.scan_seconds = 0.0
        self.last_scan_s = 0.0
        self.checks = 0  # reachability checks made (most without a heap walk)
        self.walks = 0  # of which heap walks
        self._walk_after = -math.inf
        self.started_ns = time.time_ns()

    # ------------------------------------------------------------------ scheduling

    def start(self) -> None:
        """Scan every loop attached from now on."""
        self.active = True

    def attach(self, loop: Any) -> None:
        """Scan ``loop`` every ``interval_s`` (call from its thread, or before it runs)."""
        if not self.active:
            return
        state = self._state(loop)
        if state.handle is None:
            self._schedule(loop, state, self.interval_s)

    def _schedule(self, loop: Any, state: _LoopState, delay: float) -> None:
        try:
            state.handle = loop.call_later(delay, self._tick, weakref.ref(loop))
        except RuntimeError:  # closed loop
            state.handle = None

    def _tick(self, loop_ref: Any) -> None:
        loop = loop_ref()
        if loop is None or not self.active:
            return
        state = self._state(loop)
        state.handle = None
        self._step(loop, state, self._steps(loop), 0.0)

    def _step(self, loop: Any, state: _LoopState, steps: Iterator[None], spent: float) -> None:
        """Run one slice of a timed scan; the next slice runs after whatever the loop has
        ready, so no single pause is longer than one slice."""
        if not self.active:
            return
        began = time.perf_counter()
        try:
            done = next(steps, _DONE) is _DONE
        except Exception as exc:
            done = True
            if self.faults.report("deadlock_scan", exc):
                self.active = False
                return
        spent += time.perf_counter() - began
        if not done:
            loop.call_soon(self._step, loop, state, steps, spent)
            return
        self.last_scan_s = spent
        self.scan_seconds += spent
        self._schedule(loop, state, max(self.interval_s, spent / MAX_SHARE))

    def stop(self) -> None:
        """Stop scanning; cancel pending scans. Idempotent."""
        self.active = False
        for loop, state in list(self._states.items()):
            state.seen = {}
            handle, state.handle = state.handle, None
            if handle is None or loop.is_closed():
                continue
            try:
                running = asyncio.events._get_running_loop()
                if running is loop or not loop.is_running():
                    handle.cancel()
                else:
                    loop.call_soon_threadsafe(handle.cancel)
            except RuntimeError:
                pass

    def reset(self) -> None:
        """Forget every loop and what was seen (a freshly forked child)."""
        self._states = weakref.WeakKeyDictionary()
        self.deadlocks_found = self.stuck_found = 0
        self.scan_seconds = 0.0

    def _state(self, loop: Any) -> _LoopState:
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState()
        return state

    # ------------------------------------------------------------------ metrics

    def points(self) -> Iterable[Any]:
        """Metric points at collection time (any thread)."""
        start = self.started_ns
        deadlocked = stuck = 0
        for _ in range(3):
            try:
                states = list(self._states.values())
                break
            except RuntimeError:  # a loop was added meanwhile
                states = []
        for state in states:
            deadlocked += state.deadlocked
            stuck += state.stuck
        yield n.DEADLOCKS, {}, self.deadlocks_found, start
        yield n.STUCK_TASKS, {}, self.stuck_found, start
        yield n.TASK_STUCK, {n.FINDING_KIND: "deadlock"}, deadlocked, start
        yield n.TASK_STUCK, {n.FINDING_KIND: "stuck_task"}, stuck, start
        yield n.DEADLOCK_SCAN_TIME, {}, self.scan_seconds, start

    # ------------------------------------------------------------------ the scan

    def scan(self, loop: Any = None) -> list[DeadlockFinding | StuckTaskFinding]:
        """Scan ``loop`` (default: the running one) once, from its own thread, in one go;
        returns the findings made by this scan (also recorded, counted and logged)."""
        if loop is None:
            loop = asyncio.get_running_loop()
        began = time.perf_counter()
        out: list[DeadlockFinding | StuckTaskFinding] = []
        try:
            for _ in self._steps(loop, out):
                pass
            return out
        finally:
            spent = time.perf_counter() - began
            self.last_scan_s = spent
            self.scan_seconds += spent

    def _steps(self, loop: Any,
               out: list[DeadlockFinding | StuckTaskFinding] | None = None) -> Iterator[None]:
        """One scan, as a generator that yields between slices of ``SLICE`` tasks."""
        state = self._state(loop)
        now = self.clock()
        current = asyncio.current_task(loop)
        tasks = _tasks_of(loop)
        sweep = _Sweep(state.seen, current, now)
        for start in range(0, len(tasks), SLICE):
            self._settle(sweep, tasks[start : start + SLICE])
            if start + SLICE < len(tasks):
                yield
        state.seen = new = sweep.new
        followed, due = sweep.followed, sweep.due
        if len(tasks) > SLICE:  # other code ran between slices: keep waits that still hold
            followed = [e for e in followed if _still(e.task, e.rec)]
            # (the stuck checks re-check the few waits they pick)
        if out is None:
            out = []
        graph = self._graph(followed)
        in_deadlock = self._deadlocks(loop, state, graph, now, out)
        if due or followed:
            self._stuck(state, followed, due, graph=graph, in_deadlock=in_deadlock, now=now,
                        out=out)
        state.reported = {tid for tid in state.reported if (r := new.get(tid)) and r.reported}
        state.stuck = len(state.reported)
        for finding in out:
            self._emit(finding)

    def _settle(self, sweep: _Sweep, tasks: list[Any]) -> None:
        """Record every suspended task's wait in ``sweep.new``. Of the waits the previous scan
        saw too, collect those whose edges are followed, and the other ones due for a look
        (classifying them, or a stuck check). This loop runs for every waiting task on every
        scan, so a wait that is neither costs a dictionary lookup and three comparisons."""
        get, new, current, now = sweep.old.get, sweep.new, sweep.current, sweep.now
        followed, due = sweep.followed, sweep.due
        try:
            for task in tasks:
                fut = task._fut_waiter
                if fut is None or fut.done() or task is current:
                    continue
                tid = id(task)
                rec = get(tid)
                if rec is not None and rec.fut is fut:
                    if rec.follow:
                        followed.append(_Entry(task, rec))
                    elif rec.check_at <= now:
                        if rec.kind is None:
                            self._first_look(task, rec)
                            if rec.follow:
                                followed.append(_Entry(task, rec))
                            elif rec.check_at <= now:
                                due.append((rec.check_at, rec.since, tid, task, rec))
                        else:
                            due.append((rec.check_at, rec.since, tid, task, rec))
                else:
                    rec = _Seen(fut, now)
                new[tid] = rec
        except AttributeError:  # a task class without _fut_waiter: leave such tasks out
            usable = [t for t in tasks if hasattr(t, "_fut_waiter")]
            if len(usable) == len(tasks):
                raise
            self._settle(sweep, usable)

    def _first_look(self, task: Any, rec: _Seen) -> None:
        """The wait was seen by two scans: remember its kind."""
        kind = rec.kind = wait_kind(task, rec.fut)
        rec.follow = kind in EDGE_KINDS
        rec.check_at = rec.since + self.stuck_after_s

    def _wait_of(self, entry: _Entry) -> Wait | None:
        """The entry's wait, or None for a kind with no edges (remembered per wait)."""
        rec, fut = entry.rec, entry.fut
        wait = rec.wait
        if wait is None:
            kind = rec.kind
            if kind is not None and kind not in EDGE_KINDS:
                return None
            if kind == "task":
                wait = rec.wait = Wait("task", "and", [fut], fut)
            elif kind == "gather":
                wait = rec.wait = Wait("gather", "and", list(fut._children), fut)
            elif kind == "shield":
                inner = _shielded(fut)
                wait = rec.wait = Wait("shield", "and", [] if inner is None else [inner], fut)
            else:  # locks, TaskGroups, wait(): what they wait on changes, so look each time
                wait = classify(entry.task, fut, self.tracker)
                rec.kind = wait.kind
                if wait.kind not in EDGE_KINDS:  # e.g. a semaphore nobody holds: a signal
                    rec.follow = False
                    rec.wait = wait
        entry.wait = wait
        return wait if wait.mode is not None else None

    def _graph(self, entries: list[_Entry]) -> _Graph:
        wait_of = self._wait_of
        waiting = [e for e in entries if wait_of(e) is not None]
        graph = _Graph(_trim(waiting))
        graph.waiting = waiting
        index = {id(e.task): i for i, e in enumerate(graph.nodes)}
        count = len(graph.nodes)
        succ, mode, live0, res = graph.succ, graph.mode, graph.live0, graph.res
        res_index: dict[int, int] = {}
        task_types: Any = TASK_TYPES
        for e in graph.nodes:
            wait = e.wait
            assert wait is not None
            live0.append(wait.escapable)
            if wait.kind in LOCKLIKE:
                r = res_index.get(id(wait.obj))
                if r is None:
                    r = res_index[id(wait.obj)] = count + len(res)
                    res.append(wait)
                succ.append([r])
                mode.append("and")
            else:
                # A successor that is not a settled, followed task is live: running,
                # runnable, done, or waiting on something that can wake it.
                succ.append([
                    index.get(id(s), LIVE) if isinstance(s, task_types) and not s.done()
                    else LIVE
                    for s in wait.succ
                ])
                mode.append(wait.mode or "and")
        for wait in res:
            succ.append([_node(h, index, holder=True) for h in wait.succ])
            mode.append("or")
            live0.append(False)
        return graph

    def _deadlocks(self, loop: Any, state: _LoopState, graph: _Graph, now: float,
                   out: list[DeadlockFinding | StuckTaskFinding]) -> set[int]:
        """Report new cycles; return ids of tasks in (or waiting behind) any cycle."""
        nodes, succ, mode, live0 = graph.nodes, graph.succ, graph.mode, graph.live0
        bad = doomed(succ, mode, live0)
        count = len(nodes)
        if not any(bad[:count]):
            state.cycles = set()
            state.deadlocked = 0
            return set()
        timers = timer_targets(loop)
        rescued = False
        for i in range(count):
            if bad[i]:
                e = nodes[i]
                late = timers is not None and (id(e.task) in timers or id(e.fut) in timers)
                if late or has_deadline(e.task, coro_chain(e.task)):
                    live0[i] = rescued = True
        if rescued:
            bad = doomed(succ, mode, live0)
        active: set[frozenset[tuple[int, int]]] = set()
        involved: set[int] = set()
        deadlocked = 0
        for group in cycles(succ, bad):
            members = [v for v in group if v < count]
            if not members:
                continue
            key = frozenset((id(nodes[v].task), id(nodes[v].fut)) for v in members)
            active.add(key)
            deadlocked += len(members)
            behind = _behind(group, succ, bad)
            involved.update(id(nodes[v].task) for v in (*group, *behind) if v < count)
            if key not in state.cycles:
                out.append(self._deadlock_finding(graph, group, behind, now))
        state.cycles = active
        state.deadlocked = deadlocked
        return involved

    def _stuck(self, state: _LoopState, followed: list[_Entry],
               due: list[tuple[float, float, int, Any, _Seen]], *, graph: _Graph,
               in_deadlock: set[int], now: float,
               out: list[DeadlockFinding | StuckTaskFinding]) -> None:
        pool = due
        for e in followed:
            rec = e.rec
            if rec.check_at <= now and id(e.task) not in in_deadlock:
                pool.append((rec.check_at, rec.since, id(e.task), e.task, rec))
        # Never checked first, then the longest without a check: no wait starves the others.
        # The rest (and those past the time budget) keep their place for the next scan.
        by_task = {id(e.task): e for e in followed}
        candidates = [
            by_task.get(tid) or _Entry(task, rec)
            for _, _, tid, task, rec in heapq.nsmallest(CHECKS_PER_SCAN, pool)
            if _still(task, rec)
        ]
        checks = _Checks(state.seen, graph)
        deadline = time.perf_counter() + CHECK_BUDGET_S
        walk_ok = now >= self._walk_after
        for e in candidates:
            if time.perf_counter() > deadline:
                break
            rec = e.rec
            if e.wait is None:
                e.wait = rec.wait = classify(e.task, rec.fut, self.tracker)
                rec.kind = e.wait.kind
            wait = e.wait
            if (
                wait.kind in ("sleep", "io") or wait.escapable or is_idle(e.task)
                or self._idle_by_name(e.task) or has_deadline(e.task, coro_chain(e.task))
            ):
                rec.check_at = math.inf  # by design, or a timeout will end it
                continue
            if wait.kind in LOCKLIKE and wait.mode == "or" and all(t.done() for t in wait.succ):
                reason = f"{_names_of(wait.succ)} finished without releasing it"
                blocked: list[Any] = []
            elif wait.kind in SIGNAL_KINDS and wait.obj is not None:
                key = id(wait.obj)
                if key not in checks.verdicts:
                    walks = self.walks
                    checks.verdicts[key] = self._reach(e, checks, walk_ok=walk_ok)
                    walk_ok = walk_ok and self.walks == walks  # at most one walk per scan
                got = checks.verdicts[key]
                if got is None:
                    continue  # needs a heap walk, and none is due yet
                verdict, blocked = got
                if verdict.outcome != UNREACHABLE:
                    rec.checks += 1
                    rec.check_at = now + self.stuck_after_s * min(2 ** rec.checks, 64)
                    continue
                if not verdict.held_by_user:
                    rec.check_at = math.inf  # `await asyncio.Future()`: forever by design
                    continue
                reason = _UNREACHABLE_WHY.get(wait.kind, "nothing else references it")
            else:
                rec.check_at = now + self.stuck_after_s  # waits on tasks, or on live holders
                continue
            rec.reported = True
            rec.check_at = math.inf
            state.reported.add(id(e.task))
            out.append(self._stuck_finding(e, reason, blocked, now))

    def _idle_by_name(self, task: Any) -> bool:
        if not self.idle_patterns:
            return False
        for coro in coro_chain(task):
            key = coroutine_key(coro)
            if any(fnmatch.fnmatchcase(key, p) for p in self.idle_patterns):
                return True
        return False

    def _reach(self, entry: _Entry, checks: _Checks, *, walk_ok: bool) -> tuple[
        Verdict, list[Any]
    ] | None:
        """Can anything but its waiters (and who waits on them) reach the entry's object?
        None when that needs a heap walk and none is allowed now."""
        wait = entry.wait
        assert wait is not None
        waiters = checks.waiters_of(wait)
        if not any(t is entry.task for t in waiters):
            waiters.append(entry.task)
        private_ids = {id(t) for t in waiters}
        behind = checks.dependents(private_ids)
        private: list[Any] = []
        for task in [*waiters, *behind]:
            private.append(task)
            for coro in coro_chain(task):
                private.append(coro)
                private.append(frame_of(coro))
        own = checks.own_refs(waiters)
        self.checks += 1
        verdict = direct([wait.obj], private, own)
        if verdict is None:
            if not walk_ok:
                return None
            began = time.perf_counter()
            verdict = reach([wait.obj], {id(p) for p in private}, _own)
            self.walks += 1
            # Walks cost a pass over the heap per level: space them out to WALK_SHARE.
            self._walk_after = self.clock() + (time.perf_counter() - began) / WALK_SHARE
        return verdict, behind

    # ------------------------------------------------------------------ findings

    def _wall(self, when: float, now: float) -> float:
        return self.wall() - (now - when)

    def _deadlock_finding(self, graph: _Graph, group: list[int], behind: list[int],
                          now: float) -> DeadlockFinding:
        nodes, res, succ = graph.nodes, graph.res, graph.succ
        count = len(nodes)
        start = min(v for v in group if v < count)
        order = cycle_order(group, succ, start)
        tasks = [v for v in order if v < count]
        lines = []
        chains = []
        holds: dict[int, list[str]] = {}
        for r in (v for v in group if v >= count):
            for h in res[r - count].succ:
                holds.setdefault(id(h), []).append(describe_object(res[r - count].obj))
        for pos, v in enumerate(tasks):
            e = nodes[v]
            nxt_task = nodes[tasks[(pos + 1) % len(tasks)]].task
            chain = coro_chain(e.task)
            wait = e.wait
            next_for_words = None if wait is not None and wait.kind in LOCKLIKE else nxt_task
            words = waits_for_words(wait, next_for_words)
            held = holds.get(id(e.task))
            holding = f" holds {' and '.join(held)} and" if held else ""
            verb = "waits for" if wait is None or wait.kind != "task" else "awaits"
            lines.append(f"task {task_name(e.task)!r}{where(chain)}{holding} {verb} {words}")
            chains.append(await_chain(e.task, wait, next_for_words, chain))
        names = tuple(task_name(nodes[v].task) for v in tasks)
        if len(names) == 1:
            head = f"Deadlock: task {names[0]!r} waits for itself and can never proceed."
        else:
            head = f"Deadlock: {len(names)} tasks wait for each other; none can ever proceed."
        blocked = [nodes[v].task for v in behind if v < count]
        explanation = "\n".join([head, *(f"  {line}" for line in lines)])
        if blocked:
            explanation += f"\n  {len(blocked)} more task(s) wait behind them: {_names_of(blocked)}"
        locks = tuple(
            primitive_info(res[v - count].obj, res[v - count].succ) for v in group if v >= count
        )
        since = max(nodes[v].rec.since for v in tasks)
        return DeadlockFinding(
            started_at=self._wall(since, now),
            summary=f"Deadlock: {' -> '.join(repr(x) for x in (*names, names[0]))}",
            tasks=names,
            explanation=explanation,
            chains=tuple(chains),
            locks=locks,
            blocked_behind=tuple(task_name(t) for t in blocked[:LISTED]),
            detected_at=self.wall(),
        )

    def _stuck_finding(self, entry: _Entry, reason: str, blocked: list[Any],
                       now: float) -> StuckTaskFinding:
        wait = entry.wait
        assert wait is not None
        chain = coro_chain(entry.task)
        waited = now - entry.rec.since
        name = task_name(entry.task)
        coro = coroutine_key(chain[0]) if chain else "?"
        explanation = (
            f"Task {name!r} ({coro}) has waited {waited:.0f}s{where(chain)} for "
            f"{waits_for_words(wait)}, and nothing asyncwatch can see can wake it: {reason}."
        )
        if blocked:
            explanation += f" {len(blocked)} more task(s) wait on it: {_names_of(blocked)}."
        holders = wait.succ if wait.kind in LOCKLIKE else []
        return StuckTaskFinding(
            started_at=self._wall(entry.rec.since, now),
            summary=f"Stuck task {name!r}: waits for {waits_for_words(wait)}",
            tasks=(name,),
            explanation=explanation,
            chains=(await_chain(entry.task, wait, None, chain),),
            waiting_on=primitive_info(wait.obj, holders) if wait.obj is not None else None,
            waited_s=waited,
            blocked_behind=tuple(task_name(t) for t in blocked[:LISTED]),
            detected_at=self.wall(),
        )

    def _emit(self, finding: DeadlockFinding | StuckTaskFinding) -> None:
        if isinstance(finding, DeadlockFinding):
            self.deadlocks_found += 1
        else:
            self.stuck_found += 1
        self.findings.add(finding)
        detail = "\n".join(chain.format() for chain in finding.chains)
        logger.warning("asyncwatch: %s\nAwait chains:\n%s", finding.explanation, detail)


_UNREACHABLE_WHY = {
    "event": "no other task, callback, timer, thread or module holds the Event, so nobody "
    "can set it",
    "condition": "no other task, callback, timer, thread or module holds the Condition, so "
    "nobody can notify it",
    "queue_get": "no other task, callback, timer, thread or module holds the queue, so no "
    "producer is left to put an item",
    "queue_put": "no other task, callback, timer, thread or module holds the queue, so no "
    "consumer is left to take an item",
    "queue_join": "no other task, callback, timer, thread or module holds the queue, so no "
    "consumer is left to call task_done()",
    "future": "no other task, callback, timer, thread or module holds the Future, so nobody "
    "can set its result",
    "semaphore_signal": "no other task, callback, timer, thread or module holds the "
    "Semaphore, so nobody can release it",
}


def _trim(entries: list[_Entry]) -> list[_Entry]:
    """Leave out waits that cannot be on a cycle: those on nothing but tasks outside the set
    (running, runnable, or waiting on something that can wake them), repeatedly. What is left
    out is live, exactly as if it were in the graph; a lock held by a finished task stays."""
    while True:
        ids = {id(e.task) for e in entries}
        keep = []
        for e in entries:
            wait = e.wait
            assert wait is not None
            lock = wait.kind in LOCKLIKE
            for s in wait.succ:
                if id(s) in ids or (lock and s.done()):
                    keep.append(e)
                    break
        if len(keep) == len(entries):
            return keep
        entries = keep


def _still(task: Any, rec: _Seen) -> bool:
    """Whether ``task`` still waits on the future ``rec`` recorded."""
    fut = getattr(task, "_fut_waiter", None)
    return fut is rec.fut and fut is not None and not fut.done()


def _names_of(tasks: list[Any]) -> str:
    shown = ", ".join(repr(task_name(t)) for t in tasks[:5])
    return shown + (f" and {len(tasks) - 5} more" if len(tasks) > 5 else "")


def _node(obj: Any, index: dict[int, int], *, holder: bool) -> int:
    """Graph node of a successor: a settled task's index, LIVE or DEAD."""
    if not is_task(obj):
        return LIVE  # a plain future: whoever resolves it is not followed
    if obj.done():
        return DEAD if holder else LIVE
    j = index.get(id(obj))
    return LIVE if j is None else j


def _behind(group: list[int], succ: list[list[int]], bad: list[bool]) -> list[int]:
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
