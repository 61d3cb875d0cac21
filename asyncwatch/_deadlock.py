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
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterable
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
    Wait,
    _pending,
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
)

logger = logging.getLogger("asyncwatch")

MAX_SHARE = 0.01  # most of a loop's time the scans may take
WALK_SHARE = 0.002  # most of a loop's time the reference walks (gc.get_referrers) may take
LISTED = 20  # tasks named in blocked_behind
LOCKLIKE = ("lock", "semaphore")


class _Seen:
    """One task's current wait, across scans (no strong reference to the task or future)."""

    __slots__ = ("checks", "fid", "fref", "kind", "next_check", "reported", "scans", "since",
                 "tref")

    def __init__(self, fid: int, since: float) -> None:
        self.fid = fid
        self.since = since
        self.scans = 1
        self.tref: Any = None
        self.fref: Any = None
        self.kind: str | None = None
        self.next_check = 0.0
        self.checks = 0
        self.reported = False


class _Entry:
    """A settled wait during one scan."""

    __slots__ = ("fut", "rec", "task", "wait")

    def __init__(self, task: Any, fut: Any, rec: _Seen) -> None:
        self.task = task
        self.fut = fut
        self.rec = rec
        self.wait: Wait | None = None


class _Graph:
    """One scan's wait-for graph: task nodes (``nodes``), then lock/semaphore nodes (``res``)."""

    __slots__ = ("live0", "mode", "nodes", "res", "succ")

    def __init__(self, nodes: list[_Entry]) -> None:
        self.nodes = nodes
        self.succ: list[list[int]] = []
        self.mode: list[str] = []
        self.live0: list[bool] = []
        self.res: list[Wait] = []


class _LoopState:
    __slots__ = ("cycles", "deadlocked", "handle", "seen", "stuck")

    def __init__(self) -> None:
        self.seen: dict[int, _Seen] = {}
        self.cycles: set[frozenset[tuple[int, int]]] = set()
        self.deadlocked = 0
        self.stuck = 0
        self.handle: Any = None


_OWN_TYPES = (Wait, _Seen, _Entry, _Graph, _LoopState, PrimitiveState)


def _own(obj: Any) -> bool:
    return isinstance(obj, _OWN_TYPES)


