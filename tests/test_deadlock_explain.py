"""The words of deadlock and stuck-task findings: locks from one line told apart, a cancelled
holder called cancelled, queue.join() without task_done(), a Condition whose notifier died
holding its lock."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncwatch
from asyncwatch import DeadlockFinding, StuckTaskFinding
from asyncwatch.testing import scan, settle

from .deadlock_helpers import install


async def inversion(locks: list[asyncio.Lock]) -> list[asyncio.Task[None]]:
    everyone = asyncio.Barrier(len(locks))

    async def take(i: int) -> None:
        async with locks[i]:
            await everyone.wait()
            async with locks[(i + 1) % len(locks)]:
                pass

    return [asyncio.create_task(take(i), name=f"taker-{i}") for i in range(len(locks))]


async def scan_for_deadlock(watch: asyncwatch.Watch) -> DeadlockFinding:
    for _ in range(3):
        scan()
        if asyncwatch.findings("deadlock"):
            break
    [found] = asyncwatch.findings("deadlock")
    assert isinstance(found, DeadlockFinding)
    return found


async def end(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_two_locks_from_one_line_are_named() -> None:
    watch, _ = install()
    accounts, ledger = asyncio.Lock(), asyncio.Lock()
    tasks = await inversion([accounts, ledger])
    await settle()
    found = await scan_for_deadlock(watch)
    await end(tasks)
    descriptions = sorted(lock.description for lock in found.locks)
    assert descriptions[0].startswith("Lock 'accounts' created at")
    assert descriptions[1].startswith("Lock 'ledger' created at")
    assert "holds Lock 'accounts'" in found.explanation
    assert "waits for Lock 'ledger'" in found.explanation


async def test_unnamed_locks_from_one_line_are_numbered() -> None:
    watch, _ = install()
    tasks = await inversion([asyncio.Lock() for _ in range(2)])
    await settle()
    found = await scan_for_deadlock(watch)
    await end(tasks)
    descriptions = {lock.description for lock in found.locks}
    assert len(descriptions) == 2, descriptions
    assert {d.split(" created")[0] for d in descriptions} == {"Lock #1", "Lock #2"}


def stuck_after_threshold(watch: Any, clock: Any) -> list[StuckTaskFinding]:
    for _ in range(4):
        scan()
        clock.advance(61)
    found = asyncwatch.findings("stuck_task")
    assert all(isinstance(f, StuckTaskFinding) for f in found)
    return found  # type: ignore[return-value]


async def test_a_cancelled_holder_is_called_cancelled() -> None:
    watch, clock = install()
    lock = asyncio.Lock()

    async def holder() -> None:
        await lock.acquire()
        await asyncio.sleep(3600)

    async def other() -> None:
        async with lock:
            pass

    held = asyncio.create_task(holder(), name="holder")
    await settle()
    waiting = asyncio.create_task(other(), name="other")
    await settle()
    held.cancel()
    await settle()
    [found] = stuck_after_threshold(watch, clock)
    await end([waiting])
    assert "'holder' was cancelled while holding it and never released it" in found.explanation
    assert "finished without releasing" not in found.explanation


def queue_without_task_done() -> list[asyncio.Task[None]]:
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def consumer() -> None:
        while True:
            await queue.get()  # and never task_done()

    async def producer() -> None:
        for i in range(3):
            await queue.put(i)
        await queue.join()

    return [asyncio.create_task(consumer(), name="consumer"),
            asyncio.create_task(producer(), name="producer")]


async def test_join_without_task_done_names_the_live_consumer() -> None:
    watch, clock = install()
    tasks = queue_without_task_done()
    await settle()
    found = {f.tasks[0]: f for f in stuck_after_threshold(watch, clock)}
    await end(tasks)
    producer = found["producer"].explanation
    assert "the consumer 'consumer' is alive" in producer
    assert "never called task_done() for 3 item(s)" in producer
    assert "no consumer is left" not in producer
    assert "'producer', waits in join()" in found["consumer"].explanation


def condition_whose_notifier_died() -> tuple[asyncio.Condition, list[asyncio.Task[None]]]:
    news = asyncio.Condition()

    async def reader() -> None:
        async with news:
            await news.wait()

    async def notifier() -> None:
        await asyncio.sleep(0)
        await news.acquire()
        raise RuntimeError("notifier died")

    return news, [asyncio.create_task(reader(), name="reader"),
                  asyncio.create_task(notifier(), name="notifier")]


async def test_condition_notifier_died_holding_its_lock() -> None:
    """Reported although the Condition is still referenced (here, by the test): notify()
    needs its lock, which the dead notifier holds for ever."""
    watch, clock = install()
    news, tasks = condition_whose_notifier_died()
    await settle()
    [found] = stuck_after_threshold(watch, clock)
    news.release()  # so that the reader can be cancelled (Condition.wait() retakes the lock)
    await end(tasks)
    assert found.tasks == ("reader",)
    assert (
        "'notifier' raised RuntimeError while still holding the Condition's lock"
        in found.explanation
    )
