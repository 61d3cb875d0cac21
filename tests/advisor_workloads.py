"""Workloads for the advisor's closed-loop tests (and the examples' shapes, in small).

I/O is simulated with sleeps inside the workers: that is the workload (a database or HTTP call
taking that long), not a test waiting for something. CPU work spins on ``thread_time`` so it
costs the same CPU however loaded the machine is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import time
from typing import Any

import asyncwatch


def io_call(seconds: float) -> float:
    """A blocking I/O call (a driver without async support)."""
    time.sleep(seconds)
    return seconds


def cpu_call(cpu_seconds: float) -> int:
    """Pure-Python CPU work holding the GIL for ``cpu_seconds`` of this thread's CPU time."""
    end = time.thread_time() + cpu_seconds
    spins = 0
    while time.thread_time() < end:
        spins += 1
    return spins


async def executor_workload(
    pool: concurrent.futures.Executor, fn: Any, arg: float, *, callers: int, calls_each: int
) -> float:
    """``callers`` tasks each make ``calls_each`` calls through the pool; calls per second."""
    loop = asyncio.get_running_loop()

    async def caller() -> None:
        for _ in range(calls_each):
            await loop.run_in_executor(pool, fn, arg)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return callers * calls_each / (time.perf_counter() - began)


async def batch_workload(
    size: int, *, items: int, overhead_s: float, per_item_s: float, budget_s: float,
    seed: int = 7, name: str = "insert",
) -> tuple[float, float]:
    """Write ``items`` items that arrive in requests of 1..3*size items, in batches of at most
    ``size`` (a request's remainder makes a smaller batch). Each batch is one round trip to a
    store: ``overhead_s + per_item_s * n``. Returns (items per second, slowest batch s)."""
    rng = random.Random(seed)
    written = 0
    slowest = 0.0
    began = time.perf_counter()
    while written < items:
        pending = rng.randint(1, 3 * size)
        while pending > 0:
            n = min(size, pending)
            started = time.perf_counter()
            with asyncwatch.batch(name, size=n, budget_s=budget_s):
                await asyncio.sleep(overhead_s + per_item_s * n)
            slowest = max(slowest, time.perf_counter() - started)
            pending -= n
            written += n
    return written / (time.perf_counter() - began), slowest
