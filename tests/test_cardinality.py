"""Cardinality and memory stay bounded whatever the app does."""

from __future__ import annotations

import asyncio
import itertools
import tracemalloc
import types
from typing import Any

import asyncwatch
from asyncwatch import _names as n

from .conftest import collect


def make_coroutine_functions(count: int, module: str = "generated") -> list[Any]:
    """``count`` distinct coroutine functions, each with its own code object and name."""

    async def template() -> None:
        pass

    out = []
    namespace = {"__name__": module}
    for i in range(count):
        code = template.__code__.replace(co_name=f"job_{i}", co_qualname=f"job_{i}")
        fn = types.FunctionType(code, namespace, f"job_{i}")
        fn.__qualname__ = f"job_{i}"
        out.append(fn)
    return out


def test_100k_distinct_coroutine_names_are_capped(reader: Any) -> None:
    """100,000 distinct names: max_keys series plus _OTHER, every task still counted."""
    asyncwatch.install(metrics_exporters=("none",), max_keys=200, metric_readers=[reader])
    functions = make_coroutine_functions(100_000)

    async def main() -> None:
        for start in range(0, len(functions), 1000):
            await asyncio.gather(*(f() for f in functions[start : start + 1000]))

    asyncio.run(main())
    stats = asyncwatch.stats()
    assert len(stats.coroutines) == 200 + 1  # the cap, plus _OTHER
    assert stats[n.OVERFLOW].created > 99_000
    # every task counted: 100,000 generated + main + asyncio.run's two shutdown tasks
    assert stats.created == 100_003
    series = {p.attributes[n.CODE_FUNCTION] for p in collect(reader)[n.TASK_CREATED.name]}
    assert len(series) <= 201
    watch = asyncwatch.current()
    assert watch is not None
    for shard in watch.recorder._shards:
        assert len(shard.codes) <= 4 * 200


def test_memory_is_flat_over_many_tasks() -> None:
    """asyncwatch's own allocations do not grow with the number of tasks run."""
    # Under tracemalloc a batch can hold the loop past the default threshold; every block
    # would then (rightly) keep a finding. Those are bounded by the findings log, not flat:
    # a high threshold keeps the heartbeat and watchdog running here without findings.
    asyncwatch.install(metrics_exporters=("none",), block_threshold_s=60)
    functions = make_coroutine_functions(50, module="flat")

    async def batch() -> None:
        await asyncio.gather(*(f() for f in functions for _ in range(4)))

    def asyncwatch_bytes() -> int:
        # Not counted: the advisor's loop-load samples, a ring (deque with maxlen) filled one
        # sample per tick whatever runs. It grows with the test's running time, so a loaded
        # machine pushed this test over its bound once (+17.8 KB) though no task added to it.
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [
                tracemalloc.Filter(True, f"{asyncwatch.__path__[0]}/*"),
                tracemalloc.Filter(False, f"{asyncwatch.__path__[0]}/_loopload.py"),
            ]
        )
        return sum(stat.size for stat in snapshot.statistics("filename"))

    async def main() -> list[int]:
        for _ in range(20):
            await batch()
        sizes = [asyncwatch_bytes()]
        for _ in range(2):
            for _ in range(100):
                await batch()
            sizes.append(asyncwatch_bytes())
        return sizes

    tracemalloc.start()
    try:
        sizes = asyncio.run(main())
    finally:
        tracemalloc.stop()
    assert asyncwatch.stats()["flat.job_0"].created == 220 * 4
    # 20,000 tasks in each span: a leak of even one byte per task grows both spans by more
    # than the bound. A one-off allocation (a deadlock scan that happened to fall inside a
    # span on a slow machine, a counter outgrowing the small-int cache) grows only one.
    growth = [later - earlier for earlier, later in itertools.pairwise(sizes)]
    assert min(growth) <= 16_384, sizes
