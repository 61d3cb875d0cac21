"""The asyncwatch demo: a small worker service, observed, that tells you where to look.

It fans work out with ``asyncio.gather``, pushes blocking calls to a thread pool with
``run_in_executor``, limits concurrency with a semaphore, and fails or cancels now and then,
so every figure asyncwatch keeps has something in it. Run it with ``./scripts/demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from concurrent.futures import ThreadPoolExecutor

import asyncwatch

pool = ThreadPoolExecutor(max_workers=4)
limit = asyncio.Semaphore(8)


def blocking_lookup(item: int) -> int:
    time.sleep(0.002)  # a blocking client library, correctly pushed off the loop
    return item * 2


async def fetch(item: int) -> int:
    async with limit:
        await asyncio.sleep(random.uniform(0.001, 0.01))
        if random.random() < 0.03:
            raise ConnectionError(f"upstream refused item {item}")
        return await asyncio.get_running_loop().run_in_executor(pool, blocking_lookup, item)


async def handle_batch(batch: int) -> int:
    results = await asyncio.gather(
        *(fetch(batch * 100 + i) for i in range(20)), return_exceptions=True
    )
    return sum(1 for r in results if not isinstance(r, BaseException))


async def slow_report() -> None:
    await asyncio.sleep(0.5)


async def main(seconds: float) -> None:
    watch = asyncwatch.current()
    print(f"asyncwatch is observing this process: {watch}")
    if watch is not None and watch.prometheus_url:
        print(f"  metrics (Prometheus text): {watch.prometheus_url}")
    print("  Python API: asyncwatch.stats(), asyncwatch.findings()")
    deadline = time.monotonic() + seconds
    batch = 0
    next_print = time.monotonic() + 5
    while time.monotonic() < deadline:
        batch += 1
        report = asyncio.create_task(slow_report())
        await handle_batch(batch)
        if batch % 3 == 0:
            report.cancel()
        if time.monotonic() >= next_print:
            next_print += 5
            print(f"\n--- after {batch} batches ---")
            print(asyncwatch.stats().format(8))
    print("\n--- final figures ---")
    print(asyncwatch.stats().format(12))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--forever", action="store_true")
    args = parser.parse_args()
    asyncwatch.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(float("inf") if args.forever else args.seconds))
