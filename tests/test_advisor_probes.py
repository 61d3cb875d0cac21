"""The advisor's probes: what they measure, that they change nothing, and that uninstall
puts everything back; its outputs (gauges, log lines, loop saturation)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import asyncwatch
from asyncwatch._core import names as n
from asyncwatch._core.measure import FINE_BOUNDS, Histogram
from asyncwatch.advisor import Recommendation
from asyncwatch.advisor._advisor import _limit_window
from asyncwatch.advisor._limits import EXACT_HOLDS
from asyncwatch.advisor._loopload import _lag_p99
from tests.advisor_workloads import cpu_call, executor_workload, io_call
from tests.conftest import collect, point, wait_for

ORIGINAL_RUN_IN_EXECUTOR = asyncio.BaseEventLoop.run_in_executor
ORIGINAL_GATHER = asyncio.gather
ORIGINAL_GATHERING = asyncio.tasks._GatheringFuture  # type: ignore[attr-defined]


@pytest.fixture
def advised(reader: InMemoryMetricReader) -> Iterator[asyncwatch.Watch]:
    """Installed in strict mode with an in-memory reader; evaluations on demand only."""
    watch = asyncwatch.install(
        metrics_exporters=("none",), raise_errors=True, advisor_interval_s=3600,
        metric_readers=[reader],
    )
    yield watch
    asyncwatch.uninstall(timeout_s=2)


def test_uninstall_restores_every_patch() -> None:
    """run_in_executor and gather's outer-future class are the originals afterwards (gather
    itself is never replaced); the loop's selector is never wrapped (the loop's load is read
    from the advisor's thread)."""
    selectors: list[Any] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # the load meter is armed at the loop's first iteration
        selectors.append(loop._selector)  # type: ignore[attr-defined]
        assert "select" not in vars(loop._selector)  # type: ignore[attr-defined]
        asyncwatch.uninstall(timeout_s=2)
        await asyncio.sleep(0)

    asyncwatch.install(metrics_exporters=("none",), raise_errors=True)
    assert asyncio.BaseEventLoop.run_in_executor is not ORIGINAL_RUN_IN_EXECUTOR
    assert asyncio.tasks._GatheringFuture is not ORIGINAL_GATHERING  # type: ignore[attr-defined]
    assert asyncio.gather is ORIGINAL_GATHER
    asyncio.run(main())
    assert asyncio.BaseEventLoop.run_in_executor is ORIGINAL_RUN_IN_EXECUTOR
    assert asyncio.gather is ORIGINAL_GATHER and asyncio.tasks.gather is ORIGINAL_GATHER
    assert asyncio.tasks._GatheringFuture is ORIGINAL_GATHERING  # type: ignore[attr-defined]
    assert "select" not in vars(selectors[0])


def test_advisor_off_patches_nothing() -> None:
    """advisor=False leaves run_in_executor and gather alone."""
    asyncwatch.install(metrics_exporters=("none",), advisor=False)
    assert asyncio.BaseEventLoop.run_in_executor is ORIGINAL_RUN_IN_EXECUTOR
    assert asyncio.gather is ORIGINAL_GATHER
    assert asyncio.tasks._GatheringFuture is ORIGINAL_GATHERING  # type: ignore[attr-defined]
    assert asyncwatch.advise() == []


