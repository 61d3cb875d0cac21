"""An app whose task builds a big nested structure, keeps it in a local and returns: freeing
what it lets go holds the event loop (tests/test_blocked_dealloc.py)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable

CHUNK = 20_000


def records(start: int, count: int) -> list[tuple[int, float]]:
    """Small parsed-record-like objects (a tuple, an int, a float each)."""
    return [(i, i * 0.5) for i in range(start, start + count)]


async def parse_job(n: int, settled: Callable[[], Awaitable[None]]) -> int:  # parse_job def
    """Build ``n`` records a chunk per step (no step holds the loop), let the loop settle,
    then return: the records go with this coroutine's frame, freed in its last step."""
    data: list[tuple[int, float]] = []
    for start in range(0, n, CHUNK):
        data.extend(records(start, min(CHUNK, n - start)))
        await asyncio.sleep(0)
    await settled()
    return len(data)  # data is freed as the coroutine returns


async def collect_job(settled: Callable[[], Awaitable[None]]) -> None:
    """Ask for a full garbage collection (it holds the loop while it walks the heap)."""
    await settled()
    gc.collect()  # collect line
    await settled()
