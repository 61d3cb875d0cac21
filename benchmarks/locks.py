"""Lock, Semaphore and Condition: what tracking their holders costs, against bare asyncio.

Configurations, interleaved round by round in one process:

* ``bare`` - stock asyncio.
* ``asyncwatch`` - everything on, as ``install()`` leaves it: the task hook, the
  Lock/Semaphore/Condition holder tracking and the deadlock scanner attached to the loop.
* ``asyncwatch, no deadlock detection`` - ``deadlock_detection=False``: the task hook only,
  to show which part of the cost is the primitives'.

No anchor tool is measured: neither opentelemetry-instrumentation-asyncio nor aiomonitor
looks at locks at all.

Workloads (each round runs ``--ops`` operations):

* ``lock/uncontended`` - one task, ``async with lock: pass`` (the worst case: the wrapper's
  cost against the least work).
* ``lock/contended`` - four tasks take turns: ``async with lock: await asyncio.sleep(0)``.
* ``semaphore/uncontended`` - one task, ``async with BoundedSemaphore(10)``.
* ``semaphore/contended`` - eight tasks on a 2-permit semaphore, each holding across a yield.
* ``condition/ping-pong`` - two tasks hand a turn back and forth with notify()/wait().
* ``lock/create`` - ``asyncio.Lock()`` objects created (the creation site is recorded).

Run: ``python benchmarks/locks.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row, interleave, save, table
from _harness import timed as harness_timed

from asyncwatch import Config
from asyncwatch._watch import Watch


async def lock_uncontended(n: int) -> None:
    lock = asyncio.Lock()
    for _ in range(n):
        async with lock:
            pass


async def lock_contended(n: int) -> None:
    lock = asyncio.Lock()

    async def worker(k: int) -> None:
        for _ in range(k):
            async with lock:
                await asyncio.sleep(0)

    await asyncio.gather(*(worker(n // 4) for _ in range(4)))


async def semaphore_uncontended(n: int) -> None:
    sem = asyncio.BoundedSemaphore(10)
    for _ in range(n):
        async with sem:
            pass


async def semaphore_contended(n: int) -> None:
    sem = asyncio.Semaphore(2)

    async def worker(k: int) -> None:
        for _ in range(k):
            async with sem:
                await asyncio.sleep(0)

    await asyncio.gather(*(worker(n // 8) for _ in range(8)))


async def condition_ping_pong(n: int) -> None:
    cond = asyncio.Condition()
    turn = [0]

    async def player(me: int) -> None:
        for _ in range(n // 2):
            async with cond:
                await cond.wait_for(lambda: turn[0] == me)
                turn[0] = 1 - me
                cond.notify()

    await asyncio.gather(player(0), player(1))


async def lock_create(n: int) -> None:
    for _ in range(n):
        asyncio.Lock()


WORKLOADS: dict[str, Callable[[int], Awaitable[None]]] = {
    "lock/uncontended": lock_uncontended,
    "lock/contended": lock_contended,
    "semaphore/uncontended": semaphore_uncontended,
    "semaphore/contended": semaphore_contended,
    "condition/ping-pong": condition_ping_pong,
    "lock/create": lock_create,
}


def timed(
    workload: Callable[[int], Awaitable[None]], n: int, watch: Watch | None = None
) -> tuple[float, int]:
    """Run the workload in a fresh loop (with ``watch`` hooked in); CPU seconds of it alone."""

    def setup(loop: asyncio.AbstractEventLoop) -> None:
        if watch is None:
            return
        if watch.config.deadlock_detection:
            watch.primitives.install()
            watch.deadlocks.start()
        watch.tasks.instrument(loop)
        watch.deadlocks.attach(loop)

    def teardown(_: None) -> None:
        if watch is not None:
            watch.deadlocks.stop()
            watch.primitives.uninstall()

    return harness_timed(workload, n, False, setup, teardown)


def configurations(
    workload: Callable[[int], Awaitable[None]], n: int
) -> dict[str, Callable[[], tuple[float, int]]]:
    full = Watch(Config(metrics_exporters=("none",)))
    tasks_only = Watch(Config(metrics_exporters=("none",), deadlock_detection=False))
    return {
        "bare": lambda: timed(workload, n),
        "asyncwatch": lambda: timed(workload, n, full),
        "asyncwatch, no deadlock detection": lambda: timed(workload, n, tasks_only),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--ops", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 20,000 operations")
    parser.add_argument("--only", help="comma-separated workloads")
    parser.add_argument("--name", default="locks", help="results file name")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.ops = 3, 20_000
    chosen = args.only.split(",") if args.only else list(WORKLOADS)
    rows: list[Row] = []
    for name in chosen:
        configs = configurations(WORKLOADS[name], args.ops)
        configs["bare"]()  # warm up imports and caches outside the measured rounds
        rows += interleave(name, configs, rounds=args.rounds)
        print(table([r for r in rows if r.workload == name], "ops/s"), flush=True)
    note = (
        f"{args.rounds} interleaved rounds of {args.ops:,} operations each, asyncio loop; CPU "
        "time of the workload; ratio = configuration time / bare time in the same round. No "
        "anchor tool tracks asyncio locks, so none is compared."
    )
    text = table(rows, "ops/s", note)
    save(args.name, rows, text, {"rounds": args.rounds, "ops": args.ops})
    print()
    print(text)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