def test_executor_calls_keep_results_errors_and_context(advised: asyncwatch.Watch) -> None:
    """Results, exceptions and contextvars pass through; queue, run and CPU are measured."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")

    def fails() -> None:
        raise KeyError("boom")

    async def main() -> None:
        var.set("set in the task")
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="probe") as pool:
            assert await loop.run_in_executor(pool, io_call, 0.001) == 0.001
            with pytest.raises(KeyError, match="boom"):
                await loop.run_in_executor(pool, fails)
            assert await loop.run_in_executor(pool, cpu_call, 0.002) > 0
        assert await asyncio.to_thread(var.get) == "set in the task"  # default executor

    asyncio.run(main())
    stats = {s.label: s for s in advised.advisor.executors.executors()}
    probe = stats["ThreadPoolExecutor 'probe'"]
    rows = probe.recent()
    assert len(rows) == 3
    for submitted, started, ended, cpu in rows:
        assert submitted <= started <= ended  # type: ignore[operator]
        assert cpu is not None and cpu >= 0
    assert rows[2][3] >= 0.002  # the CPU-bound call's CPU time, measured in its thread
    assert any(s.default for s in stats.values())  # to_thread went through the default pool


def test_gather_keeps_results_and_unretrieved_errors(advised: asyncwatch.Watch) -> None:
    """gather returns the same results; a failure's 'never retrieved' state is untouched;
    each call site records its fan-out size."""

    async def value(i: int) -> int:
        await asyncio.sleep(0)
        return i

    async def fail() -> None:
        raise ValueError("x")

    async def main() -> Any:
        assert await asyncio.gather(*(value(i) for i in range(5))) == [0, 1, 2, 3, 4]
        results = await asyncio.gather(value(1), fail(), return_exceptions=True)
        assert results[0] == 1 and isinstance(results[1], ValueError)
        outer = asyncio.gather(fail(), value(2))
        await asyncio.wait([outer])
        assert outer._log_traceback  # type: ignore[attr-defined]  # not retrieved by us
        outer.exception()  # retrieve it ourselves, as the app would

    asyncio.run(main())
    sites = advised.advisor.batches.sites()
    assert len(sites) == 3 and all(s.label.startswith("gather at ") for s in sites)
    assert sorted(size for site in sites for size, _, _ in site.recent()) == [2, 5]


def test_batch_api_context_manager_and_decorators(advised: asyncwatch.Watch) -> None:
    """with / async with / sync and async decorators record size and time; failures not."""

    @asyncwatch.batch("sync", size=len)
    def write(rows: list[int]) -> int:
        return sum(rows)

    @asyncwatch.batch("async", size=len)
    async def awrite(rows: list[int]) -> int:
        await asyncio.sleep(0)
        return len(rows)

    async def main() -> None:
        with asyncwatch.batch("cm", size=3):
            pass
        async with asyncwatch.batch("cm", size=4):
            await asyncio.sleep(0)
        with pytest.raises(RuntimeError), asyncwatch.batch("cm", size=5):
            raise RuntimeError("not recorded")
        assert write([1, 2, 3]) == 6
        assert await awrite([1, 2]) == 2

    asyncio.run(main())
    sites = {s.label: [size for size, _, _ in s.recent()] for s in advised.advisor.batches.sites()}
    assert sites["batch 'cm'"] == [3, 4]
    assert sites["batch 'sync'"] == [3]
    assert sites["batch 'async'"] == [2]


def test_batch_and_concurrency_without_asyncwatch_are_no_ops() -> None:
    """Not installed: the helpers still work as context managers and decorators."""
    with asyncwatch.batch("x", size=3), asyncwatch.concurrency("y", limit=2):
        pass

    @asyncwatch.batch("z", size=len)
    def f(items: list[int]) -> int:
        return len(items)

    assert f([1, 2]) == 2
    with pytest.raises(ValueError, match="size"):
        asyncwatch.batch("x", size=-1)
    with pytest.raises(ValueError, match="limit"):
        asyncwatch.concurrency("x", limit=0)


def test_semaphore_holds_and_waits_are_measured_per_level(advised: asyncwatch.Watch) -> None:
    """8 tasks on Semaphore(2): holds binned at level 2, waits counted, limit known."""

    async def main() -> None:
        sem = asyncio.Semaphore(2)

        async def job() -> None:
            for _ in range(5):
                async with sem:
                    await asyncio.sleep(0.002)

        await asyncio.gather(*(job() for _ in range(8)))

    asyncio.run(main())
    (stats,) = [s for s in advised.advisor.limits.limits() if "test_advisor_probes" in s.label]
    assert stats.current_limit() == 2 and stats.max_level == 2
    assert stats.done == 40 and stats.waits > 20
    assert max(stats.holds, key=stats.holds.__getitem__) == 2
    figures = _limit_window(stats.label, stats, None)
    assert figures is not None and figures.holders == pytest.approx(2, abs=0.5)
    assert figures.waiters > figures.holders  # 6 waiting beside 2 holding


def test_semaphore_holds_are_timed_on_a_sample(advised: asyncwatch.Watch) -> None:
    """The first EXACT_HOLDS holds are all timed; after them, most only move counters."""

    async def main() -> None:
        sem = asyncio.Semaphore(4)
        for _ in range(EXACT_HOLDS + 4000):
            async with sem:
                pass

    asyncio.run(main())
    (stats,) = [s for s in advised.advisor.limits.limits() if "test_advisor_probes" in s.label]
    assert stats.done == EXACT_HOLDS + 4000 and stats.waits == 0
    later = stats.sampled - EXACT_HOLDS
    assert 4000 / 16 <= later <= 4000 / 4  # about one in SAMPLE_EVERY
    assert set(stats.holds) == {1}


def test_semaphore_limit_in_force_new_level_measured_and_failures_not_throughput(
    advised: asyncwatch.Watch,
) -> None:
    """Issue 16.3, on real semaphores of one creation site: after 3 objects made with 8 and
    then one with 4, the limit in force is 4 (the old tie-break said 8); the holds at the new
    level are all timed even after EXACT_HOLDS holds (the old sampling left it a handful);
    holds that raise or are marked ``asyncwatch.rejected()`` are counted as failed."""

    def make(limit: int) -> asyncio.Semaphore:
        return asyncio.Semaphore(limit)

    def backend(i: int, fail_every: int) -> None:
        if fail_every and i % fail_every == 0:
            if i % (2 * fail_every) == 0:
                raise RuntimeError("backend said no")
            asyncwatch.rejected()  # a 429: nothing raised, still not throughput

    async def run(sem: asyncio.Semaphore, holds: int, tasks: int, fail_every: int = 0) -> None:
        count = iter(range(holds))

        async def job() -> None:
            for i in count:
                try:
                    async with sem:
                        await asyncio.sleep(0)
                        backend(i, fail_every)
                except RuntimeError:
                    pass

        await asyncio.gather(*(job() for _ in range(tasks)))

    async def main() -> None:
        for _ in range(3):
            await run(make(8), EXACT_HOLDS // 2, 16)
        await run(make(4), 400, 16, fail_every=4)

    asyncio.run(main())
    (stats,) = [s for s in advised.advisor.limits.limits() if "make" in s.label]
    assert stats.current_limit() == 4
    # every hold at the new limit timed (a hold sees ~3-4 holders at once with 4 permits)
    assert sum(c for lvl, c in stats.holds.items() if lvl <= 4) >= 350
    assert stats.sampled >= EXACT_HOLDS + 350
    assert stats.failures == 100  # 1 in 4 of 400: half raised, half marked rejected
    assert 80 <= sum(stats.failed.values()) <= 100
    figures = _limit_window(stats.label, stats, None)
    assert figures is not None and figures.limit == 4
    level = max(stats.failed, key=stats.failed.__getitem__)  # failed holds, scaled like holds
    holds = {lvl: d for lvl, _, d in figures.levels}
    assert dict(figures.failed)[level] / holds[level] == pytest.approx(
        stats.failed[level] / stats.holds[level], abs=0.01)


def test_limit_levels_a_percent_apart_merge_and_every_level_is_listed() -> None:
    """A saturated limit's ramp and drain (255, 256) are one level; the evidence lists all
    the levels measured (the old one only the 6 highest)."""
    from asyncwatch.advisor._limit_model import LimitFigures, limit_advice, merge_levels

    levels = ((255, 2.55, 300), (256, 25.6, 3000),
              *((lvl, lvl / 100, 100) for lvl in (1, 2, 4, 8, 16, 32, 64)))
    merged = merge_levels(levels)
    assert [lv.n for lv in merged] == [1, 2, 4, 8, 16, 32, 64, 256]
    assert merged[-1].holds == 3300
    figures = LimitFigures("sem", 256, levels, 10.0, 256.0, 0.0, 3300, 256)
    (rec,) = limit_advice(figures, min_done=20, max_limit=1000)
    for level in (1, 2, 4, 8, 16, 32, 64, 256):
        assert f"{level} at once:" in rec.evidence


def test_fixed_size_gather_batches_get_the_sizes_to_run_and_history_is_kept(
    advised: asyncwatch.Watch,
) -> None:
    """Issue 16.2 on real calls: ``items[i:i+32]`` fanned out with ``gather`` is seen as a
    batch size of 32 and gets the runs to make by size; an ``asyncwatch.batch`` site that
    moved to another size keeps the batches of the size before past its ring."""
    from asyncwatch.advisor._batches import RING

    async def store(item: int) -> int:
        await asyncio.sleep(0)
        return item

    async def write_all(items: list[int], size: int) -> None:
        for i in range(0, len(items), size):
            await asyncio.gather(*(store(x) for x in items[i:i + size]))

    async def explicit(size: int, batches: int) -> None:
        for _ in range(batches):
            with asyncwatch.batch("rows", size=size):
                await asyncio.sleep(0)

    async def main() -> None:
        await write_all(list(range(1000)), 32)
        await explicit(32, 40)
        await explicit(64, RING + 10)  # the ring now holds only batches of 64

    asyncio.run(main())
    recs = asyncwatch.advise()
    (fan_out,) = [r for r in recs if "write_all" in r.target]
    assert fan_out.kind == "need_data" and fan_out.current == 32, fan_out
    assert "batches of 64 and of 128 items" in (fan_out.need or "")
    (rows,) = advised.advisor.batch_figures()[-1:]
    assert rows.label == "batch 'rows'" and {s for s, _ in rows.batches} == {32, 64}


def test_declared_concurrency_with_backlog(advised: asyncwatch.Watch) -> None:
    """A worker pool declared with concurrency(): holds and queue backlog are measured."""

    async def main() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(30):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                async with asyncwatch.concurrency("runner", limit=3, backlog=queue):
                    await asyncio.sleep(0.002)

        await asyncio.gather(*(worker() for _ in range(3)))

    asyncio.run(main())
    (stats,) = [s for s in advised.advisor.limits.limits() if s.label == "concurrency 'runner'"]
    assert stats.current_limit() == 3 and stats.done == 30
    assert stats.waiter_s > 0  # jobs sat in the queue


def test_advice_is_exported_as_gauges_and_logged_once(
    advised: asyncwatch.Watch, reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    """Suggested, current and gain per target reach the reader; the log says it once and
    says when it is withdrawn."""
    rec = Recommendation("pool X", "max_workers", 2, 16, "about 8x", "figures", "high", 8.0)
    advised.advisor.last = (rec,)
    points = collect(reader)
    attrs = {"asyncwatch__advisor__target": "pool X", "asyncwatch__advisor__knob": "max_workers"}
    assert point(points[n.ADVICE_SUGGESTED.name], **attrs).value == 16
    assert point(points[n.ADVICE_CURRENT.name], **attrs).value == 2
    assert point(points[n.ADVICE_GAIN.name], **attrs).value == 8.0
    with caplog.at_level(logging.INFO, logger="asyncwatch"):
        advised.advisor.log_changes([rec])
        advised.advisor.log_changes([rec])
        advised.advisor.log_changes([])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "max_workers 2 -> 16" in lines[0] and "Evidence: figures" in lines[0]
    assert "withdrawn" in lines[1]


def test_sampler_logs_new_advice_once(caplog: pytest.LogCaptureFixture) -> None:
    """The advisor's own thread logs a new recommendation at INFO, once, with its evidence."""
    watch = asyncwatch.install(metrics_exporters=("none",), raise_errors=True,
                               advisor_window_s=4, advisor_interval_s=0.3)
    try:
        with caplog.at_level(logging.INFO, logger="asyncwatch"):

            async def main() -> None:
                with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="logged") as p:
                    await executor_workload(p, io_call, 0.005, callers=12, calls_each=10)

            asyncio.run(main())

            def lines() -> list[str]:
                return [m for m in (r.getMessage() for r in caplog.records)
                        if m.startswith("asyncwatch advice: ThreadPoolExecutor 'logged'")]

            wait_for(lines, 15, "the advice to be logged")
            first = watch.advisor.last
            wait_for(lambda: watch.advisor.last is not first, 15, "another evaluation")
            (line,) = lines()
        assert "max_workers 2 -> " in line and "Evidence: " in line
        (record,) = [r for r in caplog.records if r.getMessage() == line]
        assert record.levelno == logging.INFO and record.threadName == "asyncwatch-advisor"
    finally:
        asyncwatch.uninstall(timeout_s=2)


