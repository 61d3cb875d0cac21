"""How long a deadlock/stuck-task scan blocks its loop, by number of tasks.

The app: ``--tasks`` tasks waiting the way servers wait. Of every 20 tasks: 8 sleep, 4 wait
on one of 100 queues (fed by a live producer), 2 wait on one of 50 events, 2 are parents
awaiting a sleeping child (that is 4 tasks), 1 waits for one of 100 locks held by a sleeping
task, 1 is a gather of sleeping children.

Scans run as the timer runs them, in slices with the loop running in between (each slice
bounded by work units: tasks looked at, waits classified, checks made, heap passes), and
each slice is timed with ``time.perf_counter`` (the loop is held for exactly that long). For
each kind of scan the longest slice is reported, and the scan's total:

* ``first`` - every wait is new (recorded, nothing judged yet);
* ``settled`` - the second scan: waits seen twice are classified and the graph is built;
* ``steady`` - later scans (what runs every ``deadlock_interval_s``);
* ``stuck checks`` - scans once every wait is past ``stuck_task_after_s`` (waits on events
  and queues get reference checks, within the per-scan budget), no heap walk;
* ``a heap walk`` - the longest slice of a walk (one ``gc.get_referrers`` pass each) in the
  first scan that walks; a timed scan walks only when one pass is expected to fit
  (``WALK_PASS_S``), else the column says the walk was refused.

And the cycle probe (``_scanstate.probe_steps``, every ``deadlock_interval_s`` whatever the
scans' interval), slice by slice the same way: ``first probe`` - every wait on a task or a
gather is new and followed; ``steady probe`` - later probes (the waits followed before).

Also reported: one ``gc.get_referrers`` pass over the whole heap, with the number of objects
gc tracks.

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


class Collections:
    """Wall time of the interpreter's own garbage collections (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.total = self.cpu = 0.0
        self.full = 0
        self._began = self._began_cpu = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            self._began_cpu = time.thread_time()
        else:
            self.total += time.perf_counter() - self._began
            self.cpu += time.thread_time() - self._began_cpu
            self.full += info["generation"] == 2


COLLECTIONS = Collections()
_END = object()
# phase, wall s, of which in collections, CPU s, of which in collections
Slice = tuple[str, float, float, float, float]


async def sliced_scan(watch: asyncwatch.Watch) -> list[Slice]:
    """A scan as the timer runs it, slice by slice, the loop running in between: each
    slice's phase, time, and time in collections the slice's allocations set off."""
    slices: list[Slice] = []
    out: list[Any] = []
    loop = asyncio.get_running_loop()
    try:
        steps = watch.deadlocks._steps(loop, out, sliced=True)
    except TypeError:  # an older asyncwatch (slices of 2,000 tasks, no phases): to compare
        steps = watch.deadlocks._steps(loop, out)
    while True:
        collected, collected_cpu = COLLECTIONS.total, COLLECTIONS.cpu
        cpu = time.thread_time()
        began = time.perf_counter()
        phase = next(steps, _END)
        spent = time.perf_counter() - began
        cpu = time.thread_time() - cpu
        slices.append((
            "last" if phase is _END else str(phase or "slice"), spent,
            COLLECTIONS.total - collected, cpu, COLLECTIONS.cpu - collected_cpu,
        ))
        if phase is _END:
            break
        await asyncio.sleep(0)
    assert not out, out
    return slices


async def sliced_probe(watch: asyncwatch.Watch) -> list[Slice]:
    """A cycle probe as the timer runs it, slice by slice (see ``sliced_scan``)."""
    from asyncwatch.deadlock._scanstate import probe_steps

    loop = asyncio.get_running_loop()
    steps = probe_steps(loop, watch.deadlocks._state(loop), watch.deadlocks._probe_edges)
    slices: list[Slice] = []
    while True:
        collected, collected_cpu = COLLECTIONS.total, COLLECTIONS.cpu
        cpu = time.thread_time()
        began = time.perf_counter()
        try:
            phase: Any = next(steps)
        except StopIteration as stop:
            if stop.value:
                raise RuntimeError("a probe found a cycle in an app that has none") from None
            phase = _END
        spent = time.perf_counter() - began
        cpu = time.thread_time() - cpu
        slices.append((
            "last" if phase is _END else str(phase), spent,
            COLLECTIONS.total - collected, cpu, COLLECTIONS.cpu - collected_cpu,
        ))
        if phase is _END:
            break
        await asyncio.sleep(0)
    return slices


def worst(slices: list[Slice], phase: str | None = None, *, gc: bool = True,
          cpu: bool = False) -> float:
    """The longest slice (of ``phase``); ``gc=False``: not counting collections; ``cpu``:
    the slice's CPU time (not counting time the process was descheduled) instead."""
    return max(
        (
            (u if cpu else t) - (0.0 if gc else (cu if cpu else c))
            for p, t, c, u, cu in slices if phase is None or p == phase
        ),
        default=0.0,
    )


def total(slices: list[Slice]) -> float:
    return sum(s[1] for s in slices)


