"""Live deadlock and stuck-task detection over the await graph and lock waits: the
detector that runs the scans (``_scan``, ``_stuck``) on each loop's timers, in slices, and
brings them forward when a cycle is seen closing.

**Where it runs.** Each instrumented event loop scans itself with ``loop.call_later`` every
``deadlock_interval_s``: the scan reads only that loop's own state (tasks' ``_fut_waiter``,
await chains, lock waiter queues, holders recorded by ``sync``), and on the loop's own
thread that state cannot change under it, so no lock is needed and no half-updated hand-over
(a lock released, its next owner not yet running) can be mistaken for a cycle, which a thread
reading the same structures concurrently could not promise. A deadlocked loop is idle, so the
scan always gets to run. The price is that the scan holds its loop while it runs; a timed
scan runs in slices, each bounded by units of work (``_scan.SLICE`` and the constants after
it: tasks looked at, waits classified, checks made, one heap pass), with the loop running in
between, and whatever a later slice decides re-checks that the waits it uses still hold.
The interval stretches so that scans take about 1% of the loop's CPU time at most.

**Brought forward.** A cycle is certain, so the loop is scanned at once (and again
``EXPEDITE_S`` later, when its waits count as settled) when one is seen closing: by the lock
tracker's hook (``_lock_wait``, a task about to wait for a taken lock), or by the cycle probe
(``_scanstate.probe_steps``), which runs every ``deadlock_interval_s`` however far the scans'
interval has stretched, reads every task's wait in C and follows only the new waits on a task
or a gather, at most ``PROBE_SHARE`` of the loop's time.

**Deciding** (``scan()``, called by the timer or directly by tests): ``_scan`` (settled waits,
the wait-for graph, its cycles) and ``_stuck`` (stuck checks, heap-walk pacing).

Modules: ``_scan`` and ``_stuck`` (the scan, the layers ``DeadlockDetector`` is built on),
``_waitgraph`` (what a wait is, the graph algorithms), ``_reach`` (reference walks), ``sync``
(lock holders), ``_scanstate`` (the records kept across and within scans, the cycle probe),
``_report`` (finding types and their words).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from .._core import names as n
from .._core.faults import Faults
from .._core.findings import FindingsLog
from ..sync import PrimitiveTracker, state_of
from ._report import DeadlockFinding, StuckTaskFinding
from ._scan import EXPEDITE_S, DeadlockScanner
from ._scanstate import PROBED_TYPES, LoopState, closes_cycle, probe_steps
from ._waitgraph import EDGE_KINDS, classify

MAX_SHARE = 0.01  # most of a loop's (CPU) time the scans may take
_DONE = object()
MAX_LOCK_CHAIN = 64  # holders followed from a lock wait looking for a cycle back to the waiter
PROBE_SHARE = 0.005  # most of a loop's (CPU) time the cycle probes may take


class DeadlockDetector(DeadlockScanner):
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
        super().__init__(tracker, findings, stuck_after_s=stuck_after_s,
                         idle_patterns=idle_patterns, clock=clock, wall=wall)
        self.faults = faults
        self.interval_s = interval_s
        self.active = False
        self.scan_seconds = 0.0
        self.probing = True  # cycle probes run (off after repeated internal errors)
        self.probes = 0  # cycle probes made
        self.probe_hits = 0  # of which found a new wait closing a cycle (scans brought forward)
        self.last_scan_s = 0.0
        self.started_ns = time.time_ns()

    # ------------------------------------------------------------------ scheduling

    def start(self) -> None:
        """Scan every loop attached from now on."""
        self.active = True
        if self.tracker is not None:
            self.tracker.on_lock_wait = self._lock_wait

    def _lock_wait(self, lock: Any, task: asyncio.Task[Any]) -> None:
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

    def expedite(self, loop: asyncio.AbstractEventLoop) -> None:
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

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Scan ``loop`` every ``interval_s`` (call from its thread, or before it runs)."""
        if not self.active:
            return
        state = self._state(loop)
        if state.handle is None:
            self._schedule(loop, state, self.interval_s)
        if state.probe is None:
            self._schedule_probe(loop, state, self.interval_s)

    def _schedule(self, loop: asyncio.AbstractEventLoop, state: LoopState, delay: float) -> None:
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

    def _step(
        self, loop: asyncio.AbstractEventLoop, state: LoopState, steps: Iterator[str], spent: float,
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

    def _schedule_probe(
        self, loop: asyncio.AbstractEventLoop, state: LoopState, delay: float) -> None:
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

    def _probe_edges(self, task: asyncio.Task[Any], fut: asyncio.Future[Any]) -> Iterable[Any]:
        """For the cycle probe, what a task waiting on neither a task nor a gather waits on:
        a TaskGroup's tasks, ``wait()``'s and ``shield()``'s futures, a lock's holders
        (``_waitgraph.classify``, as the scans read it); nothing for a wait a timeout ends
        or a kind of wait with no edges (sleep, I/O, an event...)."""
        wait = classify(task, fut, self.tracker)
        if wait.kind not in EDGE_KINDS or wait.mode is None or wait.escapable:
            return ()
        return wait.succ

    def _probe_step(
        self, loop: asyncio.AbstractEventLoop, state: LoopState, steps: Generator[str, None, bool],
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

    # ------------------------------------------------------------------ a scan in one go

    def scan(
        self, loop: asyncio.AbstractEventLoop | None = None
    ) -> list[DeadlockFinding | StuckTaskFinding]:
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