def test_saturated_loop_is_advised_more_processes() -> None:
    """A loop kept busy by its own coroutines for a few seconds: 'processes' advice."""
    watch = asyncwatch.install(metrics_exporters=("none",), raise_errors=True,
                               advisor_window_s=4, advisor_interval_s=3600)

    async def main() -> list[Recommendation]:
        end = time.perf_counter() + 2.5  # the workload: 2.5 s of handlers computing

        async def handler() -> None:
            while time.perf_counter() < end:
                cpu_call(0.002)
                await asyncio.sleep(0)

        await asyncio.gather(*(handler() for _ in range(4)))
        return [r for r in asyncwatch.advise() if r.knob == "processes"]

    recs = asyncio.run(main())
    (window,) = watch.advisor.load.windows(4)
    assert window.busy is not None and window.busy >= 0.9
    # loop lag over the window, from the blocked-loop detector's heartbeat: each loop
    # iteration runs four 2 ms steps, so the beat is at least that late at times
    assert window.lag_p99_s is not None and window.lag_p99_s >= 0.002
    if watch.advisor.load.cores >= 2:
        (rec,) = recs
        assert rec.current == 1 and rec.suggested is not None and rec.suggested >= 2
        assert "saturated" in rec.evidence
        assert "loop lag p99 " in rec.evidence


