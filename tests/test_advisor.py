"""The advisor in closed loop: real workloads, the advice applied, the gain measured.

The ratios asserted here (3x throughput, within 2x of brute force) are what the advisor
promises; workloads sleep inside their workers to simulate I/O (the workload itself), so the
figures hold on a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Iterator

import pytest

import asyncwatch
from tests.advisor_workloads import batch_workload, cpu_call, executor_workload, io_call


@pytest.fixture
def advised() -> Iterator[asyncwatch.Watch]:
    """asyncwatch installed (strict), no exporter, advisor evaluated on demand only."""
    watch = asyncwatch.install(
        metrics_exporters=("none",), raise_errors=True, advisor_interval_s=3600
    )
    yield watch
    asyncwatch.uninstall(timeout_s=2)


def _for(target_prefix: str) -> list[asyncwatch.Recommendation]:
    return [r for r in asyncwatch.advise() if r.target.startswith(target_prefix)]


def test_io_bound_pool_gets_more_workers_and_3x_throughput(advised: asyncwatch.Watch) -> None:
    """An I/O-bound pool of 2 workers: more workers suggested; applied, >= 3x the calls/s."""

    async def run(workers: int) -> float:
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=f"io{workers}") as p:
            return await executor_workload(p, io_call, 0.01, callers=16, calls_each=20)

    before = asyncio.run(run(2))
    recs = _for("ThreadPoolExecutor 'io2'")
    assert len(recs) == 1, asyncwatch.advise()
    rec = recs[0]
    assert (rec.knob, rec.current) == ("max_workers", 2)
    assert rec.suggested is not None and rec.suggested > 2
    assert rec.gain is not None and rec.gain > 3
    assert "queue wait" in rec.evidence and "I/O-bound" in rec.evidence

    after = asyncio.run(run(rec.suggested))
    assert after >= 3 * before, (before, after, rec)
    (done,) = _for(f"ThreadPoolExecutor 'io{rec.suggested}'")  # nothing more to change, said
    assert done.kind == "no_change" and done.reason, done


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_cpu_bound_pool_never_gets_more_workers_than_cores(
    advised: asyncwatch.Watch, kind: str
) -> None:
    """CPU-bound work queued behind a pool: no suggestion ever exceeds the cores."""
    cores = os.cpu_count() or 1

    label = "ThreadPoolExecutor 'cpu'" if kind == "threads" else "ProcessPoolExecutor"

    async def run() -> list[asyncwatch.Recommendation]:
        if kind == "threads":
            pool: concurrent.futures.Executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="cpu"
            )
            calls = 16
        else:
            pool = concurrent.futures.ProcessPoolExecutor(1)
            calls = 10
        with pool:
            await executor_workload(pool, cpu_call, 0.01, callers=8, calls_each=calls)
            return _for(label)  # asked while the pool is alive, as an app would

    recs = asyncio.run(run())
    figures = [f for f in advised.advisor.pool_figures(time.perf_counter())
               if f.label.startswith(label)]
    assert len(figures) == 1 and figures[0].calls >= 80  # the advisor saw and judged it
    for rec in recs:
        assert rec.suggested is None or rec.suggested <= cores, rec
        assert rec.knob in ("processes", "max_workers"), rec
    if cores >= 2:
        assert [r.knob for r in recs] == ["processes" if kind == "threads" else "max_workers"]


def test_batch_size_converges_within_2x_of_brute_force(advised: asyncwatch.Watch) -> None:
    """Large per-batch overhead: applying the advice until it settles lands within 2x of the
    best size found by trying every size."""
    overhead, per_item, budget = 0.02, 0.000125, 0.07

    async def closed_loop() -> list[int]:
        sizes = [16]
        for _ in range(6):
            size = sizes[-1]
            await batch_workload(size, items=max(400, 10 * size), overhead_s=overhead,
                                 per_item_s=per_item, budget_s=budget)
            recs = _for("batch 'insert'")
            if recs[0].kind == "no_change":
                return sizes
            assert recs[0].knob == "batch_size" and recs[0].suggested is not None, recs
            sizes.append(recs[0].suggested)
        return sizes

    async def brute_force() -> int:
        best, best_rate = 0, 0.0
        for size in (16, 23, 32, 45, 64, 90, 128, 181, 256, 362, 512, 724):
            rate, slowest = await batch_workload(
                size, items=6 * size, overhead_s=overhead, per_item_s=per_item,
                budget_s=budget, name="brute",
            )
            if slowest <= budget and rate > best_rate:
                best, best_rate = size, rate
        return best

    sizes = asyncio.run(closed_loop())
    assert len(sizes) >= 2, "a 16-item batch with 20 ms overhead should be advised upwards"
    best = asyncio.run(brute_force())
    assert best > 0
    print("closed loop", sizes, "brute force", best)
    assert best / 2 <= sizes[-1] <= best * 2, (sizes, best)


def test_healthy_workload_gets_no_recommendation(advised: asyncwatch.Watch) -> None:
    """A well-sized app (roomy pool, limit above demand, batches near their best, gathers,
    an idle loop) gets no change on any knob, each with its reason."""

    async def app() -> None:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(16)

        async def request(i: int) -> None:
            async with sem:
                await loop.run_in_executor(pool, io_call, 0.002)
                await asyncio.sleep(0.001)

        with concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="roomy") as pool:
            for round_ in range(30):
                await asyncio.gather(*(request(i) for i in range(8)))
                n = 400 - 50 * (round_ % 5)  # mostly at the budget-bound best (400)
                with asyncwatch.batch("healthy", size=n, budget_s=0.07):
                    await asyncio.sleep(0.02 + 0.000125 * n)

    asyncio.run(app())
    assert advised.advisor.pool_figures(time.perf_counter())  # it was measured...
    assert advised.advisor.batch_figures()
    recs = asyncwatch.advise()  # ...and found fine: each knob says so, none is silent
    assert recs and all(r.kind == "no_change" and r.reason for r in recs), recs
    assert {r.knob for r in recs} >= {"max_workers", "batch_size"}
