"""Cost of blocked-loop detection, and how soon a block is recorded.

Throughput (interleaved rounds, CPU time of the whole process, watchdog thread included):

* ``callbacks`` - 1,000,000 ``call_soon`` callbacks: 100 chains, each callback scheduling the
  next link of its chain (so every loop iteration runs about 100 callbacks).
* ``tasks`` - 20,000 tasks created with ``create_task`` in batches of 1,000, each awaiting once.

Configurations: ``bare`` asyncio (twice: ``bare (control)`` shows the noise floor);
``watchdog`` (asyncwatch's heartbeat and watchdog thread on the loop, the default);
``precise`` (plus the ``Handle._run`` wrapper timing every callback); ``debug``
(``loop.set_debug(True)``, asyncio's own slow-callback detection: the anchor).

Detection latency: a loop in its own thread blocks at a random phase of its heartbeat; the
time from the start of the block to the moment its finding is recorded is measured for a
block in ``time.sleep`` (GIL released) and a CPU-bound block (GIL held), with the default
threshold of 100 ms; the goal is threshold + 50 ms.

Run: ``python benchmarks/loop_watch.py`` (``--quick`` for a smoke run, ``--uvloop``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import RESULTS, Row, interleave, new_loop, save, table, timed

from asyncwatch import Config
from asyncwatch._core.faults import Faults
from asyncwatch._core.findings import Finding, FindingsLog
from asyncwatch.loopwatch import LoopWatch

CHAINS = 100
BATCH = 1000


async def callback_churn(n: int, chains: int = CHAINS) -> None:
    """``n`` callbacks in ``chains`` chains: each iteration of the loop runs about ``chains``."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = [n]

    def link() -> None:
        left[0] -= 1
        if left[0] > 0:
            loop.call_soon(link)
        elif not done.done():
            done.set_result(None)

    for _ in range(chains):
        loop.call_soon(link)
    await done


async def one_await() -> None:
    await asyncio.sleep(0)


async def task_churn(n: int) -> None:
    for _ in range(max(1, n // BATCH)):
        tasks = [asyncio.create_task(one_await()) for _ in range(BATCH)]
        for t in tasks:
            await t


def watching(precise: bool) -> tuple[Callable[[Any], Any], Callable[[Any], None]]:
    def setup(loop: asyncio.AbstractEventLoop) -> LoopWatch:
        watch = LoopWatch(Config(precise_callbacks=precise), FindingsLog(), Faults())
        watch.start()
        watch.add_loop(loop)
        return watch

    def teardown(watch: LoopWatch) -> None:
        watch.stop()

    return setup, teardown


def debug(loop: asyncio.AbstractEventLoop) -> None:
    loop.set_debug(True)


def configurations(
    workload: Callable[[int], Awaitable[None]], n: int, use_uvloop: bool, anchor: bool
) -> dict[str, Callable[[], tuple[float, int]]]:
    watchdog, precise = watching(False), watching(True)
    configs = {
        "bare": lambda: timed(workload, n, use_uvloop, warm=True),
        # bare again: the spread of its ratio is this machine's noise floor
        "bare (control)": lambda: timed(workload, n, use_uvloop, warm=True),
        "watchdog": lambda: timed(workload, n, use_uvloop, *watchdog, warm=True),
        "precise": lambda: timed(workload, n, use_uvloop, *precise, warm=True),
    }
    if anchor:
        configs["debug (anchor)"] = lambda: timed(workload, n, use_uvloop, debug, warm=True)
    return configs


def idle_cost(rounds: int, seconds: float, use_uvloop: bool) -> dict[str, float]:
    """Process CPU per second of wall time while one loop sits idle (median of rounds)."""
    setups: dict[str, tuple[Any, Any]] = {
        "bare": (None, None), "watchdog": watching(False), "precise": watching(True)
    }
    samples: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, (setup, teardown) in setups.items():

            async def idle() -> float:
                await asyncio.sleep(0.05)
                start = time.process_time()
                await asyncio.sleep(seconds)
                return time.process_time() - start

            loop = new_loop(use_uvloop)
            state = setup(loop) if setup else None
            samples[name].append(loop.run_until_complete(idle()) / seconds)
            if teardown:
                teardown(state)
            loop.close()
    return {name: statistics.median(values) for name, values in samples.items()}


# ---------------------------------------------------------------- detection latency


def latencies(kind: str, runs: int, use_uvloop: bool, precise: bool) -> list[float]:
    """Seconds from block start to finding recorded, one per run."""
    findings = FindingsLog()
    watch = LoopWatch(Config(precise_callbacks=precise), findings, Faults())
    watch.start()
    recorded: list[float] = []
    started: list[float] = []
    seen = threading.Event()

    def on_finding(finding: Finding) -> None:
        recorded.append(time.perf_counter())
        seen.set()

    findings.listen(on_finding)

    def block() -> None:
        started.append(time.perf_counter())
        if kind == "sleep":
            while not seen.is_set():
                time.sleep(0.001)
        else:
            while not seen.is_set():
                pass

    async def main() -> None:
        await asyncio.sleep(0.05)
        for _ in range(runs):
            seen.clear()
            await asyncio.sleep(random.uniform(0.0, 0.05))
            block()
            await asyncio.sleep(0.03)  # let the heartbeat close the finding

    loop = new_loop(use_uvloop)
    watch.add_loop(loop)
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),))
    thread.start()
    thread.join()
    loop.close()
    watch.stop()
    return [r - s for r, s in zip(recorded, started, strict=True)]


