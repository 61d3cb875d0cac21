"""Deadlocks are reported without waiting for the next timed scan: the lock tracker sees the
lock wait that closes a cycle, the cycle probe (every ``deadlock_interval_s``, however far the
timed scans' interval has stretched) a new wait on a task or a gather that closes one, and
the loop is scanned right then."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import asyncwatch
import asyncwatch.deadlock._detector as detector
from asyncwatch import DeadlockFinding
from asyncwatch._core.config import Config
from asyncwatch.deadlock._scanstate import MAX_CHAIN, closes_cycle
from asyncwatch.testing import settle

from .deadlock_helpers import is_rotation, throwaway_loop


def inversion(found: asyncio.Event, *, hold: int = 2) -> Any:
    async def main() -> list[asyncio.Task[None]]:
        locks = [asyncio.Lock() for _ in range(hold)]
        everyone = asyncio.Barrier(hold)

        async def take(i: int) -> None:
            async with locks[i]:
                await everyone.wait()
                async with locks[(i + 1) % hold]:
                    pass

        tasks = [asyncio.create_task(take(i), name=f"taker-{i}") for i in range(hold)]
        try:
            await asyncio.wait_for(found.wait(), 60)
        finally:
            for task in tasks:
                task.cancel()  # lock waits can be cancelled
            await asyncio.gather(*tasks, return_exceptions=True)
        return tasks

    return main


def run_inversion(hold: int) -> DeadlockFinding:
    watch = asyncwatch.install(
        metrics_exporters=("none",), raise_errors=True, deadlock_interval_s=3600.0
    )
    loop = asyncio.new_event_loop()
    try:
        found = asyncio.Event()
        watch.findings.listen(lambda finding: loop.call_soon_threadsafe(found.set))
        loop.run_until_complete(inversion(found, hold=hold)())
        [finding] = asyncwatch.findings("deadlock")
        assert isinstance(finding, DeadlockFinding)
        return finding
    finally:
        asyncwatch.uninstall()
        loop.close()


def test_lock_cycle_found_without_the_timed_scan() -> None:
    """The timed scan is an hour away: the deadlock is still reported (by the scans its last
    lock wait triggered), naming both tasks."""
    finding = run_inversion(2)
    assert is_rotation(finding.tasks, ("taker-0", "taker-1"))


def test_longer_lock_cycle_found_without_the_timed_scan() -> None:
    finding = run_inversion(4)
    assert sorted(finding.tasks) == [f"taker-{i}" for i in range(4)]


def test_default_interval_finds_any_cycle_within_two_seconds_of_scans() -> None:
    """Cycles that no lock wait closes (tasks awaiting tasks) need two timed scans: the
    default interval keeps that under 2 s for loops whose scans stay under 1% of the time."""
    assert 2 * Config().deadlock_interval_s <= 1.0


def test_await_cycle_found_without_the_timed_scan() -> None:
    """Two tasks awaiting each other, the timed scans an hour apart: the scan that first sees
    the cycle's waits (run by hand here, as a scan the loop happens to run) asks for the next
    one soon, and that one reports it."""
    watch = asyncwatch.install(
        metrics_exporters=("none",), raise_errors=True, deadlock_interval_s=3600.0
    )
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)  # an await cycle cannot be ended
    tasks: dict[str, asyncio.Task[None]] = {}

    async def first() -> None:
        await asyncio.sleep(0)
        await tasks["second"]

    async def second() -> None:
        await asyncio.sleep(0)
        await tasks["first"]

    async def main() -> None:
        found = asyncio.Event()
        watch.findings.listen(lambda finding: loop.call_soon_threadsafe(found.set))
        tasks["first"] = asyncio.create_task(first(), name="first")
        tasks["second"] = asyncio.create_task(second(), name="second")
        for _ in range(5):
            await asyncio.sleep(0)
        assert watch.deadlocks.scan() == []  # seen once: not settled yet
        await asyncio.wait_for(found.wait(), 60)

    try:
        loop.run_until_complete(main())
        [finding] = asyncwatch.findings("deadlock")
        assert isinstance(finding, DeadlockFinding)
        assert is_rotation(finding.tasks, ("first", "second"))
    finally:
        asyncwatch.uninstall()
        loop.close()
        import gc

        gc.collect()


def _stretched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the 1% rule stretch the timed scans' interval to ages after the first scan: any
    deadlock found after that was found through the cycle probe, whatever the timing."""
    monkeypatch.setattr(detector, "MAX_SHARE", 1e-12)


