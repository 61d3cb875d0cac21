"""Live deadlock and stuck-task detection over the await graph and lock waits.

**Where it runs.** Each instrumented event loop scans itself with ``loop.call_later`` every
``deadlock_interval_s``: the scan reads only that loop's own state (tasks' ``_fut_waiter``,
await chains, lock waiter queues, holders recorded by ``_primitives``), and on the loop's own
thread that state cannot change under it, so no lock is needed and no half-updated hand-over
(a lock released, its next owner not yet running) can be mistaken for a cycle, which a thread
reading the same structures concurrently could not promise. A deadlocked loop is idle, so the
scan always gets to run. The price is that the scan holds its loop while it runs; a timed
scan runs in slices, each bounded by units of work (``SLICE`` and the constants after it:
tasks looked at, waits classified, checks made, one heap pass), with the loop running in
between, and whatever a later slice decides re-checks that the waits it uses still hold.
The interval stretches so that scans take about 1% of the loop's CPU time at most.

**Brought forward.** A cycle is certain, so the loop is scanned at once (and again
``EXPEDITE_S`` later, when its waits count as settled) when one is seen closing: by the lock
tracker's hook (``_lock_wait``, a task about to wait for a taken lock), or by the cycle probe
(``_scanstate.probe_steps``), which runs every ``deadlock_interval_s`` however far the scans'
interval has stretched, reads every task's wait in C and follows only the new waits on a task
or a gather, at most ``PROBE_SHARE`` of the loop's time.

**Deciding** (``scan()``, called by the timer or directly by tests):

1. Every pending task suspended on a future is recorded with the time it was first seen on
   that future. A wait seen by two scans in a row is *settled*; only settled waits are judged.
2. Settled waits are classified (``_waitgraph.classify``) and the graph of what waits on what
   is built: tasks on tasks (await, gather, TaskGroup, wait, shield, wait_for) and tasks on
   locks/semaphores on their holders. ``doomed()`` finds the nodes that can never wake, a
   timeout rescues a node, and the strongly connected groups with a cycle are deadlocks,
   reported once per cycle (the same tasks on the same futures).
3. A settled wait older than ``stuck_task_after_s`` on an event, condition, queue, bare future
   or signalling semaphore is checked with ``_reach`` (``direct``, then ``closed``, then,
   when due and when a pass fits a slice, a heap ``Walk``): if nothing but the waiting tasks
   (and tasks waiting on them) can reach the object, and the app's own code holds it, the task
   is stuck. A wait for a lock or semaphore held only by finished tasks needs no such check.
   Sleeps, I/O, waits with a timeout, ``idle()`` blocks and ``idle_coroutines`` never are.

Modules: ``_waitgraph`` (what a wait is, the graph algorithms), ``_reach`` (reference walks),
``_primitives`` (lock holders), ``_scanstate`` (the records kept across and within scans),
``_deadlock_report`` (finding types and their words).
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
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from .._core import names as n
from .._core.faults import Faults
from .._core.findings import FindingsLog
from .._core.measure import coroutine_key
from ..sync import PrimitiveTracker, state_of
from ._idle import is_idle
from ._reach import UNREACHABLE, Verdict, Walk, closed, direct
from ._report import (
    UNREACHABLE_WHY,
    DeadlockFinding,
    StuckTaskFinding,
    deadlock_finding,
    fate_of,
    get_reason,
    join_reason,
    names_of,
    released_never,
    stuck_finding,
)
from ._scanstate import (
    LOCKLIKE,
    PROBED_TYPES,
    Checks,
    Entry,
    Graph,
    LoopState,
    Seen,
    Sweep,
    behind,
    closes_cycle,
    node_of,
    own_record,
    probe_steps,
    still,
    task_refs,
    trim_steps,
)
from ._waitgraph import (
    EDGE_KINDS,
    LIVE,
    SIGNAL_KINDS,
    TASK_TYPES,
    Wait,
    _shielded,
    classify,
    coro_chain,
    cycles,
    doomed,
    frame_of,
    has_deadline,
    is_task,
    timer_targets,
    wait_kind,
)

logger = logging.getLogger("asyncwatch")

MAX_SHARE = 0.01  # most of a loop's (CPU) time the scans may take
# What one slice of a scan may do at most (the loop runs between slices):
SLICE = 1000  # tasks looked at (for a wait seen before: a dictionary lookup)
LOOKS = 400  # of which first looks at a settled wait (its kind read from the await chain)
ENTRIES = 500  # followed waits re-checked and classified, graph nodes built, candidates sorted
CHECKS_PER_SLICE = 4  # stuck checks (each a reference count over the waiters' frames),
# or one that follows references down from them (_reach.closed, at most 200 objects)
# and a heap walk: one gc.get_referrers pass (over at most Walk.per_pass objects) a slice.
_DONE = object()
CHECK_BUDGET_S = 0.005  # stuck checks per scan stop after this long; the rest wait a scan
CHECKS_PER_SCAN = 256  # candidates considered per scan (the longest unchecked first)
WALK_SHARE = 0.002  # most of a loop's time the reference walks (gc.get_referrers) may take
WALK_PASS_S = 0.006  # a timed scan walks the heap only if one pass is expected to fit this
WALK_MAX_S = 0.1  # a walk gives up (unknown) after this long in passes
PASS_COST_GUESS = 25e-9  # seconds a heap pass takes per allocated block, until one is timed
MAX_LOCK_CHAIN = 64  # holders followed from a lock wait looking for a cycle back to the waiter
EXPEDITE_S = 0.05  # after a lock wait closed a cycle: the scan that settles it runs this soon
PROBE_SHARE = 0.005  # most of a loop's (CPU) time the cycle probes may take




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
        # loop -> its state, both weakly: the state is owned by the loop (see _schedule).
        self._states: weakref.WeakKeyDictionary[Any, weakref.ref[LoopState]] = (
            weakref.WeakKeyDictionary()
        )
        self.deadlocks_found = 0
        self.stuck_found = 0
        self.scan_seconds = 0.0
        self.probing = True  # cycle probes run (off after repeated internal errors)
        self.probes = 0  # cycle probes made
        self.probe_hits = 0  # of which found a new wait closing a cycle (scans brought forward)
        self.last_scan_s = 0.0
        self.checks = 0  # reachability checks made (most without a heap walk)
        self.walks = 0  # of which heap walks
        self.closed_checks = 0  # of which checks that follow references down (_reach.closed)
        self._walk_after = -math.inf
        self._pass_cost = PASS_COST_GUESS  # of a heap pass, per allocated block (measured)
        self._pass_measured = False
        self.started_ns = time.time_ns()

    # ------------------------------------------------------------------ scheduling

    def start(self) -> None:
        """Scan every loop attached from now on."""
        self.active = True
        if self.tracker is not None:
            self.tracker.on_lock_wait = self._lock_wait

    def _lock_wait(self, lock: Any, task: Any) -> None:
        """``task`` is about to wait for ``lock`` (the lock tracker's hook, on the loop's
        thread). Follow holder -> the lock it waits for -> its holder...: back at ``task``
        (directly, or through a holder awaiting tasks or gathers: ``closes_cycle``), a
        cycle just closed, certain to be a deadlock unless a timeout ends it;
        the loop is then scanned at once (and again ``EXPEDITE_S`` later, when the waits
        count as settled) instead of at the next interval. Costs a few dictionary lookups,
        on contended acquires only."""
        waits = self.tracker.lock_waits if self.tracker is not None else None
        if waits is None or not self.active:
            return
        current = lock
        for _ in range(MAX_LOCK_CHAIN):
            state = state_of(current)
            holder = state.holder if state is not None else None
            if holder is None or holder.done():
                return
            if holder is task:
                break
            current = waits.get(id(holder))
            if current is None:
                # A holder awaiting a task or a gather: a cycle of awaits may lead back.
                fut = getattr(holder, "_fut_waiter", None)
                if isinstance(fut, PROBED_TYPES) and closes_cycle(task, fut):
                    break
                return
        else:
            return
        loop = asyncio.events._get_running_loop()
        if loop is not None:
            self.expedite(loop)

    def expedite(self, loop: Any) -> None:
        """Scan ``loop`` now and once more ``EXPEDITE_S`` later (from the loop's thread)."""
        ref = self._states.get(loop) if self.active else None
        state = ref() if ref is not None else None
        if state is None:
            return  # not attached (e.g. a loop on a clock of its own gets no timers of ours)
        handle = state.handle
        if handle is None or isinstance(handle, asyncio.TimerHandle):
            state.expedite = 2
            if handle is not None:
                handle.cancel()
            state.handle = None
            self._schedule(loop, state, 0.0)
        else:  # a scan in progress (it may have passed these tasks): two more after it
            state.expedite = 3

    def attach(self, loop: Any) -> None:
        """Scan ``loop`` every ``interval_s`` (call from its thread, or before it runs)."""
        if not self.active:
            return
        state = self._state(loop)
        if state.handle is None:
            self._schedule(loop, state, self.interval_s)
        if state.probe is None:
            self._schedule_probe(loop, state, self.interval_s)

    def _schedule(self, loop: Any, state: LoopState, delay: float) -> None:
        """The pending scan's handle holds the state, and the loop holds the handle: what the
        scanner remembers (futures, which reference their loop) is owned by the loop and is
        freed with it, closed or just dropped. A closed loop takes no timer: its state goes."""
        try:
            # Through the class, as the heartbeat: an instance-level replacement (a test's mock)
            # neither sees nor breaks the scans.
            state.handle = type(loop).call_later(
                loop, delay, self._tick, weakref.ref(loop), state
            )
        except RuntimeError:  # closed loop
            state.handle = None

    def _tick(self, loop_ref: Any, state: LoopState) -> None:
        loop = loop_ref()
        if loop is None or not self.active:
            return
        state.handle = None
        self._step(loop, state, self._steps(loop, state=state, sliced=True), 0.0, 0.0)

    def _step(self, loop: Any, state: LoopState, steps: Iterator[str], spent: float,
              cpu: float) -> None:
        """Run one slice of a timed scan; the next slice runs after whatever the loop has
        ready, so no single pause is longer than one slice. ``spent``: the scan's wall time
        so far (the metric), ``cpu``: its CPU time (what the 1% rule spaces out)."""
        if not self.active:
            return
        began_cpu = time.thread_time()
        began = time.perf_counter()
        try:
            done = next(steps, _DONE) is _DONE
        except Exception as exc:
            done = True
            if self.faults.report("deadlock_scan", exc):
                self.active = False
                return
        spent += time.perf_counter() - began
        cpu += time.thread_time() - began_cpu
        if not done:
            state.handle = type(loop).call_soon(
                loop, self._step, loop, state, steps, spent, cpu
            )
            return
        state.handle = None
        self.last_scan_s = spent
        self.scan_seconds += spent
        # The median of the last three scans' CPU time: a garbage collection that one scan's
        # allocation happened to set off (or a descheduled process) does not stretch the
        # interval, and with it how soon a cycle of tasks is found, tenfold.
        costs = state.costs
        costs.append(cpu)
        del costs[:-3]
        if state.expedite > 0:
            state.expedite -= 1
            if state.expedite > 0:
                self._schedule(loop, state, EXPEDITE_S)
                return
        typical = sorted(costs)[len(costs) // 2]
        self._schedule(loop, state, max(self.interval_s, typical / MAX_SHARE))

    def _schedule_probe(self, loop: Any, state: LoopState, delay: float) -> None:
        """The next cycle probe (the handle holds the state, as the scan's does)."""
        if not self.probing:
            state.probe = None
            return
        try:
            state.probe = type(loop).call_later(
                loop, delay, self._probe_tick, weakref.ref(loop), state
            )
        except RuntimeError:  # closed loop
            state.probe = None

    def _probe_tick(self, loop_ref: Any, state: LoopState) -> None:
        loop = loop_ref()
        if loop is None or not self.active:
            return
        state.probe = None
        self._probe_step(loop, state, probe_steps(loop, state, self._probe_edges), 0.0)

    def _probe_edges(self, task: Any, fut: Any) -> Iterable[Any]:
        """For the cycle probe, what a task waiting on neither a task nor a gather waits on:
        a TaskGroup's tasks, ``wait()``'s and ``shield()``'s futures, a lock's holders
        (``_waitgraph.classify``, as the scans read it); nothing for a wait a timeout ends
        or a kind of wait with no edges (sleep, I/O, an event...)."""
        wait = classify(task, fut, self.tracker)
        if wait.kind not in EDGE_KINDS or wait.mode is None or wait.escapable:
            return ()
        return wait.succ

    def _probe_step(self, loop: Any, state: LoopState, steps: Generator[str, None, bool],
                    cpu: float) -> None:
        """Run one slice of a cycle probe (``_scanstate.probe_steps``). Probes run every
        ``interval_s`` whatever the scans' interval has stretched to, spaced out so that
        they take ``PROBE_SHARE`` of the loop's time at most. A probe that finds a new wait
        closing a cycle of tasks brings the scans forward (``expedite``): they decide and
        report, exactly as for a cycle of lock waits. It does so again no sooner than a
        timed scan would have run (a cycle a timeout rescues, made over and over, costs no
        more scans than the 1% rule allows)."""
        if not self.active:
            return
        began = time.thread_time()
        found: bool | None = None
        try:
            next(steps)
        except StopIteration as stop:
            found = bool(stop.value)
        except Exception as exc:
            found = False
            if self.faults.report("deadlock_probe", exc):
                self.probing = False
        cpu += time.thread_time() - began
        if found is None:
            state.probe = type(loop).call_soon(loop, self._probe_step, loop, state, steps, cpu)
            return
        self.probes += 1
        costs = state.probe_costs
        costs.append(cpu)
        del costs[:-3]
        if found:
            now = self.clock()
            if now >= state.probe_after:
                self.probe_hits += 1
                scans = sorted(state.costs)
                typical = scans[len(scans) // 2] if scans else 0.0
                state.probe_after = now + max(self.interval_s, typical / MAX_SHARE)
                self.expedite(loop)
        typical = sorted(costs)[len(costs) // 2]
        self._schedule_probe(loop, state, max(self.interval_s, typical / PROBE_SHARE))

    def stop(self) -> None:
        """Stop scanning; cancel pending scans. Idempotent."""
        self.active = False
        if self.tracker is not None and self.tracker.on_lock_wait == self._lock_wait:
            self.tracker.on_lock_wait = None
        for loop, ref in list(self._states.items()):
            state = ref()
            if state is None:
                continue
            state.seen = {}
            state.probed = {}
            handles = (state.handle, state.probe)
            state.handle = state.probe = None
            for handle in handles:
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

    def _state(self, loop: Any) -> LoopState:
        ref = self._states.get(loop)
        state = ref() if ref is not None else None
        if state is None:
            state = LoopState()
            self._states[loop] = weakref.ref(state)
        return state

    # ------------------------------------------------------------------ metrics

    def points(self) -> Iterable[Any]:
        """Metric points at collection time (any thread)."""
        start = self.started_ns
        deadlocked = stuck = 0
        for _ in range(3):
            try:
                refs = list(self._states.values())
                break
            except RuntimeError:  # a loop was added meanwhile
                refs = []
        for ref in refs:
            state = ref()
            if state is None:
                continue
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
        state = self._state(loop)
        if state.handle is None and self.active:
            self._schedule(loop, state, self.interval_s)  # owned by the loop from now on
        if state.probe is None and self.active:
            self._schedule_probe(loop, state, self.interval_s)
        # (Otherwise nothing keeps the state: an inactive detector's scans start afresh.)
        try:
            for _ in self._steps(loop, out, state=state):
                pass
            return out
        finally:
            spent = time.perf_counter() - began
            self.last_scan_s = spent
            self.scan_seconds += spent

    def _steps(self, loop: Any, out: list[DeadlockFinding | StuckTaskFinding] | None = None,
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

    def _settle(self, sweep: Sweep, loop: Any, items: list[Any], weak: bool, start: int) -> int:
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

    def _first_look(self, task: Any, fut: Any, rec: Seen) -> None:
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
            wait = Wait("gather", "and", fut._children, fut)
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

    def _holds(self, e: Entry) -> bool:
        """Whether the wait the graph has for ``e`` is still the task's wait now: the same
        future and, for waits whose successors can change under the same future (locks,
        semaphores, TaskGroups, wait()), the same successors."""
        if not still(e.task, e.rec):
            return False
        wait = e.wait
        if wait is None or wait.kind in ("task", "gather", "shield"):
            return True
        fresh = classify(e.task, e.fut, self.tracker)
        return fresh.mode == wait.mode and (
            {id(x) for x in fresh.succ} == {id(x) for x in wait.succ}
        )

    def _deadlocks(self, loop: Any, state: LoopState, graph: Graph, now: float,
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

    def _stuck_steps(self, state: LoopState, sweep: Sweep, *, graph: Graph,
                     in_deadlock: set[int], now: float,
                     out: list[DeadlockFinding | StuckTaskFinding],
                     sliced: bool) -> Generator[str, None, None]:
        """The stuck checks: pick up to ``CHECKS_PER_SCAN`` candidates (``ENTRIES`` waits a
        slice), then check them, ``CHECKS_PER_SLICE`` a slice, a heap walk one pass a slice."""
        pool = sweep.due
        by_task: dict[int, Entry] = {}
        for k, e in enumerate(sweep.followed):
            rec = e.rec
            by_task[id(e.task)] = e
            if rec.check_at <= now and id(e.task) not in in_deadlock:
                pool.append((rec.check_at, rec.since, id(e.task), e.task, rec))
            if k % ENTRIES == ENTRIES - 1:
                yield "stuck"
        # Never checked first, then the longest without a check: no wait starves the others.
        # The rest (and those past the time budget) keep their place for the next scan.
        best: list[tuple[float, float, int, Any, Seen]] = []
        for start in range(0, len(pool), ENTRIES):
            best = heapq.nsmallest(CHECKS_PER_SCAN, best + pool[start : start + ENTRIES])
            if start + ENTRIES < len(pool):
                yield "stuck"
        del pool[:]
        if not best:
            return
        yield "stuck"
        candidates = [
            by_task.get(tid) or Entry(task, task._fut_waiter, rec)
            for _, _, tid, task, rec in best
            if still(task, rec)
        ]
        del best
        for e in candidates:
            by_task[id(e.task)] = e
        checks = Checks(by_task, graph)
        if graph.waiting:
            yield from checks.rev_steps(ENTRIES)
        spent = 0.0
        walk_ok = now >= self._walk_after
        units = 0  # a check is one unit, one that follows references down a slice's worth
        for e in candidates:
            if spent > CHECK_BUDGET_S:
                break
            if units >= CHECKS_PER_SLICE:
                units = 0
                yield "stuck"
            if not still(e.task, e.rec):
                continue  # it woke (or moved on) since it was picked
            units += 1
            began = time.perf_counter()
            rec = e.rec
            if e.wait is None:
                e.wait = classify(e.task, e.fut, self.tracker)
                rec.kind = e.wait.kind
            wait = e.wait
            if (
                wait.kind in ("sleep", "io") or wait.escapable or is_idle(e.task)
                or self._idle_by_name(e.task) or has_deadline(e.task, coro_chain(e.task))
            ):
                rec.check_at = math.inf  # by design, or a timeout will end it
                spent += time.perf_counter() - began
                continue
            dead_notifier = self._dead_lock_holder(wait) if wait.kind == "condition" else None
            if wait.kind in LOCKLIKE and wait.mode == "or" and all(t.done() for t in wait.succ):
                if not self._holds(e):
                    continue
                reason = released_never(list(wait.succ))
                blocked: list[Any] = []
            elif dead_notifier is not None:
                # notify() needs the Condition's lock, which a finished task still holds
                reason = (
                    f"{names_of([dead_notifier])} {fate_of(dead_notifier)} while still holding"
                    " the Condition's lock, so no task can acquire it to call notify()"
                )
                blocked = []
            elif wait.kind in SIGNAL_KINDS and wait.obj is not None:
                key = id(wait.obj)
                if key not in checks.verdicts:
                    followed_down = self.closed_checks
                    got, private, behind = self._direct(e, checks)
                    if self.closed_checks > followed_down:
                        units = CHECKS_PER_SLICE
                    if got is None and walk_ok and (not sliced or self._walk_fits()):
                        walk_ok = False  # at most one walk per scan
                        spent += time.perf_counter() - began
                        got = yield from self._walk_steps(e, private, behind)
                        began = time.perf_counter()
                    del private, behind
                    checks.verdicts[key] = got
                got = checks.verdicts[key]
                if got is None:
                    spent += time.perf_counter() - began
                    continue  # needs a heap walk, and none is due yet
                verdict, blocked = got
                if verdict.outcome != UNREACHABLE:
                    rec.checks += 1
                    rec.check_at = now + self.stuck_after_s * min(2 ** rec.checks, 64)
                    spent += time.perf_counter() - began
                    continue
                if not verdict.held_by_user:
                    rec.check_at = math.inf  # `await asyncio.Future()`: forever by design
                    spent += time.perf_counter() - began
                    continue
                reason = UNREACHABLE_WHY.get(wait.kind, "nothing else references it")
                if wait.kind == "queue_join":
                    reason = join_reason(wait.obj, checks.waiters_of(wait)) or reason
                elif wait.kind == "queue_get":
                    reason = get_reason(wait.obj, checks.waiters_of(wait)) or reason
            else:
                rec.check_at = now + self.stuck_after_s  # waits on tasks, or on live holders
                spent += time.perf_counter() - began
                continue
            spent += time.perf_counter() - began
            rec.reported = True
            rec.check_at = math.inf
            state.reported.add(id(e.task))
            out.append(stuck_finding(e, reason, blocked, now, self._wall_of(now), self.wall()))

    def _walk_fits(self) -> bool:
        """Whether one heap pass is expected to fit a slice (``WALK_PASS_S``): the cost per
        allocated memory block of the last pass measured, times the blocks allocated now."""
        return sys.getallocatedblocks() * self._pass_cost <= WALK_PASS_S

    def _direct(self, entry: Entry, checks: Checks) -> tuple[
        tuple[Verdict, list[Any]] | None, list[Any], list[Any]
    ]:
        """Can anything but its waiters (and who waits on them) reach the entry's object,
        as far as the checks without a heap pass (``_reach.direct``, ``_reach.closed``)
        tell? Returns ``(verdict and the tasks
        behind, or None when that needs a heap walk; the private objects; the tasks behind)``."""
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
        if verdict is None:  # held through objects of the waiters' own, perhaps: no heap pass
            self.closed_checks += 1
            verdict = closed([wait.obj], private, own)
        return (None if verdict is None else (verdict, behind)), private, behind

    def _walk_steps(self, entry: Entry, private: list[Any], behind: list[Any]) -> Generator[
        str, None, tuple[Verdict, list[Any]] | None
    ]:
        """Walk up from the entry's object one heap pass a slice (``_reach.Walk``); None when
        the wait ended meanwhile. The walk's last step confirms an ``UNREACHABLE`` outcome at
        one instant; in that same slice, every private task must still wait on the future
        it waited on when the walk began (so the private ids still name the same objects)."""
        wait = entry.wait
        assert wait is not None
        guard = [(t, t._fut_waiter) for t in private if is_task(t)]
        walk = Walk([wait.obj], {id(p) for p in private}, own_record, max_s=WALK_MAX_S)
        del private
        try:
            while True:
                yield "walk"
                if not still(entry.task, entry.rec):
                    return None
                blocks = sys.getallocatedblocks()
                started = time.perf_counter()
                passes = walk.passes
                verdict = walk.step()
                if walk.passes > passes:
                    # The lowest cost seen: noise (a descheduled process) only adds to it, and
                    # a slow moment must not keep walks away for good.
                    cost = (time.perf_counter() - started) / max(blocks, 1)
                    measured = self._pass_measured
                    self._pass_cost = min(self._pass_cost, cost) if measured else cost
                    self._pass_measured = True
                if verdict is not None:
                    break
        finally:
            self.walks += 1
            # Walks cost a pass over the heap a step: space them out to WALK_SHARE.
            self._walk_after = self.clock() + walk.spent / WALK_SHARE
        if verdict.outcome == UNREACHABLE and not all(
            getattr(t, "_fut_waiter", None) is f and f is not None and not f.done()
            for t, f in guard
        ):
            return None
        return verdict, behind

    def _dead_lock_holder(self, wait: Any) -> Any:
        """For a Condition wait: the finished task still holding the Condition's lock."""
        state = state_of(getattr(wait.obj, "_lock", None))
        holder = state.holder if state is not None else None
        return holder if holder is not None and holder.done() else None

    def _idle_by_name(self, task: Any) -> bool:
        if not self.idle_patterns:
            return False
        for coro in coro_chain(task):
            key = coroutine_key(coro)
            if any(fnmatch.fnmatchcase(key, p) for p in self.idle_patterns):
                return True
        return False

    # ------------------------------------------------------------------ findings

    def _wall_of(self, now: float) -> Callable[[float], float]:
        """Detector clock readings (``now`` being this scan's) to epoch seconds."""
        wall = self.wall()
        return lambda when: wall - (now - when)

    def _emit(self, finding: DeadlockFinding | StuckTaskFinding) -> None:
        if isinstance(finding, DeadlockFinding):
            self.deadlocks_found += 1
        else:
            self.stuck_found += 1
        self.findings.add(finding)
        detail = "\n".join(chain.format() for chain in finding.chains)
        logger.warning("asyncwatch: %s\nAwait chains:\n%s", finding.explanation, detail)


