"""Issue 17's table in one run: every cost of asyncwatch, side by side with bare and an anchor.

Each row reuses the benchmark that measures it in detail (imported, not copied), with the
configurations interleaved round by round (ratios within a round, never absolute times
across runs: the machine is shared), and, where timing is noisy, instruction counts from
callgrind (valgrind), which other load does not move:

* ``startup`` - ``asyncwatch run`` (defaults: the /metrics endpoint, watchdog, deadlock
  detector, advisor) on a short asyncio program: wall and CPU time added to bare ``python
  prog.py`` (start and exit), and the exit alone (last line to process gone); anchor
  ``opentelemetry-instrument`` (``startup.py``, ``exit_latency.py``).
* ``callbacks`` - 1M ``call_soon`` callbacks, one per loop iteration, with every default on,
  against bare asyncio; instructions per callback on the loop's thread (``callbacks.py``).
* ``churn`` - tasks created and awaited (``flat/await``: 1,000 at a time, each awaiting once),
  defaults against bare, anchor opentelemetry-instrumentation-asyncio with SDK providers;
  instructions per task on the loop's thread (``task_churn.py``).
* ``memory`` - RSS over bare after 1M tasks over 1,000 coroutine names (``memory.py``);
  anchor the same with opentelemetry-instrumentation-asyncio.
* ``spans`` - a span for every task (``task_span_ratio=1``), throughput against bare, bytes
  held per live span (tracemalloc, what the goal compares) and RSS over bare after 100,000
  tasks; anchor opentelemetry-instrumentation-asyncio tracing every coroutine
  (``task_churn.py``, ``memory.py``).
* ``asgi`` - requests/s and p99 of a Starlette app on uvicorn under wrk (``asgi.py``):
  defaults, everything periodic off (``asyncwatch-quiet``: the middleware and the task hook
  alone, to attribute the tail), and starlette-exporter's middleware as the anchor;
  instructions per request on the loop's thread (``asgi_inprocess.py``) for bare, defaults,
  everything periodic off, and two floors on the same defaults: ``asgi.FloorMiddleware``
  (requests timed by route, method and status, nothing else) and
  ``asgi.FiguresFloorMiddleware`` (the figures asyncwatch's middleware records, done the
  plainest way, without its guards).

Run: ``python benchmarks/costs.py`` (about 16 minutes on a shared 2-core machine; it then
writes the table into docs/costs/performance.md through ``scripts/gen_reference.py``),
``--quick`` (tiny workloads, ~20 s, figures meaningless: checks that every row runs),
``--no-callgrind``, ``--only ROW[,ROW]``.

The callbacks and ASGI rows count the per-second work of the defaults (the heartbeat, the
deadlock scans) at the program's own pace: valgrind runs the program 60-90 times slower while
that work keeps its rate per second of wall time, so a plain count puts 60-90 times its real
share on each callback or request. Each such count is made at two valgrind paces, which
separates what each operation costs from what runs per second (``_harness.Paced``); the
row shows the plain count beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import RESULTS, Row, cache_bytecode

HERE = Path(__file__).resolve().parent

ROWS = ("startup", "callbacks", "churn", "memory", "spans", "asgi")


@dataclass(frozen=True)
class Sizes:
    """How much work each row does."""

    startup_rounds: int = 9
    exit_rounds: int = 3
    callbacks: int = 1_000_000
    callback_rounds: int = 7
    callgrind_callbacks: int = 40_000
    tasks: int = 20_000
    churn_rounds: int = 9
    callgrind_tasks: int = 2_000
    memory_tasks: int = 1_000_000
    span_memory_tasks: int = 100_000
    span_live_tasks: int = 10_000
    asgi_rounds: int = 5
    asgi_seconds: float = 4.0
    callgrind_requests: int = 300
    asgi_floors: bool = True  # count the two floor middlewares' instructions beside


FULL = Sizes()
QUICK = Sizes(
    startup_rounds=1, exit_rounds=1, callbacks=20_000, callback_rounds=2,
    callgrind_callbacks=2_000, tasks=1_000, churn_rounds=2, callgrind_tasks=1_000,
    memory_tasks=5_000, span_memory_tasks=2_000, span_live_tasks=500, asgi_rounds=1,
    asgi_seconds=1.0, callgrind_requests=30, asgi_floors=False,
)


@dataclass
class Line:
    """One row of the table."""

    row: str
    measure: str
    goal: str
    asyncwatch: str
    anchor: str
    at_goal: bool | None
    data: dict[str, Any] = field(default_factory=dict)


def median_ratio(rows: list[Row], config: str) -> float:
    return next(r.ratio for r in rows if r.config == config)


def yes_no(ok: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "-"}[ok]


# --- the rows ---------------------------------------------------------------------------------


def startup_row(sz: Sizes, callgrind: bool) -> list[Line]:
    del callgrind  # wall time is what the goal is about
    import exit_latency
    import startup

    rows = {str(r["config"]): r for r in startup.compare(sz.startup_rounds)}
    exits = exit_latency.compare(sz.exit_rounds)

    def cell(config: str) -> str:
        r = rows[config]
        return (
            f"+{r['added_ms']:,.0f} ms wall ({r['ratio']:.2f}x bare), +{r['added_cpu_ms']:,.0f} "
            f"ms CPU; exit alone {exits[config] - exits['bare']:+,.0f} ms"
        )

    anchor = cell("otel-instrument") if "otel-instrument" in rows else "not installed"
    added = float(rows["asyncwatch"]["added_ms"])  # type: ignore[arg-type]
    return [
        Line("startup", "`asyncwatch run` on a short asyncio program: added wall time (start + "
             "exit)", "≤ 150 ms", cell("asyncwatch"), f"opentelemetry-instrument {anchor}",
             added <= 150, {"startup": list(rows.values()), "exit_ms": exits}),
    ]


def callbacks_row(sz: Sizes, callgrind: bool) -> list[Line]:
    import callbacks

    floor = callbacks.THREAD_AND_TIMER  # what asyncwatch cannot help adding: measured beside
    rows = callbacks.compare(sz.callbacks, sz.callback_rounds, configs=("bare", floor, "defaults"))
    kept = 1 / median_ratio(rows, "defaults")
    text = f"{kept:.2f} of bare"
    floor_text = f"{1 / median_ratio(rows, floor):.2f}"
    data: dict[str, Any] = {"rows": [asdict(r) for r in rows]}
    if callgrind:
        # Loop-thread instructions per callback, raw and with the per-second work (heartbeat,
        # deadlock scans) counted at the program's pace rather than valgrind's (``Paced``)
        pace = {c: callbacks.paced_per_callback(c, sz.callgrind_callbacks, 1)[0]
                for c in ("bare", floor, "defaults")}
        data["instructions"] = {c: asdict(p) for c, p in pace.items()}
        ratio = {c: p.paced / pace["bare"].paced for c, p in pace.items()}
        raw = pace["defaults"].raw / pace["bare"].raw
        text += (f" ({ratio['defaults']:.3f}x instructions, loop thread, {raw:.3f}x with the "
                 f"per-second work counted at valgrind's pace, "
                 f"{pace['defaults'].slowdown:.0f} times slower)")
        floor_text += f" ({ratio[floor]:.3f}x)"
        kept = 1 / ratio["defaults"]  # the steadier figure decides
    anchor = f"floor, bare with a pending timer and a waiting thread: {floor_text}"
    return [Line("callbacks", f"{sz.callbacks:,} `call_soon` callbacks, defaults (watchdog, "
                 "advisor, deadlock scans on)", "≥ 0.97 of bare", text, anchor, kept >= 0.97,
                 data)]


_churn_cache: list[Row] = []
CHURN_CONFIGS: list[str] = []  # set by main(): what the chosen rows need, bare first


def churn(sz: Sizes) -> list[Row]:
    """task_churn.compare over CHURN_CONFIGS, run once for the churn and spans rows together
    (so their configurations are side by side too)."""
    import task_churn

    if not _churn_cache:
        _churn_cache.extend(
            task_churn.compare("flat/await", sz.tasks, sz.churn_rounds, tuple(CHURN_CONFIGS))
        )
    return _churn_cache


def churn_row(sz: Sizes, callgrind: bool) -> list[Line]:
    import task_churn

    rows = churn(sz)
    cost, anchor = median_ratio(rows, "asyncwatch"), median_ratio(rows, "otel-asyncio")
    ours, theirs = f"{cost:.2f}x bare's CPU", f"opentelemetry-instrumentation-asyncio {anchor:.2f}x"
    data: dict[str, Any] = {"rows": [asdict(r) for r in rows if "spans" not in r.config]}
    if callgrind:
        per = {c: task_churn.per_task(c, "flat/await", sz.callgrind_tasks)
               for c in ("bare", "asyncwatch", "otel-asyncio")}
        data["instructions"] = per
        ours += f" ({per['asyncwatch'] / per['bare']:.2f}x instructions per task)"
        theirs += f" ({per['otel-asyncio'] / per['bare']:.2f}x)"
        cost = per["asyncwatch"] / per["bare"]  # the steadier figure decides
    return [Line("churn", "task churn (`flat/await`: create 1,000 tasks, each awaits once), "
                 "defaults", "≤ 1.3x cost", ours, theirs, cost <= 1.3, data)]


def memory_row(sz: Sizes, callgrind: bool) -> list[Line]:
    del callgrind
    import memory

    rss = memory.compare(sz.memory_tasks, ("bare", "asyncwatch", "otel-asyncio"))
    ours, theirs = rss["asyncwatch"] - rss["bare"], rss["otel-asyncio"] - rss["bare"]
    return [Line("memory", f"RSS over bare after {sz.memory_tasks:,} tasks", "< 5 MiB",
                 f"+{ours:.1f} MiB", f"opentelemetry-instrumentation-asyncio +{theirs:.1f} MiB",
                 ours < 5, {"rss_mib": rss})]


def spans_row(sz: Sizes, callgrind: bool) -> list[Line]:
    """Throughput with a span for every task, and memory per span: bytes held per live span
    (tracemalloc, 10,000 tasks started and waiting, over bare's bytes per task), which is what
    the goal compares; RSS after the tasks is shown beside it (it also holds every module
    imported and the per-coroutine statistics, which are not per span)."""
    del callgrind  # 3x-10x: timing is steady enough
    import memory
    import task_churn

    rows = churn(sz)
    kept = 1 / median_ratio(rows, "asyncwatch+spans")
    anchor = 1 / median_ratio(rows, "otel-asyncio+spans")
    held = {r.config: r.rate for r in task_churn.span_memory(sz.span_live_tasks, 3, True)}
    ours_b, theirs_b = (held[c] - held["bare"] for c in ("asyncwatch+spans", "otel-asyncio+spans"))
    rss = memory.compare(sz.span_memory_tasks, ("bare", "asyncwatch+spans", "otel-asyncio+spans"))
    ours, theirs = rss["asyncwatch+spans"] - rss["bare"], rss["otel-asyncio+spans"] - rss["bare"]
    return [Line("spans", "a span for every task: throughput; memory per live span (RSS over "
                 f"bare after {sz.span_memory_tasks:,} tasks)",
                 "≥ 0.33 of bare; memory ≤ the OTel SDK's",
                 f"{kept:.2f} of bare; {ours_b:,.0f} bytes per span (+{ours:.1f} MiB)",
                 f"opentelemetry-instrumentation-asyncio {anchor:.2f} of bare; "
                 f"{theirs_b:,.0f} bytes per span (+{theirs:.1f} MiB)",
                 kept >= 0.33 and ours_b <= theirs_b,
                 {"rows": [asdict(r) for r in rows if "spans" in r.config or r.config == "bare"],
                  "bytes_per_live_task": held, "rss_mib": rss})]


# asyncwatch-quiet: every periodic piece off; asyncwatch-no-loopwatch: no heartbeat and no
# watchdog thread (the one that takes the GIL from the loop): to attribute the tail
ASGI_CONFIGS = ["bare", "asyncwatch", "asyncwatch-quiet", "asyncwatch-no-loopwatch",
                "starlette-exporter"]


def asgi_row(sz: Sizes, callgrind: bool) -> list[Line]:
    import asgi

    if shutil.which("wrk") is None:
        missing = "not measured: needs wrk (Debian package wrk)"
        return [Line("asgi", "ASGI req/s", "≥ 0.90 of bare", missing, "-", None),
                Line("asgi", "ASGI p99", "≤ 1.2x", missing, "-", None)]
    seen = asgi.compare(ASGI_CONFIGS, sz.asgi_rounds, sz.asgi_seconds, 16)

    def med(figure: str, config: str) -> float:
        return statistics.median(seen[figure][config])

    def per_round(figure: str, config: str) -> float:
        """The median over rounds of the configuration's figure / bare's in that round."""
        pairs = zip(seen[figure][config], seen[figure]["bare"], strict=True)
        return statistics.median(a / b for a, b in pairs)

    def p99(config: str) -> float:
        return per_round("p99s", config)

    kept = med("ratios", "asyncwatch")
    rate = (f"{kept:.2f} of bare ({med('cpu_ratios', 'asyncwatch'):.2f}x CPU per request"
            f"; every periodic piece off: {med('ratios', 'asyncwatch-quiet'):.2f})")
    anchor = (f"starlette-exporter {med('ratios', 'starlette-exporter'):.2f} "
              f"({med('cpu_ratios', 'starlette-exporter'):.2f}x CPU)")
    data: dict[str, Any] = {"wrk": seen}
    if callgrind:
        from asgi_inprocess import instructions, paced_per_request

        n = sz.callgrind_requests
        # the anchor is timed only: under valgrind each server process takes half a minute.
        # Beside the defaults: everything periodic off (what is left is per request: the
        # periodic pieces run per second, about 50 times too often per request at valgrind's
        # pace), and the two floors (asgi.FloorMiddleware and asgi.FiguresFloorMiddleware
        # in place of asyncwatch's middleware, on the same task hook and periodic pieces)
        floors = ("asyncwatch-floor", "asyncwatch-floor-figures") if sz.asgi_floors else ()
        # Defaults and the floors, raw and with the per-second work counted at the program's
        # pace rather than valgrind's (``Paced``); everything periodic off needs no pacing
        paced_configs = ("bare", "asyncwatch", *floors)
        pace = {c: paced_per_request(c, n) for c in paced_configs}
        per = {c: pace[c].paced for c in paced_configs}
        per["asyncwatch-quiet"] = (
            instructions("asyncwatch-quiet", 6 * n) - instructions("asyncwatch-quiet", n)
        ) / (5 * n)
        data["instructions"] = per
        data["paced"] = {c: asdict(p) for c, p in pace.items()}
        rate += (f"; {per['asyncwatch'] / per['bare']:.3f}x instructions per request "
                 f"({pace['asyncwatch'].raw / pace['bare'].raw:.3f}x with the per-second work "
                 f"counted at valgrind's pace, {pace['asyncwatch'].slowdown:.0f} times slower; "
                 f"every periodic piece off {per['asyncwatch-quiet'] / per['bare']:.3f}x)")
        if floors:  # (--quick leaves them out: tests/test_benchmarks_run.py drives them)
            anchor += ("; floors on the same defaults, in instructions: a middleware timing "
                       f"requests alone {per['asyncwatch-floor'] / per['bare']:.3f}x, one "
                       "recording asyncwatch's figures the plainest way "
                       f"{per['asyncwatch-floor-figures'] / per['bare']:.3f}x")
        kept = per["bare"] / per["asyncwatch"]  # the steadier figure decides

    def p50(config: str) -> float:
        return per_round("p50s", config)

    # p50 beside p99: a tail that only scales with the cost of a request moves both alike;
    # something episodic (a pause on the loop) moves p99 alone
    tail = (f"{p99('asyncwatch'):.2f}x bare's (p50 {p50('asyncwatch'):.2f}x); every periodic "
            f"piece off {p99('asyncwatch-quiet'):.2f}x (p50 {p50('asyncwatch-quiet'):.2f}x), "
            f"the loop watch alone off {p99('asyncwatch-no-loopwatch'):.2f}x; medians "
            f"{med('p99s', 'asyncwatch'):.1f} and {med('p99s', 'bare'):.1f} ms; server busy "
            f"{med('busy', 'bare'):.2f} s/s bare")
    return [
        Line("asgi", "ASGI req/s (uvicorn + Starlette, wrk -c16), defaults", "≥ 0.90 of bare",
             rate, anchor, kept >= 0.90, data),
        Line("asgi", "ASGI p99 (same run)", "≤ 1.2x", tail,
             f"starlette-exporter {p99('starlette-exporter'):.2f}x", p99("asyncwatch") <= 1.2),
    ]


MAKERS: dict[str, Callable[[Sizes, bool], list[Line]]] = {
    "startup": startup_row, "callbacks": callbacks_row, "churn": churn_row,
    "memory": memory_row, "spans": spans_row, "asgi": asgi_row,
}
ROW_CONFIGS = {
    "churn": ("bare", "asyncwatch", "otel-asyncio"),
    "spans": ("bare", "asyncwatch+spans", "otel-asyncio+spans"),
}


# --- the table ----------------------------------------------------------------------------------


def table(lines: list[Line], note: str) -> str:
    out = [
        "| measure | goal | asyncwatch | anchor | at goal | command |",
        "|---|---|---|---|---|---|",
    ]
    for line in lines:
        out.append(
            f"| {line.measure} | {line.goal} | {line.asyncwatch} | {line.anchor} "
            f"| {yes_no(line.at_goal)} | `python benchmarks/costs.py --only {line.row}` |"
        )
    return "\n".join([*out, "", note])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny workloads (~20 s): checks that every row runs")
    parser.add_argument("--no-callgrind", action="store_true", help="timed ratios only")
    parser.add_argument("--only", help=f"comma-separated rows: {', '.join(ROWS)}")
    parser.add_argument("--name", help="results file stem (default benchmarks/results/costs)")
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(ROWS)
    unknown = sorted(set(chosen) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows: {', '.join(unknown)} (known: {', '.join(ROWS)})")
    callgrind = not args.no_callgrind
    cache_bytecode()  # as a wheel installs it: no row's measured process compiles a module
    if callgrind and shutil.which("valgrind") is None:
        print("costs: no valgrind (Debian package valgrind): timed ratios only", file=sys.stderr)
        callgrind = False
    sz = QUICK if args.quick else FULL
    for row in chosen:
        CHURN_CONFIGS.extend(c for c in ROW_CONFIGS.get(row, ()) if c not in CHURN_CONFIGS)
    load_before, began = os.getloadavg()[0], time.monotonic()
    lines: list[Line] = []
    for row in ROWS:
        if row in chosen:
            started = time.monotonic()
            lines += MAKERS[row](sz, callgrind)
            print(f"{row}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    note = (
        f"One run ({'--quick: figures meaningless, ' if args.quick else ''}"
        f"{time.monotonic() - began:,.0f} s), configurations side by side: timed ratios are "
        "medians of per-round ratios, added times medians of per-round differences "
        "(interleaved rounds: startup "
        f"{sz.startup_rounds}, callbacks {sz.callback_rounds}, churn and spans "
        f"{sz.churn_rounds} of {sz.tasks:,} tasks, wrk {sz.asgi_rounds} of "
        f"{sz.asgi_seconds:g} s); instructions (callgrind, "
        f"{'on' if callgrind else 'off'}) are the loop thread's, the difference between a "
        "run of N and of 6N so start-up cancels out, with the per-second work counted at the "
        "program's pace, not valgrind's (callbacks and ASGI: benchmarks/_harness.py, "
        "Paced); where there is an instruction count, it decides 'at goal'. Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} cores, load average {load_before:.1f} "
        f"before, {os.getloadavg()[0]:.1f} after."
    )
    text = table(lines, note)
    stem = Path(args.name) if args.name else RESULTS / (
        "costs" if not args.only else "costs_" + "_".join(chosen))
    stem.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": sys.version.split()[0], "platform": platform.platform(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick,
            "callgrind": callgrind, "sizes": asdict(sz)}
    stem.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "lines": [asdict(line) for line in lines]}, indent=2,
                   default=str) + "\n")
    stem.with_suffix(".md").write_text(
        f"<!-- costs: Python {meta['python']}, {meta['when']} -->\n{text}\n")
    print(text)
    if not (args.quick or args.only or args.name):  # a full run: the docs show it
        subprocess.run([sys.executable, str(HERE.parent / "scripts" / "gen_reference.py")],
                       check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
