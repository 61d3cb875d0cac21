"""Deadlocks and stuck tasks: each scenario on a real loop, the scanner driven by hand."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import asyncwatch
from asyncwatch import DeadlockFinding, StuckTaskFinding
from asyncwatch.testing import settle

from .conftest import collect, point
from .deadlock_helpers import install, is_rotation, line_of, throwaway_loop

HERE = __file__


def deadlocks() -> list[DeadlockFinding]:
    found = asyncwatch.findings("deadlock")
    assert all(isinstance(f, DeadlockFinding) for f in found)
    return found  # type: ignore[return-value]


def stuck() -> list[StuckTaskFinding]:
    found = asyncwatch.findings("stuck_task")
    assert all(isinstance(f, StuckTaskFinding) for f in found)
    return found  # type: ignore[return-value]


# ------------------------------------------------------------------ tasks awaiting tasks


def test_two_tasks_awaiting_each_other(caplog: pytest.LogCaptureFixture) -> None:
    """A awaits B and B awaits A: one deadlock, both tasks in order, with their await lines."""
    watch, _ = install()
    tasks: dict[str, asyncio.Task[None]] = {}

    async def first() -> None:
        await asyncio.sleep(0)
        await tasks["second"]  # first waits here

    async def second() -> None:
        await asyncio.sleep(0)
        await tasks["first"]  # second waits here

    async def scenario() -> None:
        tasks["first"] = asyncio.create_task(first(), name="first")
        tasks["second"] = asyncio.create_task(second(), name="second")
        await settle()
        assert watch.deadlocks.scan() == []  # seen once: not settled yet
        with caplog.at_level(logging.WARNING, logger="asyncwatch"):
            made = watch.deadlocks.scan()
        assert len(made) == 1

    with throwaway_loop() as loop:
        loop.run_until_complete(scenario())
    [found] = deadlocks()
    assert found.kind == "deadlock"
    assert is_rotation(found.tasks, ("first", "second"))
    assert [c.task for c in found.chains] == list(found.tasks)
    lines = {c.task: c.frames[-1].lineno for c in found.chains}
    assert lines == {
        "first": line_of("first waits here", HERE),
        "second": line_of("second waits here", HERE),
    }
    assert "task 'first'" in found.explanation
    assert "awaits task 'second'" in found.explanation
    assert found.started_at <= found.detected_at
    assert found.explanation in caplog.text


def test_three_task_cycle_through_gather() -> None:
    """A gathers B (and a healthy sleeper), B awaits C, C awaits A: a three-task cycle."""
    watch, _ = install()
    tasks: dict[str, asyncio.Task[Any]] = {}

    async def a() -> None:
        sleeper = asyncio.create_task(asyncio.sleep(3600), name="sleeper")
        await asyncio.sleep(0)
        await asyncio.gather(tasks["b"], sleeper)

    async def b() -> None:
        await asyncio.sleep(0)
        await tasks["c"]

    async def c() -> None:
        await asyncio.sleep(0)
        await tasks["a"]

    async def scenario() -> None:
        for name, coro in (("a", a), ("b", b), ("c", c)):
            tasks[name] = asyncio.create_task(coro(), name=name)
        await settle()
        watch.deadlocks.scan()
        watch.deadlocks.scan()

    with throwaway_loop() as loop:
        loop.run_until_complete(scenario())
    [found] = deadlocks()
    assert is_rotation(found.tasks, ("a", "b", "c"))
    assert "through gather()" in found.explanation
    assert "sleeper" not in found.tasks


def test_task_awaiting_itself() -> None:
    """A task gathering itself waits for itself: a one-task deadlock."""
    watch, _ = install()

    async def narcissus() -> None:
        await asyncio.gather(asyncio.current_task())  # type: ignore[arg-type]

    async def scenario() -> None:
        task = asyncio.create_task(narcissus(), name="narcissus")
        await settle()
        watch.deadlocks.scan()
        watch.deadlocks.scan()
        assert not task.done()

    with throwaway_loop() as loop:
        loop.run_until_complete(scenario())
    [found] = deadlocks()
    assert found.tasks == ("narcissus",)
    assert "waits for itself" in found.explanation


def test_cycle_is_reported_once_and_counted(reader: InMemoryMetricReader) -> None:
    """Scanning again finds nothing new; the counter says 1 and the gauge 2 while it lasts."""
    watch, _ = install(metric_readers=[reader])
    tasks: dict[str, asyncio.Task[None]] = {}

    async def one() -> None:
        await asyncio.sleep(0)
        await tasks["two"]

    async def two() -> None:
        await asyncio.sleep(0)
        await asyncio.shield(tasks["one"])

    async def scenario() -> None:
        tasks["one"] = asyncio.create_task(one(), name="one")
        tasks["two"] = asyncio.create_task(two(), name="two")
        await settle()
        for _ in range(4):
            watch.deadlocks.scan()
        metrics = collect(reader)
        assert metrics["asyncwatch.deadlocks"][0].value == 1
        gauge = metrics["asyncwatch.task.stuck"]
        assert point(gauge, asyncwatch__finding__kind="deadlock").value == 2
        tasks["two"].cancel()  # through shield: cancellable, and the cycle ends
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        watch.deadlocks.scan()
        gauge = collect(reader)["asyncwatch.task.stuck"]
        assert point(gauge, asyncwatch__finding__kind="deadlock").value == 0

    with throwaway_loop() as loop:
        loop.run_until_complete(scenario())
    assert len(deadlocks()) == 1


# ------------------------------------------------------------------ cycles through locks


async def test_lock_order_inversion() -> None:
    """A holds L1 and wants L2, B holds L2 and wants L1: both locks named with their sites."""
    watch, _ = install()
    first_lock = asyncio.Lock()  # the first lock
    second_lock = asyncio.Lock()  # the second lock
    both_hold = asyncio.Barrier(2)

    async def forward() -> None:
        async with first_lock:
            await both_hold.wait()
            async with second_lock:
                pass

    async def backward() -> None:
        async with second_lock:
            await both_hold.wait()
            async with first_lock:
                pass

    a = asyncio.create_task(forward(), name="forward")
    b = asyncio.create_task(backward(), name="backward")
    await settle(10)
    watch.deadlocks.scan()
    watch.deadlocks.scan()
    a.cancel()
    b.cancel()
    await asyncio.gather(a, b, return_exceptions=True)
    [found] = deadlocks()
    assert is_rotation(found.tasks, ("forward", "backward"))
    sites = sorted(lock.created_at.lineno for lock in found.locks if lock.created_at)
    assert sites == [line_of("the first lock", HERE), line_of("the second lock", HERE)]
    assert {lock.held_by for lock in found.locks} == {("forward",), ("backward",)}
    assert "held by 'backward'" in found.explanation
    assert "holds Lock 'first_lock' created at" in found.explanation


async def test_semaphore_exhausted_by_tasks_waiting_on_each_other() -> None:
    """Two holders of a 2-permit semaphore await a task that waits for a permit."""
    watch, _ = install()
    pool = asyncio.Semaphore(2)
    both_hold = asyncio.Barrier(3)
    tasks: dict[str, asyncio.Task[None]] = {}

    async def holder() -> None:
        async with pool:
            await both_hold.wait()
            await tasks["needs_permit"]

    async def needs_permit() -> None:
        await both_hold.wait()
        async with pool:
            pass

    tasks["h1"] = asyncio.create_task(holder(), name="h1")
    tasks["h2"] = asyncio.create_task(holder(), name="h2")
    tasks["needs_permit"] = asyncio.create_task(needs_permit(), name="needs_permit")
    await settle(10)
    watch.deadlocks.scan()
    watch.deadlocks.scan()
    tasks["needs_permit"].cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    [found] = deadlocks()
    assert set(found.tasks) == {"h1", "h2", "needs_permit"}
    assert found.tasks[0] != found.tasks[1]
    [sem] = found.locks
    assert sem.kind == "Semaphore"
    assert set(sem.held_by) == {"h1", "h2"}


async def test_semaphore_holders_waiting_for_more_permits() -> None:
    """Each holder of a 2-permit semaphore waits for a second permit: a deadlock."""
    watch, _ = install()
    pool = asyncio.BoundedSemaphore(2)
    both_hold = asyncio.Barrier(2)

    async def greedy() -> None:
        async with pool:
            await both_hold.wait()
            async with pool:
                pass

    tasks = [asyncio.create_task(greedy(), name=f"greedy{i}") for i in range(2)]
    await settle(10)
    watch.deadlocks.scan()
    watch.deadlocks.scan()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    [found] = deadlocks()
    assert set(found.tasks) == {"greedy0", "greedy1"}
    assert found.locks[0].kind == "BoundedSemaphore"


async def test_a_timeout_is_not_a_deadlock() -> None:
    """A lock cycle where one side waits under asyncio.timeout() will end: not reported."""
    watch, _ = install()
    first, second = asyncio.Lock(), asyncio.Lock()
    both_hold = asyncio.Barrier(2)

    async def patient() -> None:
        async with first:
            await both_hold.wait()
            async with asyncio.timeout(3600), second:
                pass

    async def other() -> None:
        async with second:
            await both_hold.wait()
            async with first:
                pass

    tasks = [asyncio.create_task(patient()), asyncio.create_task(other())]
    await settle(10)
    for _ in range(3):
        watch.deadlocks.scan()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert deadlocks() == []


# ------------------------------------------------------------------ stuck tasks


async def test_condition_wait_with_no_notifier() -> None:
    """Waiting on a Condition nothing else references is stuck, once past the threshold."""
    watch, clock = install(stuck_task_after_s=60)

    async def wait_for_news() -> None:
        news = asyncio.Condition()  # the condition
        async with news:
            await news.wait()  # waits forever

    task = asyncio.create_task(wait_for_news(), name="reader")
    await settle()
    watch.deadlocks.scan()
    clock.advance(59)
    assert watch.deadlocks.scan() == []
    clock.advance(2)
    [found] = watch.deadlocks.scan()
    assert watch.deadlocks.scan() == []  # once
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert isinstance(found, StuckTaskFinding)
    assert stuck() == [found]
    assert found.tasks == ("reader",)
    assert found.waited_s == pytest.approx(61)
    assert found.waiting_on is not None
    assert found.waiting_on.kind == "Condition"
    assert found.waiting_on.created_at is not None
    assert found.waiting_on.created_at.lineno == line_of("the condition", HERE)
    assert found.chains[0].frames[-2].lineno == line_of("waits forever", HERE)
    assert "nobody can notify it" in found.explanation


async def test_queue_consumer_whose_producer_died(reader: InMemoryMetricReader) -> None:
    """A consumer whose only producer raised waits forever: stuck, and the gauge shows it."""
    watch, clock = install(metric_readers=[reader])

    async def producer(queue: asyncio.Queue[int]) -> None:
        await queue.put(1)
        raise RuntimeError("producer crashed")

    async def consumer(queue: asyncio.Queue[int]) -> None:
        while True:
            queue.task_done() if await queue.get() else None

    def start() -> tuple[asyncio.Task[None], asyncio.Task[None]]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        return (
            asyncio.create_task(producer(queue), name="producer"),
            asyncio.create_task(consumer(queue), name="consumer"),
        )

    made, eats = start()
    await settle()
    assert made.done()
    assert not eats.done()
    watch.deadlocks.scan()
    clock.advance(61)
    [found] = watch.deadlocks.scan()
    gauge = collect(reader)["asyncwatch.task.stuck"]
    assert point(gauge, asyncwatch__finding__kind="stuck_task").value == 1
    eats.cancel()
    await asyncio.gather(made, eats, return_exceptions=True)
    assert found.tasks == ("consumer",)
    assert found.waiting_on is not None
    assert found.waiting_on.kind == "Queue"
    assert "no producer is left" in found.explanation
    assert collect(reader)["asyncwatch.stuck_tasks"][0].value == 1


async def test_lock_held_by_a_finished_task() -> None:
    """A task that ended holding a lock leaves its waiters stuck."""
    watch, clock = install()
    lock = asyncio.Lock()

    async def forgetful() -> None:
        await lock.acquire()  # never released

    async def waiter() -> None:
        async with lock:
            pass

    await asyncio.create_task(forgetful(), name="forgetful")
    task = asyncio.create_task(waiter(), name="waiter")
    await settle()
    watch.deadlocks.scan()
    clock.advance(61)
    [found] = watch.deadlocks.scan()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert found.tasks == ("waiter",)
    assert "'forgetful' returned while holding it and never released it" in found.explanation


async def test_idle_marks_keep_long_waits_quiet() -> None:
    """idle() blocks, @idle coroutines and idle_coroutines globs are never stuck."""
    watch, clock = install(idle_coroutines=("*.quiet_by_name",))

    async def quiet_by_block() -> None:
        cond = asyncio.Condition()
        async with cond:
            with asyncwatch.idle():
                await cond.wait()

    @asyncwatch.idle
    async def quiet_by_decorator() -> None:
        cond = asyncio.Condition()
        async with cond:
            await cond.wait()

    async def quiet_by_name() -> None:
        cond = asyncio.Condition()
        async with cond:
            await cond.wait()

    tasks = [asyncio.create_task(c()) for c in (quiet_by_block, quiet_by_decorator, quiet_by_name)]
    await settle()
    watch.deadlocks.scan()
    for _ in range(5):
        clock.advance(100)
        watch.deadlocks.scan()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert stuck() == []


async def test_detection_off_patches_nothing() -> None:
    """deadlock_detection=False (and no advisor, which reads semaphores through the same
    tracker) leaves asyncio's classes alone and scans nothing."""
    original = asyncio.Lock.__dict__["acquire"]
    watch, _ = install(deadlock_detection=False, advisor=False)
    assert asyncio.Lock.__dict__["acquire"] is original
    assert not watch.deadlocks.active