def _wref(obj: Any) -> Any:
    try:
        return weakref.ref(obj)
    except TypeError:
        return None


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
        try:
            self.scan(loop)
        except Exception as exc:
            if self.faults.report("deadlock_scan", exc):
                self.active = False
                return
        self._schedule(loop, state, max(self.interval_s, self.last_scan_s / MAX_SHARE))

    def stop(self) -> None:
        """Stop scanning; cancel pending scans. Idempotent."""
        self.active = False
        for loop, state in list(self._states.items()):
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
        """Scan ``loop`` (default: the running one) once, from its own thread; returns the
        findings made by this scan (also recorded, counted and logged)."""
        if loop is None:
            loop = asyncio.get_running_loop()
        began = time.perf_counter()
        try:
            return self._scan(loop)
        finally:
            spent = time.perf_counter() - began
            self.last_scan_s = spent
            self.scan_seconds += spent

    def _scan(self, loop: Any) -> list[DeadlockFinding | StuckTaskFinding]:
        state = self._state(loop)
        now = self.clock()
        current = asyncio.current_task(loop)
        tasks = asyncio.all_tasks(loop)
        entries = self._settle(state, tasks, current, now)
        if not entries:
            state.cycles = set()
            state.deadlocked = state.stuck = 0
            return []
        out: list[DeadlockFinding | StuckTaskFinding] = []
        graph = self._graph(entries)
        in_deadlock = self._deadlocks(loop, state, graph, now, out)
        self._stuck(state, entries, tasks, graph.nodes, in_deadlock, now=now, out=out)
        for finding in out:
            self._emit(finding)
        return out

    def _settle(self, state: _LoopState, tasks: Iterable[Any], current: Any,
                now: float) -> list[_Entry]:
        """Record every suspended task's wait; return those seen by the previous scan too."""
        old = state.seen
        new: dict[int, _Seen] = {}
        settled: list[_Entry] = []
        for task in tasks:
            fut = getattr(task, "_fut_waiter", None)
            if fut is None or task is current or fut.done():
                continue
            tid = id(task)
            rec = old.get(tid)
            if (
                rec is not None and rec.fid == id(fut)
                and (rec.tref is None or rec.tref() is task)
                and (rec.fref is None or rec.fref() is fut)
            ):
                rec.scans += 1
                if rec.tref is None:
                    rec.tref = _wref(task)
                    rec.fref = _wref(fut)
                settled.append(_Entry(task, fut, rec))
            else:
                rec = _Seen(id(fut), now)
            new[tid] = rec
        state.seen = new
        return settled

    def _wait_of(self, entry: _Entry) -> Wait | None:
        """The entry's wait, or None for a kind with no edges (remembered per wait)."""
        rec, fut = entry.rec, entry.fut
        kind = rec.kind
        if kind is not None and kind not in EDGE_KINDS:
            return None
        if kind == "task":
            wait = Wait("task", "and", [fut], fut)
        elif kind == "gather":
            wait = Wait("gather", "and", _pending(fut._children), fut)
        elif kind == "shield":
            inner = _shielded(fut)
            wait = Wait("shield", "and", _pending([inner]) if inner is not None else [], fut)
        else:
            wait = classify(entry.task, fut, self.tracker)
            rec.kind = wait.kind
        entry.wait = wait
        return wait if wait.mode is not None else None

    def _graph(self, entries: list[_Entry]) -> _Graph:
        graph = _Graph([e for e in entries if self._wait_of(e) is not None])
        index = {id(e.task): i for i, e in enumerate(graph.nodes)}
        count = len(graph.nodes)
        succ, mode, live0, res = graph.succ, graph.mode, graph.live0, graph.res
        res_index: dict[int, int] = {}
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
                succ.append([_node(s, index, holder=False) for s in wait.succ])
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

    def _stuck(self, state: _LoopState, entries: list[_Entry], tasks: set[Any],
               nodes: list[_Entry], in_deadlock: set[int], *, now: float,
               out: list[DeadlockFinding | StuckTaskFinding]) -> None:
        stuck = 0
        candidates = []
        for e in entries:
            rec = e.rec
            if rec.reported:
                stuck += 1
            elif (
                id(e.task) not in in_deadlock
                and now - rec.since >= self.stuck_after_s
                and rec.next_check <= now
            ):
                candidates.append(e)
        # Never checked first, then the longest without a check: no wait starves the others.
        candidates.sort(key=lambda e: (e.rec.next_check, e.rec.since))
        verdicts: dict[int, tuple[Verdict, list[Any]]] = {}
        walk_ok = now >= self._walk_after
        for e in candidates:
            rec = e.rec
            if e.wait is None:
                e.wait = classify(e.task, e.fut, self.tracker)
            wait = e.wait
            if (
                is_idle(e.task) or self._idle_by_name(e.task) or wait.kind in ("sleep", "io")
                or wait.escapable or has_deadline(e.task, coro_chain(e.task))
            ):
                rec.next_check = math.inf  # by design, or a timeout will end it
                continue
            if wait.kind in LOCKLIKE and wait.mode == "or" and all(t.done() for t in wait.succ):
                reason = f"{_names_of(wait.succ)} finished without releasing it"
                blocked: list[Any] = []
            elif wait.kind in SIGNAL_KINDS and wait.obj is not None:
                got = verdicts.get(id(wait.obj))
                if got is None:
                    walks = self.walks
                    got = self._reach(e, tasks, nodes, entries, walk_ok=walk_ok)
                    if got is None:
                        continue  # needs a heap walk, and none is due yet
                    walk_ok = walk_ok and self.walks == walks  # at most one walk per scan
                    verdicts[id(wait.obj)] = got
                verdict, blocked = got
                if verdict.outcome != UNREACHABLE:
                    rec.checks += 1
                    rec.next_check = now + self.stuck_after_s * min(2 ** rec.checks, 64)
                    continue
                if not verdict.held_by_user:
                    rec.next_check = math.inf  # `await asyncio.Future()`: forever by design
                    continue
                reason = _UNREACHABLE_WHY.get(wait.kind, "nothing else references it")
            else:
                rec.next_check = now + self.stuck_after_s  # waits on tasks, or on live holders
                continue
            rec.reported = True
            stuck += 1
            out.append(self._stuck_finding(e, reason, blocked, now))
        state.stuck = stuck

    def _idle_by_name(self, task: Any) -> bool:
        if not self.idle_patterns:
            return False
        for coro in coro_chain(task):
            key = coroutine_key(coro)
            if any(fnmatch.fnmatchcase(key, p) for p in self.idle_patterns):
                return True
        return False

    def _reach(self, entry: _Entry, tasks: set[Any], nodes: list[_Entry],
               entries: list[_Entry], *, walk_ok: bool) -> tuple[Verdict, list[Any]] | None:
        """Can anything but its waiters (and who waits on them) reach the entry's object?
        None when that needs a heap walk and none is allowed now."""
        wait = entry.wait
        assert wait is not None
        obj = wait.obj
        futs: set[int] = {id(obj)} if wait.kind == "future" else set()
        holders = [obj, getattr(obj, "_finished", None)]
        for holder in holders:
            for attr in ("_waiters", "_getters", "_putters"):
                futs.update(id(f) for f in getattr(holder, attr, None) or ())
        own: dict[int, Any] = {}  # asyncwatch's own records that reference the object
        for e in entries:
            w = e.wait
            if e.fut is obj or (w is not None and (w.obj is obj or obj in w.succ)):
                own[id(e)] = e
                if w is not None:
                    own[id(w)] = w
                    own[id(w.succ)] = w.succ
        del obj, holders, holder, e, w  # no plain local may hold it while references are counted
        waiters = [t for t in tasks if id(getattr(t, "_fut_waiter", None)) in futs]
        private_ids = {id(t) for t in waiters}
        behind = _dependents(private_ids, nodes)
        private: list[Any] = []
        for task in [*waiters, *behind]:
            private.append(task)
            for coro in coro_chain(task):
                private.append(coro)
                private.append(frame_of(coro))
        self.checks += 1
        verdict = direct([wait.obj], private, list(own.values()))
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


def _dependents(private: set[int], nodes: list[_Entry]) -> list[Any]:
    """Tasks that can only wake through the tasks in ``private`` (added to it)."""
    out: list[Any] = []
    changed = True
    while changed:
        changed = False
        for e in nodes:
            wait = e.wait
            if wait is None or id(e.task) in private or wait.escapable:
                continue
            ids = [id(t) for t in wait.succ if is_task(t) and not t.done()]
            if not ids:
                continue
            if wait.kind in LOCKLIKE or wait.mode == "or":
                caught = all(x in private for x in ids)
            else:
                caught = any(x in private for x in ids)
            if caught:
                private.add(id(e.task))
                out.append(e.task)
                changed = True
    return out