def test_the_lag_p99_of_a_window_is_read_from_two_sparse_snapshots() -> None:
    """Each load sample keeps a copy of the lag histogram's buckets hit (not all 112 counts):
    a window's p99 comes from what grew between its first and last snapshot, so beats
    recorded before the window (one 0.5 s lag here) do not count."""
    lag = Histogram()
    lag.add(0.5)
    for _ in range(98):
        lag.add(0.0001)
    first = lag.bins.copy()
    for _ in range(990):
        lag.add(0.0001)
    for _ in range(20):
        lag.add(0.03)
    last = lag.bins.copy()
    assert len(last) == 3  # sparse
    p99 = _lag_p99(first, last)
    assert p99 is not None
    assert 0.02 < p99 <= 0.04  # the 0.03 s beats' bucket, not the 0.5 s one before
    assert _lag_p99(None, last) is None
    assert FINE_BOUNDS[-1] >= 0.5


def test_advisor_tracks_semaphores_without_deadlock_detection() -> None:
    """deadlock_detection=False with the advisor on: semaphores measured, no scans."""
    watch = asyncwatch.install(metrics_exporters=("none",), raise_errors=True,
                               deadlock_detection=False)

    async def main() -> None:
        sem = asyncio.Semaphore(1)
        for _ in range(3):
            async with sem:
                await asyncio.sleep(0)

    asyncio.run(main())
    assert not watch.deadlocks.active
    assert [s.done for s in watch.advisor.limits.limits()] == [3]


