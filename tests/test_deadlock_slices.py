"""Timed deadlock scans hold the loop in small slices: every phase (settling waits,
classifying them and building the graph, picking and making stuck checks, heap walks) is
bounded by work units per slice, and what ends between two slices is never reported.
Slices are counted in work units, never timed."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import asyncwatch
import asyncwatch.deadlock._detector as detector
import asyncwatch.deadlock._scan as scan
import asyncwatch.deadlock._scanstate as scanstate
import asyncwatch.deadlock._stuck as stuck
from asyncwatch.deadlock._reach import UNREACHABLE, Walk
from asyncwatch.testing import settle

from .deadlock_helpers import install

Work = Counter[str]


def counting(monkeypatch: pytest.MonkeyPatch, work: Work) -> None:
    """Count the scan's units of work as it does them."""

    def count(owner: Any, name: str, unit: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            work[unit] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    count(scan, "wait_kind", "first looks")
    for module in (scan, stuck, detector):  # the scan's graph, its checks, the probe
        count(module, "classify", "classified")
    count(stuck, "direct", "reference checks")
    count(stuck, "closed", "checks following references down")
    # (gc.get_referrers itself is left alone: a wrapper's argument tuple would be a
    # reference the walk cannot see)
    count(Walk, "_pass", "heap passes")
    original_init = scanstate.Seen.__init__

    def seen(self: Any, *args: Any) -> None:
        work["new waits"] += 1
        original_init(self, *args)

    monkeypatch.setattr(scanstate.Seen, "__init__", seen)


async def slices(watch: asyncwatch.Watch, work: Work) -> list[tuple[str, Work]]:
    """One timed scan, slice by slice with the loop running in between: each slice's phase
    and the work it did."""
    out: list[tuple[str, Work]] = []
    steps: Iterator[str] = watch.deadlocks._steps(asyncio.get_running_loop(), sliced=True)
    while True:
        work.clear()
        phase = next(steps, None)
        out.append((phase or "last", Counter(work)))
        if phase is None:
            return out
        await asyncio.sleep(0)


def most(found: list[tuple[str, Work]], unit: str) -> int:
    return max(w[unit] for _, w in found)


async def test_settling_and_classifying_thousands_of_waits_is_sliced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """3,000 waiting tasks: the first scan records at most SLICE new waits a slice, the
    second reads at most LOOKS wait kinds a slice and classifies at most ENTRIES waits a
    slice, and so do later scans."""
    watch, _ = install()
    work: Work = Counter()

    async def child() -> None:
        await asyncio.sleep(3600)

    async def parent() -> None:
        await asyncio.create_task(child())

    lock = asyncio.Lock()

    async def holder() -> None:
        async with lock:
            await asyncio.sleep(3600)

    async def locker() -> None:
        async with lock:
            pass

    tasks = [asyncio.create_task(asyncio.sleep(3600)) for _ in range(1500)]
    tasks += [asyncio.create_task(parent()) for _ in range(600)]
    tasks.append(asyncio.create_task(holder()))
    await settle()
    tasks += [asyncio.create_task(locker()) for _ in range(600)]
    await settle()
    counting(monkeypatch, work)
    try:
        first = await slices(watch, work)
        assert sum(w["new waits"] for _, w in first) >= 3000
        assert most(first, "new waits") <= scan.SLICE
        settled = await slices(watch, work)
        assert sum(w["first looks"] for _, w in settled) >= 3000
        assert most(settled, "first looks") <= scan.LOOKS
        assert sum(w["classified"] for _, w in settled) >= 600  # the lock waits
        assert most(settled, "classified") <= stuck.ENTRIES
        assert len(settled) >= 3000 // scan.LOOKS
        steady = await slices(watch, work)
        assert most(steady, "classified") <= stuck.ENTRIES
        assert not asyncwatch.findings()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Box:
    """The app's object holding what a task waits on."""

    def __init__(self) -> None:
        self.event = asyncio.Event()


KEPT: list[Any] = []  # a module's list: what it holds is reachable


async def test_stuck_checks_are_made_a_few_a_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forty waits on events past the threshold: at most CHECKS_PER_SLICE reference checks
    a slice, at most one that follows references down, and no heap pass while walks are
    not due."""
    watch, clock = install()
    monkeypatch.setattr(stuck, "CHECK_BUDGET_S", 3600.0)  # all forty in this scan
    work: Work = Counter()
    events = [asyncio.Event() for _ in range(40)]
    KEPT.extend(events)
    tasks = [asyncio.create_task(e.wait()) for e in events]
    await settle()
    try:
        watch.deadlocks.scan()
        watch.deadlocks.scan()
        clock.advance(100)
        watch.deadlocks._walk_after = float("inf")
        counting(monkeypatch, work)
        found = await slices(watch, work)
        assert sum(w["reference checks"] for _, w in found) == 40
        assert most(found, "reference checks") <= stuck.CHECKS_PER_SLICE
        # (each of these also follows references down from the waiters: one such a slice)
        assert sum(w["checks following references down"] for _, w in found) == 40
        assert most(found, "checks following references down") == 1
        assert most(found, "heap passes") == 0
        assert not asyncwatch.findings()
    finally:
        KEPT.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Link:
    """One object of a chain the app keeps."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner


def forgotten() -> tuple[asyncio.Task[None], Box]:
    """A task waiting on an Event that only its own frame can reach, through a chain of six
    objects: deeper than the check without a heap pass follows (``closed``, four levels),
    so a heap walk is needed to tell."""
    box = Box()
    chain: Any = box
    for _ in range(6):
        chain = Link(chain)

    async def wait_forgotten(chain: Any) -> None:
        await chain.inner.inner.inner.inner.inner.inner.event.wait()

    return asyncio.create_task(wait_forgotten(chain), name="forgotten"), box


async def walk_scan(watch: asyncwatch.Watch, clock: Any, work: Work,
                    between: Callable[[], None] = lambda: None) -> list[tuple[str, Work]]:
    """A timed scan that walks the heap for the stuck check; ``between`` runs after the
    walk's first pass, on the loop."""
    watch.deadlocks.scan()
    watch.deadlocks.scan()
    clock.advance(100)
    watch.deadlocks._walk_after = 0.0
    watch.deadlocks._pass_cost = 0.0  # however big the test process's heap: walk
    out: list[tuple[str, Work]] = []
    steps: Iterator[str] = watch.deadlocks._steps(asyncio.get_running_loop(), sliced=True)
    while True:
        work.clear()
        phase = next(steps, None)
        out.append((phase or "last", Counter(work)))
        if phase is None:
            return out
        if work["heap passes"] == 1 and sum(w["heap passes"] for _, w in out) == 1:
            between()
        await asyncio.sleep(0)


async def test_a_heap_walk_makes_one_pass_a_slice_and_finds_the_forgotten_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The walk up from the Event takes a gc.get_referrers pass per slice, and the task is
    reported stuck."""
    watch, clock = install()
    monkeypatch.setattr(stuck, "WALK_MAX_S", 3600.0)  # however slow the machine is now
    monkeypatch.setattr(stuck, "CHECK_BUDGET_S", 3600.0)
    work: Work = Counter()
    task, box = forgotten()
    del box
    await settle()
    counting(monkeypatch, work)
    try:
        found = await walk_scan(watch, clock, work)
        assert sum(w["heap passes"] for _, w in found) >= 2
        assert most(found, "heap passes") == 1
        [finding] = asyncwatch.findings("stuck_task")
        assert finding.tasks == ("forgotten",)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_wait_that_ends_during_a_walk_is_not_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Event is set between two passes of the walk: the task no longer waits, and
    nothing is reported."""
    watch, clock = install()
    work: Work = Counter()
    task, box = forgotten()
    await settle()
    counting(monkeypatch, work)
    found = await walk_scan(watch, clock, work, between=box.event.set)
    assert sum(w["heap passes"] for _, w in found) >= 1
    await task
    assert asyncwatch.findings("stuck_task") == []


def test_an_object_made_reachable_during_a_walk_is_not_unreachable() -> None:
    """Between two passes the app stores the object in a module's list: the walk's
    closing check sees the new reference, and the outcome is not UNREACHABLE."""
    holder: list[Any] = [Box()]
    holder[0].inner = Box()
    walk = Walk([holder[0].inner], {id(holder)})
    assert walk.step() is None  # the pass over the inner Box finds the outer one
    KEPT.append(holder[0].inner)
    try:
        while (verdict := walk.step()) is None:
            pass
        assert verdict.outcome != UNREACHABLE
    finally:
        KEPT.clear()


def test_an_object_only_a_private_holder_reaches_is_unreachable_in_steps() -> None:
    """The same walk without the new reference: UNREACHABLE, confirmed in its last step."""
    holder: list[Any] = [Box()]
    holder[0].inner = Box()
    walk = Walk([holder[0].inner], {id(holder)})
    steps = 1
    while (verdict := walk.step()) is None:
        steps += 1
    assert verdict.outcome == UNREACHABLE
    assert steps >= 2


async def test_an_event_kept_on_an_object_only_the_waiter_knows_needs_no_heap_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``self.event`` on an object only the waiting frame holds: found stuck with walks
    refused (as on a heap too big for a pass to fit a slice), without a heap pass."""
    watch, clock = install()
    work: Work = Counter()

    async def wait_on_box(box: Box) -> None:
        await box.event.wait()

    task = asyncio.create_task(wait_on_box(Box()), name="boxed")
    await settle()
    counting(monkeypatch, work)
    try:
        watch.deadlocks.scan()
        watch.deadlocks.scan()
        clock.advance(100)
        watch.deadlocks._walk_after = 0.0
        watch.deadlocks._pass_cost = float("inf")  # no pass would fit
        found = await slices(watch, work)
        assert sum(w["heap passes"] for _, w in found) == 0
        [finding] = asyncwatch.findings("stuck_task")
        assert finding.tasks == ("boxed",)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_object_the_app_also_keeps_elsewhere_is_not_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same wait while a module's list also holds the Box: nothing is reported."""
    watch, clock = install()
    work: Work = Counter()

    async def wait_on_box(box: Box) -> None:
        await box.event.wait()

    KEPT.append(Box())
    task = asyncio.create_task(wait_on_box(KEPT[0]), name="boxed")
    await settle()
    counting(monkeypatch, work)
    try:
        watch.deadlocks.scan()
        watch.deadlocks.scan()
        clock.advance(100)
        watch.deadlocks._walk_after = 0.0
        watch.deadlocks._pass_cost = float("inf")
        await slices(watch, work)
        assert asyncwatch.findings("stuck_task") == []
    finally:
        KEPT.clear()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