async def _first_timed_scan_done(watch: asyncwatch.Watch) -> None:
    """Poll (with a deadline) until the first timed scan has run to its end."""
    state = watch.deadlocks._state(asyncio.get_running_loop())
    deadline = time.monotonic() + 60
    while not state.costs:
        assert time.monotonic() < deadline, "no timed scan ran"
        await asyncio.sleep(0.01)


def _await_cycle(shape: str, tasks: dict[str, asyncio.Task[Any]]) -> list[tuple[str, Any]]:
    """The coroutines of a cycle of ``shape``, by task name (``tasks`` is filled in as they
    are made; a TaskGroup's child is named ``child``)."""
    lock = asyncio.Lock()

    async def await_task(other: str) -> None:
        await asyncio.sleep(0)
        await tasks[other]

    async def gather_task(other: str) -> None:
        await asyncio.sleep(0)
        await asyncio.gather(tasks[other], asyncio.sleep(3600))

    async def in_group(other: str) -> None:
        await asyncio.sleep(0)
        async with asyncio.TaskGroup() as group:
            tasks["child"] = group.create_task(await_task(other), name="child")

    async def wait_task(other: str) -> None:
        await asyncio.sleep(0)
        await asyncio.wait([tasks[other]])

    async def shield_task(other: str) -> None:
        await asyncio.sleep(0)
        await asyncio.shield(tasks[other])

    async def hold_and_await(other: str) -> None:
        async with lock:
            for _ in range(3):  # the other's lock wait begins first: the await closes it
                await asyncio.sleep(0)
            await tasks[other]

    async def want_lock() -> None:
        await asyncio.sleep(0)
        async with lock:
            pass

    if shape == "await":
        return [("first", await_task("second")), ("second", await_task("first"))]
    if shape == "gather":
        return [("first", gather_task("second")), ("second", await_task("first"))]
    if shape == "three":  # one link through a gather
        return [
            ("first", await_task("second")),
            ("second", gather_task("third")),
            ("third", await_task("first")),
        ]
    if shape == "taskgroup":  # first's group's child awaits second, which awaits first
        return [("first", in_group("second")), ("second", await_task("first"))]
    if shape == "wait":
        return [("first", wait_task("second")), ("second", await_task("first"))]
    if shape == "shield":
        return [("first", shield_task("second")), ("second", await_task("first"))]
    assert shape == "lock"  # first holds the lock and awaits second, which wants the lock
    return [("first", hold_and_await("second")), ("second", want_lock())]


SHAPES = ["await", "gather", "three", "taskgroup", "wait", "shield", "lock"]
# Cycles that cancelling one task ends (the others cannot be cancelled: Task.cancel recurses)
ENDABLE = {"wait": "first", "shield": "first", "lock": "second"}


