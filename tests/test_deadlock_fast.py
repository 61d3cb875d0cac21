"""A lock-order inversion is reported without waiting for the next timed scan: the lock
tracker sees the wait that closes the cycle, and the loop is scanned right then."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncwatch
from asyncwatch import DeadlockFinding
from asyncwatch._config import Config

from .deadlock_helpers import is_rotation


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
