"""How long a deadlock/stuck-task scan blocks its loop, by number of tasks.

The app: ``--tasks`` tasks waiting the way servers wait. Of every 20 tasks: 8 sleep, 4 wait
on one of 100 queues (fed by a live producer), 2 wait on one of 50 events, 2 are parents
awaiting a sleeping child (that is 4 tasks), 1 waits for one of 100 locks held by a sleeping
task, 1 is a gather of sleeping children.

Scans are timed with ``time.perf_counter`` (the loop is blocked for exactly that long):

* ``first`` - every wait is new (recorded, nothing judged yet);
* ``settled`` - the second scan: waits seen twice are classified and the graph is built;
* ``steady`` - median of later scans (what runs every ``deadlock_interval_s``), in total,
  and its longest slice: timed scans run in slices of 2,000 tasks with the loop running in
  between, so the longest slice is the longest the loop is held at once;
* ``stuck checks`` - median (and max) of scans once every wait is past
  ``stuck_task_after_s`` (waits on events and queues get reference checks, within the
  per-scan budget), no heap walk, and the longest slice of those;
* ``with a heap walk`` - one such scan that also walks the heap (walks are spaced out so
  that they take at most 0.2% of the loop's time; this is the longest single pause).

Also reported: one ``gc.get_referrers`` pass over the whole heap (a heap walk costs one such
pass per level), with the number of objects gc tracks.

Run: ``python benchmarks/deadlock_scan.py`` (``--quick``: 1,000 and 10,000 tasks only).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import save

import asyncwatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def sleeper() -> None:
    await asyncio.sleep(3600)


async def consumer(queue: asyncio.Queue[int]) -> None:
    while True:
        await queue.get()


async def producer(queues: list[asyncio.Queue[int]]) -> None:
    await asyncio.sleep(3600)
    for q in queues:
        q.put_nowait(1)


async def waiter(event: asyncio.Event) -> None:
    await event.wait()


async def parent() -> None:
    await asyncio.create_task(sleeper())


async def holder(lock: asyncio.Lock) -> None:
    async with lock:
        await asyncio.sleep(3600)


async def locker(lock: asyncio.Lock) -> None:
    async with lock:
        pass


async def gatherer() -> None:
    await asyncio.gather(sleeper(), sleeper())


def start(n: int) -> tuple[list[asyncio.Task[Any]], list[asyncio.Event]]:
    queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(100)]
    events = [asyncio.Event() for _ in range(50)]
    locks = [asyncio.Lock() for _ in range(100)]
    tasks = [asyncio.create_task(producer(queues))]
    tasks += [asyncio.create_task(holder(lock)) for lock in locks]
    for i in range(n // 20):
        tasks += [asyncio.create_task(sleeper()) for _ in range(8)]
        tasks += [asyncio.create_task(consumer(queues[(i + k) % 100])) for k in range(4)]
        tasks += [asyncio.create_task(waiter(events[(i + k) % 50])) for k in range(2)]
        tasks += [asyncio.create_task(parent()) for _ in range(2)]
        tasks.append(asyncio.create_task(locker(locks[i % 100])))
        tasks.append(asyncio.create_task(gatherer()))
    return tasks, events


def sliced_scan(watch: asyncwatch.Watch) -> list[float]:
    """A scan as the timer runs it, slice by slice: the time of each slice."""
    slices = []
    out: list[Any] = []
    steps = watch.deadlocks._steps(asyncio.get_running_loop(), out)
    while True:
        began = time.perf_counter()
        more = next(steps, None) is None and steps.gi_frame is not None
        slices.append(time.perf_counter() - began)
        if not more:
            break
    assert not out, out
    return slices


def timed_scan(watch: asyncwatch.Watch) -> float:
    began = time.perf_counter()
    made = watch.deadlocks.scan()
    spent = time.perf_counter() - began
    assert not made, made  # a healthy app: nothing to report
    return spent


async def measure(n: int, rounds: int) -> dict[str, Any]:
    watch = asyncwatch.current()
    assert watch is not None
    clock = Clock()
    watch.deadlocks.clock = clock
    tasks, events = start(n)
    for _ in range(5):
        await asyncio.sleep(0)
    total = len(asyncio.all_tasks())
    first = timed_scan(watch)
    settled = timed_scan(watch)
    steady = statistics.median(timed_scan(watch) for _ in range(rounds))
    pauses = [max(sliced_scan(watch)) for _ in range(rounds)]
    stuck, stuck_pauses = [], []
    walks = watch.deadlocks.walks
    for _ in range(rounds):
        clock.now += 10 * watch.deadlocks.stuck_after_s
        watch.deadlocks._walk_after = float("inf")  # no walk in these scans
        slices = sliced_scan(watch)
        stuck.append(sum(slices))
        stuck_pauses.append(max(slices))
    walked = 0.0
    for _ in range(50):  # the first scan whose checks reach a wait that needs a walk
        clock.now += 10 * watch.deadlocks.stuck_after_s
        watch.deadlocks._walk_after = 0.0
        spent = timed_scan(watch)
        if watch.deadlocks.walks > walks:
            walked = spent
            break
    heap = len(gc.get_objects())
    began = time.perf_counter()
    gc.get_referrers(events[0])
    one_pass = time.perf_counter() - began
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    del events
    return {
        "tasks": total,
        "first_ms": first * 1e3,
        "settled_ms": settled * 1e3,
        "steady_ms": steady * 1e3,
        "longest_pause_ms": max(pauses) * 1e3,
        "stuck_longest_pause_ms": max(stuck_pauses) * 1e3,
        "stuck_checks_ms": statistics.median(stuck) * 1e3,
        "stuck_checks_max_ms": max(stuck) * 1e3,
        "with_walk_ms": walked * 1e3,
        "heap_objects": heap,
        "referrers_pass_ms": one_pass * 1e3,
        "checks": watch.deadlocks.checks,
    }


def speed_us() -> float:
    import timeit

    return min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="1,000 and 10,000 tasks, 3 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.rounds = "1000,10000", 3
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        asyncwatch.install(metrics_exporters=("none",), deadlock_interval_s=3600)
        try:
            results.append(asyncio.run(measure(size, args.rounds)))
        finally:
            asyncwatch.uninstall()
        print(results[-1], flush=True)
    lines = [
        "| tasks | first scan | settled scan | steady scan | its longest slice | with stuck "
        "checks (median / max) | its longest slice | with a heap walk | heap objects "
        "| one gc.get_referrers pass |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['tasks']:,} | {r['first_ms']:.1f} ms | {r['settled_ms']:.1f} ms "
            f"| {r['steady_ms']:.1f} ms | {r['longest_pause_ms']:.1f} ms "
            f"| {r['stuck_checks_ms']:.1f} / "
            f"{r['stuck_checks_max_ms']:.1f} ms | {r['stuck_longest_pause_ms']:.1f} ms "
            f"| {r['with_walk_ms']:.1f} ms "
            f"| {r['heap_objects']:,} "
            f"| {r['referrers_pass_ms']:.1f} ms |"
        )
    lines += [
        "",
        f"Wall time each scan blocked the loop; steady and stuck-check columns are over "
        f"{args.rounds} scans. Python {sys.version.split()[0]}, asyncio loop. Machine speed "
        f"reference: sum(range(1000)) takes {speed_us():.1f} us here.",
    ]
    text = "\n".join(lines)
    save("deadlock_scan", [], text, {"results": results, "rounds": args.rounds})
    print()
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
