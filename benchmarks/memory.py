"""Memory: 1,000,000 tasks across 1,000 coroutine names; asyncwatch's own memory stays flat.

Runs the same workload twice, each in a fresh subprocess: bare asyncio, then asyncwatch
installed with the default settings (the /metrics endpoint on a free port, not scraped;
watchdog, deadlock detector, advisor). Resident set size is read after install (before the
loop exists: what importing asyncwatch and install() took) and at checkpoints; the
difference between the two runs is what asyncwatch holds, and it must not grow with the
number of tasks. Run: ``python benchmarks/memory.py`` (``--tasks 100000`` for a quicker run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import RESULTS, cache_bytecode

CHILD = r"""
import asyncio, gc, json, sys, types
import psutil

mode, total = sys.argv[1], int(sys.argv[2])
if mode == "asyncwatch":  # the defaults: the /metrics endpoint (on a free port), watchdog,
    import asyncwatch  # deadlock detector, advisor
    asyncwatch.install(prometheus_port=0)
elif mode == "asyncwatch+spans":  # a span for every task
    import asyncwatch
    asyncwatch.install(metrics_exporters=("none",), task_span_ratio=1.0)
elif mode.startswith("otel-asyncio"):  # +spans: every job coroutine traced by name
    import os
    from opentelemetry.instrumentation.asyncio import AsyncioInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    if mode == "otel-asyncio+spans":
        os.environ["OTEL_PYTHON_ASYNCIO_COROUTINE_NAMES_TO_TRACE"] = ",".join(
            f"job_{i}" for i in range(1000))
    AsyncioInstrumentor().instrument(
        meter_provider=MeterProvider(), tracer_provider=TracerProvider())

async def template():
    await asyncio.sleep(0)

namespace = {"__name__": "bench.jobs", "asyncio": asyncio}
jobs = []
for i in range(1000):
    code = template.__code__.replace(co_name=f"job_{i}", co_qualname=f"job_{i}")
    jobs.append(types.FunctionType(code, namespace, f"job_{i}"))

proc = psutil.Process()
checkpoints = sorted({total // 10, total // 4, total // 2, 3 * total // 4, total})
gc.collect()
installed = proc.memory_info().rss  # before the loop exists: what importing and install() took

async def main():
    done, out = 0, [(0, installed)]
    while done < total:
        await asyncio.gather(*(job() for job in jobs))
        done += len(jobs)
        if checkpoints and done >= checkpoints[0]:
            checkpoints.pop(0)
            gc.collect()
            out.append((done, proc.memory_info().rss))
    return out

print(json.dumps(asyncio.run(main())))
"""


def run(mode: str, tasks: int) -> list[tuple[int, int]]:
    cache_bytecode()  # as installed: no module is compiled in the measured process
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(tasks)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [tuple(p) for p in json.loads(result.stdout)]  # type: ignore[misc]


def compare(tasks: int, modes: tuple[str, ...] = ("bare", "asyncwatch")) -> dict[str, float]:
    """MiB of RSS after ``tasks`` tasks, each mode in a fresh process, one after another:
    ``bare``, ``asyncwatch`` (defaults), ``asyncwatch+spans`` (a span for every task),
    ``otel-asyncio`` and ``otel-asyncio+spans`` (opentelemetry-instrumentation-asyncio with SDK
    providers; +spans: every coroutine of the workload traced)."""
    return {mode: run(mode, tasks)[-1][1] / 2**20 for mode in modes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    args = parser.parse_args()
    bare = run("bare", args.tasks)
    watched = run("asyncwatch", args.tasks)
    lines = [
        "| tasks run | RSS bare (MiB) | RSS asyncwatch (MiB) | asyncwatch's share (MiB) |",
        "|---:|---:|---:|---:|",
    ]
    shares = []
    for (done, b), (_, w) in zip(bare, watched, strict=True):
        share = (w - b) / 2**20
        shares.append(share)
        label = "after install" if done == 0 else f"{done:,}"
        lines.append(f"| {label} | {b / 2**20:.1f} | {w / 2**20:.1f} | {share:.1f} |")
    growth = shares[-1] - shares[1]
    lines.append("")
    lines.append(
        f"{args.tasks:,} tasks over 1,000 coroutine names; asyncwatch's share grew by "
        f"{growth:+.1f} MiB from the first checkpoint to the last ({shares[0]:.1f} MiB of it "
        "was there after install, before any task ran)."
    )
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