def test_the_scanner_runs_by_itself_and_stops_with_uninstall(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a short interval the loop finds a lock-order inversion on its own timer, scanning
    its tasks in slices with the loop running in between."""
    import asyncwatch.deadlock._scan as scan
    from asyncwatch.deadlock import DeadlockDetector

    monkeypatch.setattr(scan, "SLICE", 10)
    steps: list[int] = []
    original_step = DeadlockDetector._step

    def counted(self: Any, *args: Any) -> None:
        steps.append(1)
        original_step(self, *args)

    monkeypatch.setattr(DeadlockDetector, "_step", counted)
    watch = asyncwatch.install(
        metrics_exporters=("none",), raise_errors=True, deadlock_interval_s=0.05
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        found = asyncio.Event()
        watch.findings.listen(lambda finding: loop.call_soon_threadsafe(found.set))
        first, second = asyncio.Lock(), asyncio.Lock()
        both_hold = asyncio.Barrier(2)

        async def take(a: asyncio.Lock, b: asyncio.Lock) -> None:
            async with a:
                await both_hold.wait()
                async with b:
                    pass

        tasks = [asyncio.create_task(take(first, second)), asyncio.create_task(take(second, first))]
        tasks += [asyncio.create_task(asyncio.sleep(3600)) for _ in range(45)]
        await asyncio.wait_for(found.wait(), 60)
        asyncwatch.uninstall()
        ours = [
            h for h in loop._scheduled  # type: ignore[attr-defined]
            if not h.cancelled() and getattr(h._callback, "__self__", None) is watch.deadlocks
        ]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert ours == []

    asyncio.run(main())
    assert [f.kind for f in watch.findings.list()] == ["deadlock"]
    assert len(steps) >= 2 * 5  # two scans at least, each of five slices or more
