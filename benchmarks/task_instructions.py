"""Instructions per task (callgrind), the steady figure where timing on a busy machine is noisy.

``flat/empty`` (1,000 tasks created and awaited, returning at once) for bare asyncio,
asyncwatch with metrics only and asyncwatch with a span for every task (no exporter). Each
configuration runs in its own interpreter under ``valgrind --tool=callgrind`` twice, with
``--small`` and ``--large`` tasks (each run twice over, the first pass warming up); the
difference of the two instruction totals divided by the difference in tasks is the cost per
task, start-up excluded. Needs valgrind. Run: ``python benchmarks/task_instructions.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

CHILD = r"""
import asyncio, sys
mode, n = sys.argv[1], int(sys.argv[2])
from asyncwatch import Config
from asyncwatch._watch import Watch
w = None
if mode == "spans":
    w = Watch(Config(metrics_exporters=("none",), task_span_ratio=1.0))
elif mode == "metrics":
    w = Watch(Config(metrics_exporters=("none",)))
if w is not None:
    w.telemetry.start()
async def empty():
    pass
async def main():
    for _ in range(n // 1000):
        tasks = [asyncio.create_task(empty()) for _ in range(1000)]
        for t in tasks:
            await t
loop = asyncio.new_event_loop()
if w is not None:
    w.tasks.instrument(loop)
loop.run_until_complete(main())  # warm-up pass: the first spans import and build
loop.run_until_complete(main())
"""


def instructions(mode: str, tasks: int) -> int:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-c", CHILD, mode, str(tasks)],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(done.stderr[-2000:])
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--large", type=int, default=12_000)
    args = parser.parse_args()
    per_task = {}
    for mode in ("bare", "metrics", "spans"):
        extra = instructions(mode, args.large) - instructions(mode, args.small)
        per_task[mode] = extra / (2 * (args.large - args.small))
    print("| configuration | instructions per task | vs bare |")
    print("|---|---:|---:|")
    for mode, value in per_task.items():
        print(f"| {mode} | {value:,.0f} | {value / per_task['bare']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
