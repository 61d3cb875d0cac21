"""What an on-demand profile costs while it runs, and what it leaves in memory afterwards.

Throughput (task churn while a profile runs), interleaved round by round in one process:

* ``bare`` - stock asyncio, nothing profiling.
* ``yappi`` - yappi alone as most people run it (``set_clock_type("wall")``, ``start()``):
  the anchor.
* ``yappi+guard`` - the same with asyncwatch's guard against yappi pinning coroutines.
* ``asyncwatch.profile`` - what ``asyncwatch.profile()`` runs: yappi, the guard and the
  per-coroutine busy timer.

Memory (``--memory N``): N short tasks profiled in a fresh child process, with and without the
guard: live coroutine objects and RSS before and after (yappi's tables cleared, gc run).

Run: ``python benchmarks/profiling.py --quick`` (smoke), ``python benchmarks/profiling.py``,
``python benchmarks/profiling.py --memory 1000000``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import yappi
from _harness import interleave, save, table
from _harness import timed as harness_timed
from task_churn import WORKLOADS

from asyncwatch.profiler._profiling import ProfileSession
from asyncwatch.profiler._yappi_leak import GUARD


def timed(
    workload: Callable[[int], Awaitable[None]],
    n: int,
    start: Callable[[], Any] | None = None,
    stop: Callable[[Any], None] | None = None,
) -> tuple[float, int]:
    """CPU seconds of the workload in a fresh loop, with a profiler started around it."""
    return harness_timed(workload, n, False, (lambda _loop: start()) if start else None, stop)


def yappi_on(guard: bool) -> Callable[[], Any]:
    def start() -> Any:
        if guard:
            GUARD.apply(yappi)
        yappi.set_clock_type("wall")
        yappi.start()

    return start


def yappi_off(_: Any) -> None:
    yappi.stop()
    yappi.clear_stats()
    GUARD.restore()


def session_on() -> Any:
    return ProfileSession(save=False).start()


def session_off(session: Any) -> None:
    session.stop()


_CHILD = """
import asyncio, gc, json, sys
import psutil
import asyncwatch
from asyncwatch.profiler import _yappi_leak
tasks, guard = int(sys.argv[1]), sys.argv[2] == "on"
if not guard:
    _yappi_leak.GUARD.apply = lambda yappi: "off"
async def short():
    return None
def live():
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "coroutine")
async def main():
    gc.collect(); before, rss0 = live(), psutil.Process().memory_info().rss
    with asyncwatch.profiling(save=False) as session:
        for _ in range(tasks // 1000):
            await asyncio.gather(*[asyncio.create_task(short()) for _ in range(1000)])
    gc.collect()
    print(json.dumps({"guard": session.report.leak_guard, "tasks": tasks,
        "coroutines_before": before, "coroutines_after": live(),
        "rss_before_mb": rss0 / 2**20, "rss_after_mb": psutil.Process().memory_info().rss / 2**20,
        "yappi_bytes_at_stop": session.report.yappi_bytes}))
asyncio.run(main())
"""


def memory(tasks: int) -> str:
    lines = [
        "| guard | tasks profiled | live coroutines before -> after | RSS before -> after (MiB) |",
        "|---|---:|---:|---:|",
    ]
    results = []
    for guard in ("on", "off"):
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(tasks), guard],
            capture_output=True, text=True, check=True,
        ).stdout
        r = json.loads(out)
        results.append(r)
        lines.append(
            f"| {guard} | {tasks:,} | {r['coroutines_before']:,} -> {r['coroutines_after']:,} | "
            f"{r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} |"
        )
    text = "\n".join(lines)
    save("profiling_memory", [], text, {"memory": results})
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2,000 tasks")
    parser.add_argument("--memory", type=int, default=0, help="measure memory after N tasks")
    args = parser.parse_args(argv)
    if args.memory:
        print(memory(args.memory))
        return 0
    rounds, n = (2, 2_000) if args.quick else (args.rounds, args.tasks)
    rows = []
    for name in ("flat/await", "gather/await"):
        workload = WORKLOADS[name]
        rows += interleave(
            name,
            {
                "bare": lambda w=workload: timed(w, n),
                "yappi": lambda w=workload: timed(w, n, yappi_on(False), yappi_off),
                "yappi+guard": lambda w=workload: timed(w, n, yappi_on(True), yappi_off),
                "asyncwatch.profile": lambda w=workload: timed(w, n, session_on, session_off),
            },
            rounds=rounds,
        )
    text = table(rows, "tasks/s", f"{rounds} rounds of {n:,} tasks, CPU time, median ratios.")
    print(text)
    if not args.quick:
        save("profiling", rows, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
