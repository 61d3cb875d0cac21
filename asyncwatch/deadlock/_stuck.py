"""The stuck-task checks of a scan, and the pacing of the heap walks they may need.

A settled wait older than ``stuck_task_after_s`` on an event, condition, queue, bare future or
signalling semaphore is checked with ``_reach`` (``direct``, then ``closed``, then, when due
and when a pass fits a slice, a heap ``Walk``): if nothing but the waiting tasks (and tasks
waiting on them) can reach the object, and the app's own code holds it, the task is stuck. A
wait for a lock or semaphore held only by finished tasks needs no such check. Sleeps, I/O,
waits with a timeout, ``idle()`` blocks and ``idle_coroutines`` never are.

``StuckChecker`` is the lowest layer of ``DeadlockDetector`` (``_scan.DeadlockScanner`` runs
its checks as the last phase of a scan); it also owns what that scan's deadlock decision and
these checks share: whether a wait still holds (``_holds``) and the clock-to-epoch reading
of findings (``_wall_of``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import heapq
import math
import sys
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any

from .._core.measure import coroutine_key
from ..sync import PrimitiveTracker, state_of
from ._idle import is_idle
from ._reach import UNREACHABLE, Verdict, Walk, closed, direct
from ._report import (
    UNREACHABLE_WHY,
    DeadlockFinding,
    StuckTaskFinding,
    fate_of,
    get_reason,
    join_reason,
    names_of,
    released_never,
    stuck_finding,
)
from ._scanstate import LOCKLIKE, Checks, Entry, Graph, LoopState, Seen, Sweep, own_record, still
from ._waitgraph import SIGNAL_KINDS, classify, coro_chain, frame_of, has_deadline, is_task

# What one slice of a scan may do at most (the loop runs between slices; see also
# _scan.SLICE and _scan.LOOKS):
ENTRIES = 500  # followed waits re-checked and classified, graph nodes built, candidates sorted
CHECKS_PER_SLICE = 4  # stuck checks (each a reference count over the waiters' frames),
# or one that follows references down from them (_reach.closed, at most 200 objects)
# and a heap walk: one gc.get_referrers pass (over at most Walk.per_pass objects) a slice.
CHECK_BUDGET_S = 0.005  # stuck checks per scan stop after this long; the rest wait a scan
CHECKS_PER_SCAN = 256  # candidates considered per scan (the longest unchecked first)
WALK_SHARE = 0.002  # most of a loop's time the reference walks (gc.get_referrers) may take
WALK_PASS_S = 0.006  # a timed scan walks the heap only if one pass is expected to fit this
WALK_MAX_S = 0.1  # a walk gives up (unknown) after this long in passes
PASS_COST_GUESS = 25e-9  # seconds a heap pass takes per allocated block, until one is timed


class StuckChecker:
    """The stuck checks of a scan, and what they keep across scans (the heap walks' pacing
    and cost per block, counts of checks made); see the module docstring."""

    def __init__(
        self,
        tracker: PrimitiveTracker | None,
        *,
        stuck_after_s: float,
        idle_patterns: Iterable[str],
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self.tracker = tracker
        self.stuck_after_s = stuck_after_s
        self.idle_patterns = tuple(idle_patterns)
        self.clock = clock
        self.wall = wall
        self.checks = 0  # reachability checks made (most without a heap walk)
        self.walks = 0  # of which heap walks
        self.closed_checks = 0  # of which checks that follow references down (_reach.closed)
        self._walk_after = -math.inf
        self._pass_cost = PASS_COST_GUESS  # of a heap pass, per allocated block (measured)
        self._pass_measured = False

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

    def _wall_of(self, now: float) -> Callable[[float], float]:
        """Detector clock readings (``now`` being this scan's) to epoch seconds."""
        wall = self.wall()
        return lambda when: wall - (now - when)

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

    def _idle_by_name(self, task: asyncio.Task[Any]) -> bool:
        if not self.idle_patterns:
            return False
        for coro in coro_chain(task):
            key = coroutine_key(coro)
            if any(fnmatch.fnmatchcase(key, p) for p in self.idle_patterns):
                return True
        return False
