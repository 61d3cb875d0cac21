"""The advisor's probes on their hot paths, against bare asyncio.

Configurations, interleaved round by round in one process:

* ``bare`` - stock asyncio.
* ``asyncwatch`` - ``install()`` as it comes: task hook, deadlock detection and the advisor
  (``run_in_executor`` wrapper, ``gather`` wrapper, semaphore observer, selector wrapper).
* ``asyncwatch, advisor off`` - ``advisor=False``: the same minus the advisor, so the
  difference between the two rows is the advisor's own cost.

No anchor tool is measured: none of opentelemetry-instrumentation-asyncio, aiomonitor or
aiodebug times executor calls, gathers or semaphores per level.

Workloads (each round runs ``--ops`` operations):

* ``executor/to_thread`` - ``await loop.run_in_executor(pool, f)`` of a trivial function,
  one at a time (the wrapper and the in-worker timing against the least work).
* ``executor/16 callers`` - 16 tasks calling through a 4-thread pool (queueing).
* ``gather/10`` - ``await asyncio.gather(*10 trivial coroutines)``; an op is one gather.
* ``semaphore/uncontended`` - one task, ``async with Semaphore(10)``.
* ``semaphore/contended`` - eight tasks on a 2-permit semaphore, holding across a yield.
* ``queue/put+get`` - one task, ``await queue.put(i); await queue.get()`` on an unbounded
  ``asyncio.Queue`` (the queue metrics' wrappers on their path that never waits); an op is
  one put and one get.
* ``loop/iterations`` - ``await asyncio.sleep(0)`` in a loop: one select per iteration.
* ``batch/context manager`` - ``with asyncwatch.batch("b", size=10): pass``.

Run: ``python benchmarks/advisor.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row, interleave, save, table
from locks import semaphore_contended  # the same workload as the locks benchmark

import asyncwatch


def _noop() -> int:
    return 1


async def executor_serial(n: int) -> None:
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        for _ in range(n):
            await loop.run_in_executor(pool, _noop)


async def executor_callers(n: int) -> None:
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:

        async def caller(k: int) -> None:
            for _ in range(k):
                await loop.run_in_executor(pool, _noop)

        await asyncio.gather(*(caller(n // 16) for _ in range(16)))


async def _leaf() -> int:
    return 1


async def gather_10(n: int) -> None:
    for _ in range(n // 10):  # an op is one gathered coroutine
        await asyncio.gather(*(_leaf() for _ in range(10)))


async def semaphore_uncontended(n: int) -> None:
    sem = asyncio.Semaphore(10)
    for _ in range(n):
        async with sem:
            pass


async def queue_put_get(n: int) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        await queue.put(i)
        await queue.get()


async def loop_iterations(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def batch_cm(n: int) -> None:
    for _ in range(n):
        with asyncwatch.batch("b", size=10):
            pass


WORKLOADS: dict[str, tuple[Callable[[int], Awaitable[None]], float]] = {
    # name: (workload, share of --ops it runs: executor calls cost ~100x a lock)
    "executor/to_thread": (executor_serial, 0.1),
    "executor/16 callers": (executor_callers, 0.1),
    "gather/10": (gather_10, 1.0),
    "semaphore/uncontended": (semaphore_uncontended, 1.0),
    "semaphore/contended": (semaphore_contended, 1.0),
    "queue/put+get": (queue_put_get, 1.0),
    "loop/iterations": (loop_iterations, 1.0),
    "batch/context manager": (batch_cm, 1.0),
}


def timed(
    workload: Callable[[int], Awaitable[None]], n: int, **settings: object
) -> tuple[float, int]:
    """Run the workload in a fresh loop (asyncwatch installed with ``settings`` unless bare);
    CPU seconds of the workload alone."""
    if settings:
        asyncwatch.install(metrics_exporters=("none",), advisor_interval_s=3600, **settings)

    async def main() -> float:
        await asyncio.sleep(0)  # let per-loop probes arm before timing
        start = time.process_time()
        await workload(n)
        return time.process_time() - start

    try:
        seconds = asyncio.run(main())
    finally:
        if settings:
            asyncwatch.uninstall(timeout_s=2)
    return seconds, n


def configurations(
    workload: Callable[[int], Awaitable[None]], n: int
) -> dict[str, Callable[[], tuple[float, int]]]:
    return {
        "bare": lambda: timed(workload, n),
        "asyncwatch": lambda: timed(workload, n, advisor=True),
        "asyncwatch, advisor off": lambda: timed(workload, n, advisor=False),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--ops", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 20,000 operations")
    parser.add_argument("--only", help="comma-separated workloads")
    parser.add_argument("--name", default="advisor", help="results file name")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.ops = 3, 20_000
    chosen = args.only.split(",") if args.only else list(WORKLOADS)
    rows: list[Row] = []
    for name in chosen:
        workload, share = WORKLOADS[name]
        ops = max(160, int(args.ops * share))
        configs = configurations(workload, ops)
        configs["bare"]()  # warm up imports and caches outside the measured rounds
        rows += interleave(name, configs, rounds=args.rounds)
        print(table([r for r in rows if r.workload == name], "ops/s"), flush=True)
    note = (
        f"{args.rounds} interleaved rounds of {args.ops:,} operations each (executor "
        "workloads a tenth of that), asyncio loop; CPU time of the whole process during the "
        "workload; ratio = configuration time / bare time in the same round. No anchor tool "
        "measures executors, gathers or semaphore levels, so none is compared."
    )
    text = table(rows, "ops/s", note)
    save(args.name, rows, text, {"rounds": args.rounds, "ops": args.ops})
    print()
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