def test_console_advice_command_renders_real_advice(advised: asyncwatch.Watch) -> None:
    """The console's `advice` shows each change with its evidence (`-b`: without)."""
    from click.testing import CliRunner

    from asyncwatch.console._commands import do_advice
    from tests.advisor_workloads import executor_workload

    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="shown") as pool:
            await executor_workload(pool, io_call, 0.005, callers=12, calls_each=10)

    asyncio.run(main())
    obj = type("Monitor", (), {"watch": advised})()
    out = CliRunner().invoke(do_advice, [], obj=obj).output
    assert "* ThreadPoolExecutor 'shown'" in out
    assert "max_workers: 2 -> " in out and "evidence: " in out
    assert "set max_workers from 2 to" in out
    brief = CliRunner().invoke(do_advice, ["-b"], obj=obj).output
    assert "max_workers: 2 -> " in brief and "evidence: " not in brief


async def until(predicate: Any, timeout: float = 20.0) -> None:
    """Poll ``predicate`` on the loop (yielding to it) until true, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)  # polling with a deadline, letting the loop run


def test_semaphores_pools_and_gates_are_metrics_per_site(
    advised: asyncwatch.Watch, reader: InMemoryMetricReader
) -> None:
    """Issue 16.7: while work is held up, the metrics show it per site: permits in use and
    the limit, waits and wait time; a thread pool's calls running and queued and their
    queue wait; a rate gate's passes (requests, tokens), limits, wait time and waiters."""
    release = asyncio.Event()
    seen: dict[str, list[Any]] = {}

    def gated_site() -> asyncio.Semaphore:
        return asyncio.Semaphore(2)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sem = gated_site()
        gate_open = asyncio.Event()

        async def holder() -> None:
            async with sem:
                await release.wait()

        async def caller(tokens: int) -> None:
            async with asyncwatch.gate("llm", rpm=600, tpm=60_000, tokens=tokens):
                await gate_open.wait()  # the app's own limiter, closed for now

        tasks = [asyncio.create_task(holder()) for _ in range(5)]
        callers = [asyncio.create_task(caller(100)) for _ in range(3)]
        blocker = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metered") as pool:
            calls = [loop.run_in_executor(pool, blocker.wait) for _ in range(3)]
            await until(lambda: sem.locked() and len(sem._waiters or ()) == 3)
            await until(lambda: any(p.label == "ThreadPoolExecutor 'metered'" and p.started
                                    for p in advised.advisor.executors.executors()))
            seen.update(collect(reader))
            blocker.set()
            await asyncio.gather(*calls)
        gate_open.set()
        release.set()
        await asyncio.gather(*tasks, *callers)
        seen["after"] = [collect(reader)]

    asyncio.run(main())
    site = [p for p in seen["asyncwatch.semaphore.in_use"]
            if "gated_site" in p.attributes[n.RESOURCE]]
    assert [p.value for p in site] == [2]
    label = site[0].attributes[n.RESOURCE]
    assert point(seen["asyncwatch.semaphore.limit"], asyncwatch__resource=label).value == 2
    pool = {"asyncwatch__resource": "ThreadPoolExecutor 'metered'"}
    assert point(seen["asyncwatch.pool.in_use"], **pool).value == 1
    assert point(seen["asyncwatch.pool.queued"], **pool).value == 2
    assert point(seen["asyncwatch.pool.workers"], **pool).value == 1
    assert point(seen["asyncwatch.gate.waiting"], asyncwatch__resource="llm").value == 3
    after = seen["after"][0]
    waits = point(after["asyncwatch.semaphore.waits"], asyncwatch__resource=label)
    assert waits.value == 3
    assert point(after["asyncwatch.semaphore.wait.time"], asyncwatch__resource=label).value > 0
    assert point(after["asyncwatch.pool.wait.time"], **pool).value > 0
    assert point(after["asyncwatch.semaphore.in_use"], asyncwatch__resource=label).value == 0
    tokens = point(after["asyncwatch.gate.passes"], asyncwatch__resource="llm",
                   asyncwatch__gate__unit="tokens")
    assert tokens.value == 300
    assert point(after["asyncwatch.gate.limit"], asyncwatch__resource="llm",
                 asyncwatch__gate__unit="requests").value == 600
    assert point(after["asyncwatch.gate.wait.time"], asyncwatch__resource="llm").value > 0
    assert point(after["asyncwatch.gate.waiting"], asyncwatch__resource="llm").value == 0


