"""Loop callbacks with asyncwatch's DEFAULT settings, side by side with bare asyncio.

The workload is ``loop_watch.py``'s: 1,000,000 ``call_soon`` callbacks, each scheduling the
next link of its chain, in one chain by default (``--chains``): every loop iteration runs one
callback and calls ``select`` once, the worst case for anything done per iteration.
Configurations, interleaved round by round in one process:

* ``bare`` asyncio, twice (``bare (control)``: its distance from 1.00 is the noise);
* ``bare + a thread + a timer``: bare asyncio with what asyncwatch cannot help adding, and
  nearly every real app has anyway: another thread in the process (one that only waits) and a
  timer pending on the loop (asyncio then checks the timer heap at every iteration); with
  ``--floor``, also each of the two alone (``bare + a timer``, ``bare + a thread``);
* ``defaults``: ``asyncwatch.install()`` with every default (task hook, watchdog and
  heartbeat, advisor and its sampler thread, deadlock scans), metrics exporter ``none`` so
  that no port is opened (the exporter is a thread that waits for scrapes; it adds nothing
  per callback);
* ``defaults, advisor off``: the same with ``advisor=False``.

Each round installs asyncwatch, runs a fresh loop for a few iterations (so that everything
that attaches to a loop has attached), then times the workload: CPU time of the whole process
(``time.process_time``: the watchdog and advisor threads count too).

``--callgrind`` counts instructions instead of timing (valgrind must be installed): each
configuration runs in its own process under ``valgrind --tool=callgrind``, once with N and
once with 6N callbacks; the difference divided by 5N is the cost per callback, so start-up
cancels out. Counted twice: the loop's thread alone (what runs on every iteration or callback)
and all threads (the watchdog and the advisor's sampler too; valgrind runs the program about
50x slower, so their per-second work is overstated that much against the callbacks).

Run: ``python benchmarks/callbacks.py`` (``--quick``: 100,000 callbacks, 5 rounds;
``--callgrind``; ``--floor`` adds the timer and the thread alone).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import RESULTS, SLOW_PACE, Paced, Row, interleave, paced, save, table
from loop_watch import callback_churn

import asyncwatch

THREAD_AND_TIMER = "bare + a thread + a timer"
# bare configurations with a waiting thread and/or a pending timer: (thread, timer)
EXTRAS = {THREAD_AND_TIMER: (True, True), "bare + a timer": (False, True),
          "bare + a thread": (True, False)}
FLOOR_PARTS = ("bare + a timer", "bare + a thread")  # measured with --floor only
CONFIGS: dict[str, dict[str, Any] | None] = {
    "bare": None,
    "bare (control)": None,
    # What asyncwatch cannot help adding, and nearly every real app has anyway: another
    # thread in the process (here one that only waits) and a timer pending on the loop.
    THREAD_AND_TIMER: None,
    "bare + a timer": None,
    "bare + a thread": None,
    "defaults": {},
    "defaults, advisor off": {"advisor": False},
}


def timed(settings: dict[str, Any] | None, n: int, chains: int,
          extras: tuple[bool, bool] = (False, False)) -> tuple[float, int]:
    """CPU seconds of ``n`` callbacks on a fresh loop, asyncwatch installed with ``settings``
    (defaults plus these) unless None; ``extras``: (a waiting thread, a pending timer)."""
    return measured(settings, n, chains, extras)[0], n


def measured(settings: dict[str, Any] | None, n: int, chains: int,
             extras: tuple[bool, bool] = (False, False)) -> tuple[float, float]:
    """(CPU, wall) seconds of ``n`` callbacks as ``timed`` runs them."""
    if settings is not None:
        asyncwatch.install(metrics_exporters=("none",), **settings)
    loop = asyncio.new_event_loop()
    stop = threading.Event()
    thread, timer = extras
    if thread:
        threading.Thread(target=stop.wait, daemon=True).start()
    if timer:
        loop.call_later(3600, lambda: None)

    async def main() -> tuple[float, float]:
        for _ in range(3):  # the loop has run: heartbeat, advisor, deadlock scans attached
            await asyncio.sleep(0)
        start, wall = time.process_time(), time.perf_counter()
        await callback_churn(n, chains)
        return time.process_time() - start, time.perf_counter() - wall

    try:
        seconds = loop.run_until_complete(main())
    finally:
        stop.set()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        if settings is not None:
            asyncwatch.uninstall(timeout_s=2)
    return seconds


def counted(config: str, count: int, chains: int, slow: bool = False) -> tuple[int, int, float]:
    """(loop thread, all threads) instructions of a child process running ``count`` callbacks
    under callgrind (``slow``: at ``SLOW_PACE``), and the wall seconds of the callbacks."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes",
             *(SLOW_PACE if slow else ()), f"--callgrind-out-file={out}", sys.executable,
             __file__, "--child", config, "--callbacks", str(count), "--chains", str(chains)],
            check=True, capture_output=True, env=env, text=True,
        )
        totals = {}
        for path in Path(tmp).glob("cg.out-*"):
            found = re.search(r"^(?:summary|totals): (\d+)", path.read_text(errors="replace"),
                              re.M)
            if found is None:
                raise RuntimeError(f"no instruction total in {path.name}")
            totals[path.name] = int(found.group(1))
    return totals["cg.out-01"], sum(totals.values()), float(done.stdout.split()[-1])