async def measure(n: int, rounds: int) -> dict[str, Any]:
    watch = asyncwatch.current()
    assert watch is not None
    detector = watch.deadlocks
    clock = Clock()
    detector.clock = clock
    tasks, events = start(n)
    for _ in range(5):
        await asyncio.sleep(0)
    count = len(asyncio.all_tasks())
    full_before = COLLECTIONS.full
    first_probe = await sliced_probe(watch)
    steady_probe = [await sliced_probe(watch) for _ in range(rounds)]
    first = await sliced_scan(watch)
    settled = await sliced_scan(watch)
    steady = [await sliced_scan(watch) for _ in range(rounds)]
    stuck = []
    walks = detector.walks
    for _ in range(rounds):
        clock.now += 10 * detector.stuck_after_s
        detector._walk_after = float("inf")  # no walk in these scans
        stuck.append(await sliced_scan(watch))
    walked: list[Slice] = []
    for _ in range(50):  # the first scan whose checks reach a wait that needs a walk
        clock.now += 10 * detector.stuck_after_s
        detector._walk_after = 0.0
        slices = await sliced_scan(watch)
        if detector.walks > walks:
            walked = slices
            break
    blocks = sys.getallocatedblocks()
    heap = len(gc.get_objects())
    began = time.perf_counter()
    gc.get_referrers(events[0])
    one_pass = time.perf_counter() - began
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    del events
    # (an older asyncwatch walks inside a slice of its own kind: its longest slice then)
    walk_phase = "walk" if any(s[0] == "walk" for s in walked) else None
    scans = {
        "first": [first], "settled": [settled], "steady": steady, "stuck": stuck,
        "first_probe": [first_probe], "steady_probe": steady_probe,
    }
    out: dict[str, Any] = {"tasks": count}
    for name, runs in scans.items():
        out[f"{name}_ms"] = statistics.median(total(r) for r in runs) * 1e3
        out[f"{name}_slice_ms"] = max(worst(r) for r in runs) * 1e3
        out[f"{name}_slice_nogc_ms"] = max(worst(r, gc=False) for r in runs) * 1e3
        out[f"{name}_slice_cpu_ms"] = max(worst(r, gc=False, cpu=True) for r in runs) * 1e3
        out[f"{name}_slices"] = len(runs[0])
    out.update({
        "stuck_check_slice_ms": max(worst(s, "stuck") for s in stuck) * 1e3,
        "walk_slice_ms": worst(walked, walk_phase) * 1e3 if walked else None,
        "walk_slice_nogc_ms": worst(walked, walk_phase, gc=False) * 1e3 if walked else None,
        "walk_slice_cpu_ms": (
            worst(walked, walk_phase, gc=False, cpu=True) * 1e3 if walked else None
        ),
        "walk_passes": sum(1 for s in walked if s[0] == "walk"),
        "full_collections": COLLECTIONS.full - full_before,
        "heap_objects": heap,
        "allocated_blocks": blocks,
        "referrers_pass_ms": one_pass * 1e3,
        "checks": detector.checks,
    })
    return out


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
    gc.callbacks.append(COLLECTIONS)
    for size in (int(s) for s in args.sizes.split(",")):
        asyncwatch.install(metrics_exporters=("none",), deadlock_interval_s=3600)
        try:
            results.append(asyncio.run(measure(size, args.rounds)))
        finally:
            asyncwatch.uninstall()
        print(results[-1], flush=True)
    lines = [
        "| tasks | first scan | settled scan | steady scan | with stuck checks | a heap walk "
        "| first probe | steady probe | heap objects | one gc.get_referrers pass |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(r: dict[str, Any], name: str) -> str:
        own, whole = r[f"{name}_slice_nogc_ms"], r[f"{name}_slice_ms"]
        extra = f", {whole:.0f} with a collection" if whole > own + 1 else ""
        return (
            f"{own:.1f} / {r[f'{name}_slice_cpu_ms']:.1f} ms "
            f"({r[f'{name}_ms']:.0f} in {r[f'{name}_slices']}{extra})"
        )

    for r in results:
        walk = (
            "refused: a pass would not fit" if r["walk_slice_ms"] is None
            else f"{r['walk_slice_nogc_ms']:.1f} / {r['walk_slice_cpu_ms']:.1f} ms "
            f"({r['walk_passes']} passes)"
        )
        lines.append(
            f"| {r['tasks']:,} | {cell(r, 'first')} | {cell(r, 'settled')} "
            f"| {cell(r, 'steady')} | {cell(r, 'stuck')} | {walk} "
            f"| {cell(r, 'first_probe')} | {cell(r, 'steady_probe')} "
            f"| {r['heap_objects']:,} | {r['referrers_pass_ms']:.1f} ms |"
        )
    lines += [
        "",
        "The longest single slice of each kind of scan (the longest the loop was held at "
        "once), wall time / CPU time (the latter leaves out the time the process was "
        "descheduled), not counting the interpreter's own garbage collections that an "
        "allocation in the slice happened to set off; in brackets the scan's total wall time "
        "in ms, its number of slices, and the longest slice with a collection in it where "
        "that was longer. "
        f"Steady and stuck-check columns: worst slice over {args.rounds} scans, median total; "
        f"steady probe: over {args.rounds} probes. "
        f"Python {sys.version.split()[0]}, asyncio loop. Machine speed reference: "
        f"sum(range(1000)) takes {speed_us():.1f} us here.",
    ]
    text = "\n".join(lines)
    save("deadlock_scan", [], text, {"results": results, "rounds": args.rounds})
    print()
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
