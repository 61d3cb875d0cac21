"""How soon a deadlock is reported with the default settings, by number of other tasks.

Four cycles: a lock-order inversion (two tasks, two locks: found from the lock wait that
closes the cycle), two tasks awaiting each other, two tasks of which one awaits the other
through ``gather()``, and a cycle through a ``TaskGroup`` (a task awaits the task whose
group's child awaits it); the last three are found by the cycle probe, every
``deadlock_interval_s`` whatever the timed scans' interval has stretched to. Either way the
loop is then scanned at once and again 50 ms later, and that scan reports it. The clock
starts when the last wait of the cycle begins (at a random point of the probes' period) and
stops when the finding is recorded. Other tasks: sleepers (waiting tasks cost the scans).

Run: ``python benchmarks/deadlock_latency.py`` (``--sizes 0,1000,10000 --rounds 5
--kinds locks,await,gather,taskgroup``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncwatch


async def one(kind: str, others: int) -> float:
    watch = asyncwatch.current()
    assert watch is not None
    loop = asyncio.get_running_loop()
    found = asyncio.Event()
    at: list[float] = []
    watch.findings.listen(
        lambda f: (at.append(time.perf_counter()), loop.call_soon_threadsafe(found.set))
        if f.kind == "deadlock" else None
    )
    sleepers = [asyncio.create_task(asyncio.sleep(3600)) for _ in range(others)]
    # The sleepers' waits settle, as in a running app; the cycle then forms at a random point
    # of the probes' and scans' period (not always the same distance from the next one).
    await asyncio.sleep(1.2 + random.random() * watch.config.deadlock_interval_s)
    formed: list[float] = []
    tasks: dict[str, asyncio.Task[Any]] = {}
    if kind == "locks":
        a, b = asyncio.Lock(), asyncio.Lock()
        both = asyncio.Barrier(2)

        async def take(x: asyncio.Lock, y: asyncio.Lock) -> None:
            async with x:
                await both.wait()
                formed.append(time.perf_counter())
                async with y:
                    pass

        cycle = [asyncio.create_task(take(a, b)), asyncio.create_task(take(b, a))]
    else:
        async def first() -> None:
            await asyncio.sleep(0)
            if kind == "gather":
                await asyncio.gather(tasks["second"], asyncio.sleep(3600))
            elif kind == "taskgroup":
                async with asyncio.TaskGroup() as group:
                    group.create_task(await_second())
            else:
                await tasks["second"]

        async def await_second() -> None:
            await tasks["second"]

        async def second() -> None:
            await asyncio.sleep(0)
            formed.append(time.perf_counter())
            await tasks["first"]

        tasks["first"] = asyncio.create_task(first())
        tasks["second"] = asyncio.create_task(second())
        cycle = list(tasks.values())
    await asyncio.wait_for(found.wait(), 60)
    took = at[0] - formed[-1]
    for t in [*sleepers, *(cycle if kind == "locks" else [])]:
        t.cancel()
    await asyncio.gather(*sleepers, return_exceptions=True)
    if kind == "locks":
        await asyncio.gather(*cycle, return_exceptions=True)
    return took


def run(kind: str, others: int) -> float:
    asyncwatch.install(metrics_exporters=("none",))
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)  # an await cycle cannot be ended
    try:
        return loop.run_until_complete(one(kind, others))
    finally:
        asyncwatch.uninstall()
        loop.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0,1000,10000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kinds", default="locks,await,gather,taskgroup")
    args = parser.parse_args(argv)
    names = {
        "locks": "lock-order inversion",
        "await": "tasks awaiting each other",
        "gather": "awaiting each other through gather",
        "taskgroup": "through a TaskGroup",
    }
    lines = ["| cycle | other waiting tasks | runs | median | max |", "|---|---:|---:|---:|---:|"]
    for kind in args.kinds.split(","):
        for others in (int(s) for s in args.sizes.split(",")):
            times = [run(kind, others) for _ in range(args.rounds)]
            lines.append(
                f"| {names[kind]} | {others:,} | {len(times)}"
                f" | {statistics.median(times) * 1e3:.0f} ms | {max(times) * 1e3:.0f} ms |"
            )
            print(lines[-1], flush=True)
    print()
    print("\n".join(lines))
    print(f"\nDefaults (deadlock_interval_s={asyncwatch.Config().deadlock_interval_s}), "
          f"Python {sys.version.split()[0]}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