def native_wall(config: str, count: int, chains: int) -> float:
    """Wall seconds of ``count`` callbacks in a child process run alone (no valgrind)."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", config, "--callbacks", str(count),
         "--chains", str(chains)],
        check=True, capture_output=True, env=dict(os.environ, PYTHONHASHSEED="0"), text=True,
    )
    return float(done.stdout.split()[-1])


def paced_per_callback(config: str, small: int, chains: int) -> tuple[Paced, float]:
    """Loop-thread instructions per callback, raw and at the program's pace (``Paced``), and
    all threads' instructions per callback as counted (plain pace), from the same runs."""
    every: dict[int, int] = {}

    def count(n: int, slow: bool) -> tuple[int, float]:
        loop, all_threads, wall = counted(config, n, chains, slow)
        if not slow:
            every[n] = all_threads
        return loop, wall

    pace = paced(count, lambda n: native_wall(config, n, chains), small, max(1, small // 4))
    return pace, (every[6 * small] - every[small]) / (5 * small)


def _run(config: str, n: int, chains: int) -> Callable[[], tuple[float, int]]:
    """One timed round of ``config``."""
    settings, extras = CONFIGS[config], EXTRAS.get(config, (False, False))
    return lambda: timed(settings, n, chains, extras)


def compare(n: int, rounds: int, chains: int = 1,
            configs: tuple[str, ...] = ("bare", "defaults")) -> list[Row]:
    """``configs`` side by side, interleaved: ``n`` callbacks per round (rows of ratios to
    bare; warmed up first)."""
    runs = {name: _run(name, n, chains) for name in configs}
    for run in runs.values():  # warm up imports and caches outside the measured rounds
        run()
    return interleave("callbacks", runs, rounds=rounds)


def callgrind(configs: list[str], small: int, chains: int) -> str:
    per: dict[str, tuple[float, float]] = {}
    pace: dict[str, Paced] = {}
    for config in configs:
        pace[config], every = paced_per_callback(config, small, chains)
        per[config] = (pace[config].raw, every)
        print(f"{config}: {per[config][0]:,.0f} / {per[config][1]:,.0f} instructions per "
              f"callback ({pace[config].paced:,.0f} on the loop thread at the program's pace)",
              flush=True)
    base_loop, base_all = per["bare"]
    base_paced = pace["bare"].paced
    lines = [
        "| configuration | instructions per callback, loop thread | vs bare "
        "| loop thread at the program's pace | vs bare | per-second work (loop thread) "
        "| all threads | vs bare |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {c} | {lp:,.1f} | {lp / base_loop:.3f}x | {pace[c].paced:,.1f} "
        f"| {pace[c].paced / base_paced:.3f}x | {pace[c].per_second:,.0f} instructions/s "
        f"| {al:,.1f} | {al / base_all:.3f}x |"
        for c, (lp, al) in per.items()
    ]
    slowdowns = [p.slowdown for p in pace.values() if p.slowdown]
    lines += [
        "",
        f"callgrind, difference between runs of {small:,} and {6 * small:,} callbacks, each "
        "configuration in its own process. What asyncwatch does per second (the heartbeat and "
        "deadlock scans on the loop's thread; the watchdog's looks and the advisor's peeks in "
        "'all threads') lands on many more callbacks at valgrind's pace (here "
        f"{min(slowdowns, default=0):.0f} to {max(slowdowns, default=0):.0f} times slower than "
        "the program alone) than at the program's own; 'at the program's pace' counts the "
        "loop thread's per-second work (measured busy, from counts at two valgrind paces) at "
        "the rate of the program run alone "
        f"(benchmarks/_harness.py, ``Paced``); Python {sys.version.split()[0]}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--callbacks", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="5 rounds, 100k callbacks")
    parser.add_argument("--callgrind", action="store_true",
                        help="count instructions per callback with valgrind instead of timing")
    parser.add_argument("--chains", type=int, default=1,
                        help="callbacks run per loop iteration (1: the worst case)")
    parser.add_argument("--floor", action="store_true",
                        help="also a pending timer alone and a waiting thread alone")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--name", default="callbacks", help="results file name")
    args = parser.parse_args(argv)
    if args.child:  # prints the wall seconds of its work
        settings, extras = CONFIGS[args.child], EXTRAS.get(args.child, (False, False))
        print(repr(measured(settings, args.callbacks, args.chains, extras)[1]))
        return 0
    shown = [c for c in CONFIGS if args.floor or c not in FLOOR_PARTS]
    configs = [c for c in shown if c != "bare (control)"]
    if args.callgrind:
        if shutil.which("valgrind") is None:
            sys.exit("--callgrind needs valgrind (Debian package valgrind)")
        small = 20_000 if args.quick else 50_000
        text = callgrind(configs, small, args.chains)
        save(args.name + "_callgrind", [], text, {"small": small})
        print(text)
        return 0
    if args.quick:
        args.rounds, args.callbacks = 5, 100_000
    runs = {name: _run(name, args.callbacks, args.chains) for name in shown}
    runs["bare"]()  # warm up imports and caches outside the measured rounds
    runs["defaults"]()
    rows: list[Row] = interleave("callbacks", runs, rounds=args.rounds)
    kept = {row.config: 1 / row.ratio for row in rows}
    note = (
        f"{args.rounds} interleaved rounds of {args.callbacks:,} `call_soon` callbacks, asyncio "
        "loop; CPU time of the whole process; cost = configuration time / bare time in the same "
        "round (median; every round's ratio is in the JSON). 'bare (control)' is bare again: "
        "its distance from 1.00 is the noise.\n\n"
        + ", ".join(f"{name}: {value:.2f} of bare" for name, value in kept.items()
                    if name != "bare")
        + f" (Python {sys.version.split()[0]})."
    )
    text = table(rows, "callbacks/s", note)
    save(args.name, rows, text, {"rounds": args.rounds, "callbacks": args.callbacks})
    print(text)
    print(f"\n(saved under {RESULTS})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
