"""The advisor's closed loop in real time: the convergence table.

The same workloads as ``tests/test_advisor_closed_loop.py`` (``tests/advisor_sim.py``: an
over-provisioned semaphore whose backend's latency explodes past 20 in flight and answers
429 beyond, retried; an under-provisioned semaphore of 2 before a backend of capacity 16;
``items[i:i+32]`` batches fanned out with ``gather``, best near 225), but on the stock event
loop and the wall clock, with asyncwatch installed as an app would have it (sampler thread
running). A user applies each suggestion, or makes the first run a "need data" names, until
the advisor says "no change"; each workload is also swept by brute force.

Run: ``python benchmarks/advisor_convergence.py`` (a few minutes, 2 s per run; ``--virtual``
for the tests' virtual clock). Writes ``benchmarks/results/advisor_convergence.md`` (or
``--name``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import advisor_sim


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=str(Path(__file__).parent / "results" /
                                              "advisor_convergence"))
    parser.add_argument("--virtual", action="store_true",
                        help="on the virtual clock instead (what the tests do)")
    args = parser.parse_args(argv)
    rows = []
    began = time.perf_counter()
    for w in advisor_sim.workloads():
        brute = advisor_sim.sweep(w, virtual=args.virtual)
        steps = advisor_sim.run_closed_loop(w, window_s=2.0, virtual=args.virtual)
        rows.append((w, steps, brute))
        print(f"{w.name}: {len(steps)} runs, sweep {brute}", flush=True)
    text = advisor_sim.table(rows)
    clock = "virtual clock" if args.virtual else "wall clock"
    text += (f"\n\n{clock}, 2 s per run; took {time.perf_counter() - began:.0f} s. "
             "[low]/[medium]/[high]: the confidence of the suggestion applied after that run; "
             "[need data]: the advisor named the run to make next.\n")
    print(text)
    Path(args.name).with_suffix(".md").write_text(text)
    return text


if __name__ == "__main__":
    main()
