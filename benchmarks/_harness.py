"""Shared benchmark harness: interleaved rounds, per-round ratios, a markdown table.

The machine is noisy, so no absolute time is trusted on its own. Every configuration runs
once per round, in turn, in the same process; each round yields each configuration's time
divided by the baseline's time in *that* round, and the table reports the median of those
ratios. CPU time of the whole process (``time.process_time``) is used, which ignores time the
process spent descheduled but includes any background threads the tool under test runs.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
PACKAGE = Path(__file__).resolve().parent.parent / "asyncwatch"


def cache_bytecode() -> None:
    """Write the bytecode cache of every module of the package, as pip does when it installs a
    wheel. A checkout has a cache only for the modules something imported while allowed to
    write one (``PYTHONDONTWRITEBYTECODE`` unset); a module imported later in a measured run,
    such as the advisor's models at its first evaluation, would otherwise be compiled there,
    and the compiler's memory stays in the process's RSS (about 1.3 MiB for those)."""
    import compileall

    compileall.compile_dir(str(PACKAGE), quiet=1)


@dataclass
class Row:
    """One configuration's results for one workload."""

    workload: str
    config: str
    ratios: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def interleave(
    workload: str,
    configs: dict[str, Callable[[], tuple[float, int]]],
    *,
    rounds: int,
    baseline: str = "bare",
) -> list[Row]:
    """Run each config once per round (order rotated each round); ratios against baseline.

    Each config callable returns (cpu seconds, units of work done).
    """
    rows = {name: Row(workload, name) for name in configs}
    names = list(configs)
    for r in range(rounds):
        times: dict[str, float] = {}
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            seconds, units = configs[name]()
            times[name] = seconds
            rows[name].rates.append(units / seconds if seconds > 0 else float("inf"))
        for name in names:
            rows[name].ratios.append(times[name] / times[baseline])
    return list(rows.values())


def cpu_timer() -> Callable[[], float]:
    return time.process_time


def table(rows: list[Row], unit: str, note: str = "") -> str:
    """A markdown table: workload, config, median rate, median cost ratio to the baseline."""
    lines = [
        f"| workload | configuration | {unit} (median) "
        "| cost vs bare (median of per-round ratios) |",
        "|---|---|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row.workload} | {row.config} | {row.rate:,.0f} | {row.ratio:.2f}x |")
    if note:
        lines.append("")
        lines.append(note)
    return "\n".join(lines)


def save(name: str, rows: list[Row], text: str, extra: dict[str, object] | None = None) -> None:
    """Write results/<name>.json and results/<name>.md."""
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        **(extra or {}),
    }
    data = {"meta": meta, "rows": [asdict(r) | {"ratio": r.ratio, "rate": r.rate} for r in rows]}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    header = f"<!-- {name}: Python {meta['python']}, {meta['when']} -->\n"
    (RESULTS / f"{name}.md").write_text(header + text + "\n")


def new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    """A fresh event loop: uvloop's or the standard one."""
    if use_uvloop:
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def timed(
    workload: Callable[[int], Awaitable[None]],
    n: int,
    use_uvloop: bool,
    setup: Callable[[asyncio.AbstractEventLoop], Any] | None = None,
    teardown: Callable[[Any], None] | None = None,
    *,
    warm: bool = False,
) -> tuple[float, int]:
    """Run ``workload(n)`` in a fresh loop; CPU seconds (process, all threads) of the workload
    alone, and ``n``. ``setup(loop)`` runs before, ``teardown(its result)`` after; ``warm``
    lets one loop iteration (e.g. a first heartbeat) run before the clock starts."""
    loop = new_loop(use_uvloop)
    state = setup(loop) if setup else None

    async def main() -> float:
        if warm:
            await asyncio.sleep(0)
        start = time.process_time()
        await workload(n)
        return time.process_time() - start

    try:
        seconds = loop.run_until_complete(main())
    finally:
        if teardown:
            teardown(state)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return seconds, n


# ---------------------------------------------------------------- callgrind at the program's pace

# valgrind options that make callgrind simulate the caches and branch predictor: the same
# instructions counted, some 4-5 times slower (the second pace ``paced`` needs)
SLOW_PACE = ("--cache-sim=yes", "--branch-sim=yes")


@dataclass(frozen=True)
class Paced:
    """Instructions per operation of one configuration, counted by callgrind, and the same
    with its per-second work counted at the program's own pace.

    Valgrind runs a program some 50-90 times slower than it runs alone, but what asyncwatch
    does per second of wall time (the heartbeat, deadlock scans) keeps its rate, so under
    callgrind it lands that many times too often on each operation. The count is made at two
    paces (plain callgrind, and callgrind simulating caches: the same instructions, slower), so
    that per operation

        counted = own + per_second * wall time per operation

    gives both unknowns: ``per_second``, the instructions the per-second work runs per second
    of wall time while the program is busy, and ``own``, what each operation costs itself.
    ``paced`` is ``own`` plus the per-second work at the rate of the program run alone."""

    raw: float  # per operation, plain callgrind
    paced: float
    own: float
    per_second: float
    valgrind_wall: float  # seconds per operation under plain callgrind
    native_wall: float  # seconds per operation run alone

    @property
    def slowdown(self) -> float:
        return self.valgrind_wall / self.native_wall if self.native_wall > 0 else 0.0


def paced(
    count: Callable[[int, bool], tuple[int, float]],
    run: Callable[[int], float],
    small: int,
    slow_small: int,
) -> Paced:
    """``count(n, slow)``: (instructions, wall seconds) of a child doing ``n`` operations under
    callgrind (``slow``: with ``SLOW_PACE``); ``run(n)``: wall seconds of ``n`` operations run
    alone. Each figure is the difference between ``n`` and ``6 * n`` operations (``small`` at
    the plain pace, ``slow_small`` at the slow one), so start-up cancels out."""

    def per_op(n: int, slow: bool) -> tuple[float, float]:
        (ins_a, wall_a), (ins_b, wall_b) = count(n, slow), count(6 * n, slow)
        return (ins_b - ins_a) / (5 * n), (wall_b - wall_a) / (5 * n)

    (fast, fast_wall), (slow, slow_wall) = per_op(small, False), per_op(slow_small, True)
    per_second = max(0.0, (slow - fast) / (slow_wall - fast_wall))
    own = fast - per_second * fast_wall
    native_wall = max(0.0, (run(6 * small) - run(small)) / (5 * small))
    return Paced(fast, own + per_second * native_wall, own, per_second, fast_wall, native_wall)