def latency_table(rows: list[tuple[str, list[float]]], threshold: float) -> str:
    goal = threshold + 0.05
    lines = [
        "| block | mode | runs | p50 | p95 | max | within threshold + 50 ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, values in rows:
        kind, mode = name.split("/")
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        within = sum(v <= goal for v in values)
        lines.append(
            f"| {kind} | {mode} | {len(values)} | {statistics.median(values) * 1000:.0f} ms "
            f"| {p95 * 1000:.0f} ms | {max(values) * 1000:.0f} ms | {within}/{len(values)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--callbacks", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--blocks", type=int, default=40, help="blocks per latency series")
    parser.add_argument("--quick", action="store_true", help="5 rounds, 100k callbacks")
    parser.add_argument("--uvloop", action="store_true", help="use uvloop's loop")
    parser.add_argument("--no-anchor", action="store_true", help="skip debug mode (slow)")
    parser.add_argument("--only", help="comma-separated: callbacks, tasks, idle, latency")
    parser.add_argument("--name", default=None, help="results file name")
    args = parser.parse_args(argv)
    chosen = set(args.only.split(",")) if args.only else {"callbacks", "tasks", "idle", "latency"}
    for noisy in ("asyncwatch", "asyncio"):  # the latency blocks; debug mode's slow callbacks
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.quick:
        args.rounds, args.callbacks, args.tasks, args.blocks = 5, 100_000, 5_000, 12
    loop_name = "uvloop" if args.uvloop else "asyncio"
    rows: list[Row] = []
    for name, workload, n in (
        ("callbacks", callback_churn, args.callbacks),
        ("tasks", task_churn, args.tasks),
    ):
        if name not in chosen:
            continue
        configs = configurations(workload, n, args.uvloop, not args.no_anchor)
        configs["bare"]()  # warm up outside the measured rounds
        rows += interleave(name, configs, rounds=args.rounds)
        print(table([r for r in rows if r.workload == name], "per s"), flush=True)
    series = [
        (f"{kind}/{'precise' if precise else 'watchdog'}",
         latencies(kind, args.blocks, args.uvloop, precise))
        for kind, precise in (("sleep", False), ("cpu", False), ("sleep", True))
        if not (precise and args.uvloop) and "latency" in chosen
    ]
    idle = idle_cost(3 if args.quick else 5, 1.0, args.uvloop) if "idle" in chosen else {}
    threshold = Config().block_threshold_s
    note = (
        f"{args.rounds} interleaved rounds ({args.callbacks:,} callbacks, {args.tasks:,} tasks), "
        f"{loop_name} loop; CPU time of the process; cost = configuration time / bare time in "
        "the same round (median; every round's ratio is in the JSON). Throughput kept = 1 / cost. "
        "'bare (control)' is bare again: its distance from 1.00 is the noise."
    )
    text = (
        table(rows, "per s", note)
        + "\n\nIdle loop, process CPU per second: "
        + ", ".join(f"{name} {value * 1000:.2f} ms" for name, value in idle.items())
        + "\n\nDetection latency (block start to finding recorded), threshold "
        + f"{threshold * 1000:.0f} ms:\n\n"
        + latency_table(series, threshold)
    )
    save(
        args.name or f"loop_watch_{loop_name}", rows, text,
        {"rounds": args.rounds, "callbacks": args.callbacks, "tasks": args.tasks,
         "latency": dict(series), "idle_cpu_per_s": idle},
    )
    print()
    print(text)
    print(f"\n(saved under {RESULTS})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