def test_gate_names_are_capped_with_an_overflow(advised: asyncwatch.Watch) -> None:
    """150 gate names: 100 series and _OTHER, never more; bad arguments fail fast."""
    from asyncwatch.advisor._gates import MAX_GATES

    async def main() -> None:
        for i in range(150):
            async with asyncwatch.gate(f"gate-{i}", rpm=60):
                pass

    asyncio.run(main())
    names = {attrs[n.RESOURCE] for m, attrs, _, _ in advised.advisor.gates.points()}
    assert len(names) == MAX_GATES + 1 and n.OVERFLOW in names
    for bad in ({"rpm": 0}, {"tpm": -1}, {"tokens": -1}, {"tokens": 1.5}):
        with pytest.raises(ValueError, match=r"asyncwatch\.gate"):
            asyncwatch.gate("x", **bad)  # type: ignore[arg-type]


def test_queue_depth_and_waits_are_metrics_per_site(
    advised: asyncwatch.Watch, reader: InMemoryMetricReader
) -> None:
    """Issue 16.7: a bounded queue whose consumer lags shows its depth and the producers
    waiting to put; an empty one its consumers waiting to get; values and errors go through
    unchanged, and uninstall puts get/put back."""
    seen: dict[str, list[Any]] = {}

    def make_jobs() -> asyncio.Queue[int]:
        return asyncio.Queue(maxsize=3)

    async def main() -> None:
        jobs = make_jobs()
        empty: asyncio.Queue[int] = asyncio.Queue()
        producers = [asyncio.create_task(jobs.put(i)) for i in range(5)]
        getter = asyncio.create_task(empty.get())
        await until(lambda: jobs.full() and len(jobs._putters) == 2
                    and len(empty._getters) == 1)
        seen.update(collect(reader))
        got = [await jobs.get() for _ in range(5)]
        await asyncio.gather(*producers)
        assert sorted(got) == [0, 1, 2, 3, 4]
        await empty.put(7)
        assert await getter == 7
        getter2 = asyncio.create_task(empty.get())
        await asyncio.sleep(0)
        getter2.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter2
        seen["after"] = [collect(reader)]

    asyncio.run(main())
    depth = [p for p in seen["asyncwatch.queue.depth"] if "make_jobs" in
             p.attributes[n.RESOURCE] or "main" in p.attributes[n.RESOURCE]]
    assert sorted(p.value for p in depth) == [0, 3], [dict(p.attributes) for p in depth]
    jobs_site = next(p.attributes[n.RESOURCE] for p in depth if p.value == 3)
    waiting = point(seen["asyncwatch.queue.waiting"], asyncwatch__resource=jobs_site,
                    asyncwatch__queue__operation="put")
    assert waiting.value == 2
    after = seen["after"][0]
    waited = point(after["asyncwatch.queue.wait.time"], asyncwatch__resource=jobs_site,
                   asyncwatch__queue__operation="put")
    assert waited.value > 0
    assert all(p.value == 0 for p in after["asyncwatch.queue.waiting"])
    asyncwatch.uninstall(timeout_s=2)
    assert asyncio.Queue.get is asyncio.queues.Queue.__dict__["get"]
    assert not hasattr(asyncio.Queue.get, "__wrapped__")