@pytest.mark.parametrize("shape", SHAPES)
def test_await_cycle_among_many_waiting_tasks_found_by_the_probe(
    monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    """A cycle of tasks awaiting tasks (directly, through gather, a TaskGroup, wait() or
    shield(), or awaiting a task that waits for a lock the awaiting task holds) formed among
    2,000 waiting tasks while the timed scans are stretched out of reach (the 1% rule made
    to stretch them for ages, as a large app stretches them by seconds): the cycle probe,
    run every ``deadlock_interval_s`` whatever the scans' interval, sees a new wait close
    the cycle and brings the scans forward; they report it, naming every task of the cycle."""
    _stretched(monkeypatch)
    watch = asyncwatch.install(
        metrics_exporters=("none",), raise_errors=True, deadlock_interval_s=0.05
    )
    tasks: dict[str, asyncio.Task[Any]] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        found = asyncio.Event()
        watch.findings.listen(lambda finding: loop.call_soon_threadsafe(found.set))
        sleepers = [asyncio.create_task(asyncio.sleep(3600)) for _ in range(2000)]
        await _first_timed_scan_done(watch)
        for name, coro in _await_cycle(shape, tasks):
            tasks[name] = asyncio.create_task(coro, name=name)
        await asyncio.wait_for(found.wait(), 30)
        if shape in ENDABLE:  # end the cycle, so that nothing of it runs after the loop closed
            tasks[ENDABLE[shape]].cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        for s in sleepers:
            s.cancel()
        await asyncio.gather(*sleepers, return_exceptions=True)

    try:
        with throwaway_loop() as loop:
            loop.run_until_complete(main())
        [finding] = asyncwatch.findings("deadlock")
        assert isinstance(finding, DeadlockFinding)
        assert sorted(finding.tasks) == sorted(tasks)
        assert watch.deadlocks.probe_hits == 1
    finally:
        asyncwatch.uninstall()


def test_lock_wait_closing_a_cycle_through_an_await_is_found_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``first`` holds a lock and awaits ``second``; only once probes have followed that wait
    (no cycle then: ``second`` waits for an event) does ``second`` ask for the lock. No probe
    looks at ``first``'s wait again, and a lock wait is not one the probe starts from: the
    lock tracker's hook follows the lock's holder through its await back to ``second``, and
    the scans are brought forward (the timed ones are stretched out of reach)."""
    _stretched(monkeypatch)
    watch = asyncwatch.install(
        metrics_exporters=("none",), raise_errors=True, deadlock_interval_s=0.05
    )
    tasks: dict[str, asyncio.Task[Any]] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        found = asyncio.Event()
        watch.findings.listen(lambda finding: loop.call_soon_threadsafe(found.set))
        go = asyncio.Event()
        lock = asyncio.Lock()

        async def first() -> None:
            async with lock:
                await tasks["second"]

        async def second() -> None:
            await go.wait()
            async with lock:
                pass

        await _first_timed_scan_done(watch)
        tasks["first"] = asyncio.create_task(first(), name="first")
        tasks["second"] = asyncio.create_task(second(), name="second")
        state = watch.deadlocks._state(loop)
        deadline = time.monotonic() + 60
        while id(tasks["first"]) not in state.probed:  # first's await followed: no cycle
            assert time.monotonic() < deadline, "no probe followed the await"
            await asyncio.sleep(0.01)
        go.set()
        await asyncio.wait_for(found.wait(), 30)
        tasks["second"].cancel()  # its lock wait: the cycle ends (and first releases the lock)
        await asyncio.gather(*tasks.values(), return_exceptions=True)

    try:
        with throwaway_loop() as loop:
            loop.run_until_complete(main())
        [finding] = asyncwatch.findings("deadlock")
        assert isinstance(finding, DeadlockFinding)
        assert sorted(finding.tasks) == ["first", "second"]
        assert watch.deadlocks.probe_hits == 0  # not the probe's doing
    finally:
        asyncwatch.uninstall()


def test_probe_follows_tasks_and_gathers_and_gives_up_after_64() -> None:
    """``closes_cycle`` itself: a task that gathers itself closes a cycle; a chain of tasks
    awaiting the next one that ends in a sleeper does not; a cycle longer than
    ``MAX_CHAIN`` is not followed to its end (the timed scans still find it)."""

    async def main() -> None:
        me = asyncio.current_task()
        assert me is not None
        loop = asyncio.get_running_loop()
        assert closes_cycle(me, asyncio.gather(me, loop.create_future()))
        tasks: list[asyncio.Task[Any]] = []
        ready = asyncio.Event()

        async def link(i: int, last: int) -> None:
            await ready.wait()
            await (tasks[i + 1] if i < last else (tasks[0] if last > 10 else sleeper))

        sleeper = asyncio.create_task(asyncio.sleep(3600))
        chain = [asyncio.create_task(link(i, 9)) for i in range(10)]
        tasks.extend(chain)
        ready.set()
        await settle()
        assert not closes_cycle(chain[0], chain[1])
        tasks.clear()
        long = [asyncio.create_task(link(i, MAX_CHAIN + 5)) for i in range(MAX_CHAIN + 6)]
        tasks.extend(long)
        await settle()
        assert all(t._fut_waiter is not None for t in long)  # type: ignore[attr-defined]
        assert not closes_cycle(long[0], long[1])  # a cycle, but too long to follow
        sleeper.cancel()
        for t in chain:
            t.cancel()

    with throwaway_loop() as loop:
        loop.run_until_complete(main())
