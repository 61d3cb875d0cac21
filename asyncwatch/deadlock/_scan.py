"""One deadlock scan of a loop, as a generator of slices: which waits are settled, the
wait-for graph they make, the cycles in it, then the stuck checks (``_stuck``).

1. Every pending task suspended on a future is recorded with the time it was first seen on
   that future. A wait seen by two scans in a row is *settled*; only settled waits are judged.
2. Settled waits are classified (``_waitgraph.classify``) and the graph of what waits on what
   is built: tasks on tasks (await, gather, TaskGroup, wait, shield, wait_for) and tasks on
   locks/semaphores on their holders. ``doomed()`` finds the nodes that can never wake, a
   timeout rescues a node, and the strongly connected groups with a cycle are deadlocks,
   reported once per cycle (the same tasks on the same futures).
3. The stuck checks (``_stuck.StuckChecker``).

Each slice is bounded by units of work (``SLICE`` and ``LOOKS`` here, ``ENTRIES`` and the
constants after it in ``_stuck``); whatever a later slice decides re-checks that the waits it
uses still hold. ``DeadlockScanner`` is the middle layer of ``DeadlockDetector``, which runs
the generator (timed, a slice at a time, or in one go) and keeps the timers.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from .._core.findings import FindingsLog
from ..sync import PrimitiveTracker
from ._report import DeadlockFinding, StuckTaskFinding, deadlock_finding
from ._scanstate import (
    LOCKLIKE,
    PROBED_TYPES,
    Entry,
    Graph,
    LoopState,
    Seen,
    Sweep,
    behind,
    closes_cycle,
    node_of,
    still,
    task_refs,
    trim_steps,
)
from ._stuck import ENTRIES, StuckChecker
from ._waitgraph import (
    EDGE_KINDS,
    LIVE,
    TASK_TYPES,
    Wait,
    _shielded,
    classify,
    coro_chain,
    cycles,
    doomed,
    has_deadline,
    timer_targets,
    wait_kind,
)

logger = logging.getLogger("asyncwatch")

# What one slice of a scan may do at most (the loop runs between slices):
SLICE = 1000  # tasks looked at (for a wait seen before: a dictionary lookup)
LOOKS = 400  # of which first looks at a settled wait (its kind read from the await chain)

EXPEDITE_S = 0.05  # after a lock wait closed a cycle: the scan that settles it runs this soon


class DeadlockScanner(StuckChecker):
    """Scans a loop for deadlocks (and, through ``StuckChecker``, stuck tasks), a slice at
    a time; keeps each loop's records and the findings' counts. See the module docstring."""

    def __init__(
        self,
        tracker: PrimitiveTracker | None,
        findings: FindingsLog,
        *,
        stuck_after_s: float,
        idle_patterns: Iterable[str],
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        super().__init__(tracker, stuck_after_s=stuck_after_s, idle_patterns=idle_patterns,
                         clock=clock, wall=wall)
        self.findings = findings
        # loop -> its state, both weakly: the state is owned by the loop (see
        # DeadlockDetector._schedule).
        self._states: weakref.WeakKeyDictionary[Any, weakref.ref[LoopState]] = (
            weakref.WeakKeyDictionary()
        )
        self.deadlocks_found = 0
        self.stuck_found = 0

    def _state(self, loop: asyncio.AbstractEventLoop) -> LoopState:
        """What is kept for ``loop`` across scans (made on first use)."""
        ref = self._states.get(loop)
        state = ref() if ref is not None else None
        if state is None:
            state = LoopState()
            self._states[loop] = weakref.ref(state)
        return state

    def _schedule(self, loop: asyncio.AbstractEventLoop, state: LoopState, delay: float) -> None:
        """Run a timed scan of ``loop`` in ``delay`` seconds (the detector's timers)."""
        raise NotImplementedError

    def _steps(
        self, loop: asyncio.AbstractEventLoop,
        out: list[DeadlockFinding | StuckTaskFinding] | None = None,
               *, state: LoopState | None = None, sliced: bool = False) -> Iterator[str]:
        """One scan, as a generator that yields between slices, each slice bounded by work
        units (see ``SLICE`` and the constants after it); it yields the name of the phase
        the slice belonged to. Between slices other code runs: whatever is decided in a
        later slice re-checks that the waits it uses still hold (``still``), and a finding
        is made only from waits re-read in the slice that reports it. ``sliced``: a timed
        scan, whose heap walks must also fit one slice (``_walk_fits``)."""
        if state is None:
            state = self._state(loop)
        now = self.clock()
        current = asyncio.current_task(loop)
        items, weak = task_refs(loop)
        sweep = Sweep(state.seen, current, now)
        start = 0
        while True:
            start = self._settle(sweep, loop, items, weak, start)
            if start >= len(items):
                break
            yield "settle"
        del items
        state.seen = new = sweep.new
        if sweep.closed and state.expedite <= 1:
            # The next scan settles the new cycle: run it soon.
            if isinstance(state.handle, asyncio.TimerHandle):  # a scan by hand: move the timer
                state.handle.cancel()
                state.handle = None
                state.expedite = 1
                self._schedule(loop, state, EXPEDITE_S)
            else:  # a timed scan: this one and the next
                state.expedite = 2
        if out is None:
            out = []
        if sweep.followed:
            yield "settle"
            graph = yield from self._graph_steps(sweep)
            if graph.nodes:  # cycles may be there: judged in a slice of their own
                yield "graph"
        else:
            graph = Graph([])
        in_deadlock = self._deadlocks(loop, state, graph, now, out)
        if sweep.due or sweep.followed:
            yield "graph"
            yield from self._stuck_steps(state, sweep, graph=graph, in_deadlock=in_deadlock,
                                         now=now, out=out, sliced=sliced)
        state.reported = {tid for tid in state.reported if (r := new.get(tid)) and r.reported}
        state.stuck = len(state.reported)
        for finding in out:
            self._emit(finding)

    def _settle(
        self, sweep: Sweep, loop: asyncio.AbstractEventLoop, items: list[Any], weak: bool,
        start: int) -> int:
        """Record the wait of every suspended task of ``items[start:]`` in ``sweep.new``, up to
        ``SLICE`` tasks or ``LOOKS`` first looks; returns where to go on. Of the waits the
        previous scan saw too, collect those whose edges are followed, and the other ones
        due for a look (classifying them, or a stuck check). This runs for every waiting
        task on every scan, so a wait that is neither costs a dictionary lookup and three
        comparisons."""
        get, new, current, now = sweep.old.get, sweep.new, sweep.current, sweep.now
        probed = PROBED_TYPES
        followed, due = sweep.followed, sweep.due
        end = min(start + SLICE, len(items))
        looks = LOOKS
        for k in range(start, end):
            task = items[k]
            try:
                if weak:
                    task = task()
                    if task is None or task._loop is not loop:
                        continue
                fut = task._fut_waiter
            except AttributeError:  # a task class without _loop or _fut_waiter: left out
                continue
            if fut is None or fut.done() or task is current:
                continue
            tid = id(task)
            rec = get(tid)
            if rec is not None and rec._fut() is fut:  # (rec.fut, without the property)
                if rec.follow:
                    followed.append(Entry(task, fut, rec))
                elif rec.check_at <= now:
                    if rec.kind is None:
                        self._first_look(task, fut, rec)
                        looks -= 1
                        if rec.follow:
                            followed.append(Entry(task, fut, rec))
                        elif rec.check_at <= now:
                            due.append((rec.check_at, rec.since, tid, task, rec))
                    else:
                        due.append((rec.check_at, rec.since, tid, task, rec))
            else:
                rec = Seen(fut, now)
                if not sweep.closed and isinstance(fut, probed):
                    sweep.closed = closes_cycle(task, fut)
            new[tid] = rec
            if looks <= 0:
                return k + 1
        return end

    def _first_look(self, task: asyncio.Task[Any], fut: Any, rec: Seen) -> None:
        """The wait was seen by two scans: remember its kind."""
        kind = rec.kind = wait_kind(task, fut)
        rec.follow = kind in EDGE_KINDS
        rec.check_at = rec.since + self.stuck_after_s

    def _wait_of(self, entry: Entry) -> Wait | None:
        """The entry's wait, or None for a kind with no edges (remembered per wait)."""
        rec, fut = entry.rec, entry.fut
        kind = rec.kind
        if kind is not None and kind not in EDGE_KINDS:
            return None
        # Built afresh every scan (nothing kept between scans may hold the app's objects).
        if kind == "task":
            wait = Wait("task", "and", [fut], fut)
        elif kind == "gather":
            wait = Wait("gather", "and", fut._children, fut)  # type: ignore[attr-defined]  # a _GatheringFuture
        elif kind == "shield":
            inner = _shielded(fut)
            wait = Wait("shield", "and", [] if inner is None else [inner], fut)
        else:  # locks, TaskGroups, wait(): what they wait on changes, so look each time
            wait = classify(entry.task, fut, self.tracker)
            rec.kind = wait.kind
            if wait.kind not in EDGE_KINDS:  # e.g. a semaphore nobody holds: a signal
                rec.follow = False
        entry.wait = wait
        return wait if wait.mode is not None else None

    def _graph_steps(self, sweep: Sweep) -> Generator[str, None, Graph]:
        """The wait-for graph of the followed waits that still hold, ``ENTRIES`` waits a
        slice; ``sweep.followed`` keeps those that still hold."""
        wait_of = self._wait_of
        followed: list[Entry] = []
        waiting: list[Entry] = []
        for k, e in enumerate(sweep.followed):
            if still(e.task, e.rec):  # other code ran between slices
                followed.append(e)
                if wait_of(e) is not None:
                    waiting.append(e)
            if k % ENTRIES == ENTRIES - 1:
                yield "graph"
        sweep.followed = followed
        nodes = yield from trim_steps(waiting, ENTRIES)
        graph = Graph(nodes)
        graph.waiting = waiting
        index = {id(e.task): i for i, e in enumerate(graph.nodes)}
        count = len(graph.nodes)
        succ, mode, live0, res = graph.succ, graph.mode, graph.live0, graph.res
        res_index: dict[int, int] = {}
        task_types: Any = TASK_TYPES
        for k, e in enumerate(graph.nodes):
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
            if k % ENTRIES == ENTRIES - 1:
                yield "graph"
        for wait in res:
            succ.append([node_of(h, index, holder=True) for h in wait.succ])
            mode.append("or")
            live0.append(False)
        return graph

    def _deadlocks(
        self, loop: asyncio.AbstractEventLoop, state: LoopState, graph: Graph, now: float,
                   out: list[DeadlockFinding | StuckTaskFinding]) -> set[int]:
        """Report new cycles; return ids of tasks in (or waiting behind) any cycle. The
        graph may have been built over several slices: a cycle is reported only when every
        one of its waits still holds now (a real deadlock still does at the next scan)."""
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
            if not all(self._holds(nodes[v]) for v in members):
                if key in state.cycles:
                    active.add(key)  # (reported already: not again)
                continue
            active.add(key)
            deadlocked += len(members)
            waiting = [v for v in behind(group, succ, bad)
                       if v >= count or still(nodes[v].task, nodes[v].rec)]
            involved.update(id(nodes[v].task) for v in (*group, *waiting) if v < count)
            if key not in state.cycles:
                out.append(deadlock_finding(graph, group, waiting, self._wall_of(now), self.wall()))
        state.cycles = active
        state.deadlocked = deadlocked
        return involved

    def _emit(self, finding: DeadlockFinding | StuckTaskFinding) -> None:
        if isinstance(finding, DeadlockFinding):
            self.deadlocks_found += 1
        else:
            self.stuck_found += 1
        self.findings.add(finding)
        detail = "\n".join(chain.format() for chain in finding.chains)
        logger.warning("asyncwatch: %s\nAwait chains:\n%s", finding.explanation, detail)
