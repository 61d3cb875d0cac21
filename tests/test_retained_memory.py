"""What asyncwatch keeps stays bounded under churn and scraping: the short form of the soak
benchmark (benchmarks/soak.py), counted in bytes kept rather than timed."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import types
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

import asyncwatch

# Loops dropped by asyncio.run are freed here; nothing is left unclosed, but stay quiet if so.
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


async def _template(i: int, fail_with: type[Exception] | None) -> int:
    await asyncio.sleep(0)
    if fail_with is not None:
        raise fail_with(i)
    return i


class Churn:
    """An app that keeps making new coroutine names and exception types, and locks, queues
    and event loops it drops again."""

    def __init__(self) -> None:
        self.made = 0

    def new_job(self) -> Callable[..., Any]:
        self.made += 1
        name = f"job_{self.made}"
        code = _template.__code__.replace(co_name=name, co_qualname=name)
        return types.FunctionType(code, {"__name__": "churn.jobs", "asyncio": asyncio}, name)

    def new_error(self) -> type[Exception]:
        return type(f"ChurnError{self.made}", (Exception,), {"__module__": "churn.errors"})

    async def round(self) -> None:
        job, error = self.new_job(), self.new_error()
        lock, queue, event = asyncio.Lock(), asyncio.Queue[int](), asyncio.Event()
        async with lock:
            await queue.put(1)
        event.set()
        await asyncio.gather(job(1, None), job(2, error), event.wait(), return_exceptions=True)


def test_scrapes_and_churn_keep_nothing_new() -> None:
    """After the caps are reached, 60 more rounds of churn, each with a new event loop, a
    real /metrics scrape over HTTP and ten advisor samples, leave asyncwatch holding no more
    than a few KiB more. It kept every loop, a load sample per advisor tick (up to 600 per
    loop, about 1 KiB each) and, in the totals of dead loops, every exception type ever seen
    (the per-loop cap was not applied when a loop was folded)."""
    watch = asyncwatch.install(
        prometheus_port=0,
        max_keys=20,
        max_error_types=3,
        advisor_window_s=2.0,  # samples every 0.1 s; the test calls sample() itself too
        deadlock_interval_s=0.01,
    )
    url = watch.prometheus_url
    assert url is not None
    churn = Churn()

    def rounds(count: int) -> None:
        for _ in range(count):
            asyncio.run(churn.round())
            for _ in range(10):
                watch.advisor.sample()
            with urllib.request.urlopen(url, timeout=30) as response:
                assert b"asyncwatch_task_created" in response.read()

    rounds(100)  # past every cap: 20 names, 3 error types each, 80 cached code objects
    tracemalloc.start()
    try:
        rounds(10)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        rounds(60)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # Before: about 18 KiB per kept loop, 1 KiB per load sample and every exception class of
    # every dead loop (over 1 MiB here).
    assert after - before < 64 * 1024, (before, after)
