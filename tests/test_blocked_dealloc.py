"""A block that is the freeing of what a returning task let go, or a garbage collection, is
named as such, with the task's module-qualified coroutine, in the default and the precise
mode; no culprit is ever a frame of asyncio's own (issue 15, point 4).

Freeing a big structure holds the GIL from the first object to the last: the watchdog cannot
sample it, and when it gets in the task has returned (asyncio is scheduling its done
callbacks). The app here builds its records a chunk per step, so the only long hold is the
freeing as its coroutine returns.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import asyncwatch
from asyncwatch._core.stacks import APP, classify
from asyncwatch.loopwatch._blocked import BlockedLoop, LoopMonitor

from . import dealloc_app
from .conftest import collect, marked_line, strict_watch, wait_for
from .test_loopwatch import start_loop

THRESHOLD = 0.01  # low: the freeing below takes several times this even on a loaded machine
MAX_RECORDS = 2_000_000


def free_time(n: int) -> float:
    data: list[Any] = []
    for start in range(0, n, dealloc_app.CHUNK):
        data.extend(dealloc_app.records(start, min(dealloc_app.CHUNK, n - start)))
    began = time.thread_time()
    del data
    return time.thread_time() - began


def records_to_free() -> int:
    """A number of records whose freeing takes 8x the threshold of CPU time on this machine
    (CPU, not wall time: on a loaded machine the wall time is mostly waiting for a CPU)."""
    n = 250_000
    while n < MAX_RECORDS and free_time(n) < 8 * THRESHOLD:
        n *= 2
    return n


def blocks() -> list[BlockedLoop]:
    found = asyncwatch.findings("blocked_loop", grouped=False)
    return [f for f in found if isinstance(f, BlockedLoop) and not f.ongoing]


def run_app(job: Callable[[Callable[[], Awaitable[None]]], Awaitable[Any]]) -> None:
    """Run ``job(settled)`` as task 'parse-job' on a watched loop in a thread, until the
    heartbeat has come back after it (so the block is over and recorded)."""

    async def settled() -> None:
        """Until the loop's heartbeat has run twice more: watched, and back on time."""
        watch = asyncwatch.current()
        assert watch is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        monitor = watch.loops.monitor_of(loop)
        beats = monitor.beats if monitor is not None else 0
        while monitor is None or monitor.beats < beats + 2:
            assert loop.time() < deadline, "the loop is never watched"
            await asyncio.sleep(0.005)
            monitor = watch.loops.monitor_of(loop)

    async def main() -> None:
        await asyncio.create_task(job(settled), name="parse-job")
        await settled()

    thread = start_loop(main)
    thread.join(120)
    assert not thread.is_alive()


# The default mode confirms such a block by the watchdog's late first look once the loop's
# thread lets go of the GIL (issue 15.1, LoopMonitor._held_in_one_call); this file names it.
LATE_LOOK = pytest.mark.skipif(
    not hasattr(LoopMonitor, "_held_in_one_call"),
    reason="the default mode needs the late-look proof of a GIL-held call (issue 15.1)",
)


@pytest.fixture(
    params=[pytest.param(False, marks=LATE_LOOK), True], ids=["default", "precise"]
)
def watch(request: pytest.FixtureRequest, reader: InMemoryMetricReader) -> Iterator[Any]:
    yield from strict_watch(
        reader, block_threshold_s=THRESHOLD, precise_callbacks=request.param
    )


def test_freeing_after_a_task_returned_is_named(
    watch: asyncwatch.Watch, reader: InMemoryMetricReader
) -> None:
    """The block is the deallocation of what parse_job let go: said so, with the task and its
    module-qualified coroutine; its culprit is parse_job's own line, not asyncio's."""
    n = records_to_free()

    def named() -> list[BlockedLoop]:
        return [f for f in blocks() if f.task == "parse-job" and "deallocation" in f.summary]

    # Precise mode times every callback. The default mode proves the block by the watchdog's
    # late look, which an overloaded machine can spoil now and then (the OS descheduling the
    # watchdog just as it gets the GIL back): up to three such blocks, one must be named.
    for _ in range(1 if watch.config.precise_callbacks else 3):
        run_app(lambda settled: dealloc_app.parse_job(n, settled))
        try:
            found = wait_for(named, timeout=5, what="the deallocation named")
            break
        except AssertionError:
            continue
    else:
        raise AssertionError(f"no block named as the deallocation: {blocks()}")
    finding = found[0]
    coroutine = "tests.dealloc_app.parse_job"
    assert finding.task == "parse-job"
    assert finding.coroutine == coroutine
    assert (
        f"by objects being freed after task 'parse-job' running {coroutine} returned"
        in finding.summary
    ), finding.summary
    assert finding.cause == "deallocation"
    assert finding.culprit is not None
    assert finding.culprit.filename == dealloc_app.__file__
    assert finding.culprit.lineno == marked_line(dealloc_app.__file__, "parse_job def")
    assert finding.duration_s > THRESHOLD
    assert finding.exact == watch.config.precise_callbacks
    # Every block's culprit is a line of the app (here: the tests), never asyncio's, the
    # standard library's or asyncwatch's.
    for block in blocks():
        if block.culprit is not None:
            assert classify(block.culprit.filename) == APP, block
    # The metric names the same function, module-qualified as every culprit is.
    points = collect(reader)["asyncwatch.loop.blocked"]
    labels = {p.attributes["code.function.name"] for p in points}
    assert coroutine in labels, labels


def test_a_long_garbage_collection_is_named(reader: InMemoryMetricReader) -> None:
    """Precise mode: a full collection that holds the loop is said to be one (generation 2),
    timed through gc.callbacks; the culprit is still the app's line, never asyncio's."""
    keep: list[list[int]] = []
    n = 250_000
    while True:  # enough containers that a full collection takes 8x the threshold here
        keep.extend([i] for i in range(len(keep), n))
        began = time.thread_time()
        gc.collect()
        if time.thread_time() - began >= 8 * THRESHOLD or n >= MAX_RECORDS:
            break
        n *= 2
    for _ in strict_watch(reader, block_threshold_s=THRESHOLD, precise_callbacks=True):
        run_app(dealloc_app.collect_job)
        found = wait_for(
            lambda: [f for f in blocks() if "garbage collection" in f.summary],
            what="a block naming the garbage collection",
        )
        assert "generation 2" in found[0].summary, found[0].summary
        assert found[0].cause == "garbage_collection"
        assert found[0].task == "parse-job"
        assert found[0].coroutine == "tests.dealloc_app.collect_job"
        for block in blocks():
            if block.culprit is not None:
                assert classify(block.culprit.filename) == APP, block
    assert len(keep) >= 250_000


def test_gc_times_leaves_other_callbacks_alone() -> None:
    """install() appends one callback; uninstall() removes it and nothing else."""
    from asyncwatch.loopwatch._gctimes import GcTimes

    def theirs(phase: str, info: dict[str, Any]) -> None:
        pass

    before = list(gc.callbacks)
    gc.callbacks.append(theirs)
    times = GcTimes(time.perf_counter, 0.0)
    try:
        times.install()
        times.install()
        assert times.installed
        assert sum(1 for cb in gc.callbacks if cb == times._callback) == 1
        gc.collect(0)
        assert times.recent and times.recent[-1][2] == 0
        began, took, _ = times.recent[-1]
        assert times.during(began, began + took) is not None
        assert times.during(began + took + 1, began + took + 2) is None
        times.uninstall()
        assert gc.callbacks == [*before, theirs]
    finally:
        times.uninstall()
        gc.callbacks.remove(theirs)
    assert gc.callbacks == before


def test_uninstall_removes_the_gc_callback() -> None:
    before = list(gc.callbacks)
    asyncwatch.install(metrics_exporters=("none",))
    assert len(gc.callbacks) == len(before) + 1
    asyncwatch.uninstall()
    assert gc.callbacks == before



async def finishes() -> None:
    return None


def test_a_finished_coroutine_keeps_its_module() -> None:
    """A coroutine that returned has no frame to read its module from: its name comes from
    its code's file (it used to be the bare ``finishes``, the name precise mode printed)."""
    from asyncwatch._core.measure import coroutine_key

    coro = finishes()
    live = coroutine_key(coro)
    with pytest.raises(StopIteration):
        coro.send(None)
    assert coroutine_key(coro) == live == f"{__name__}.finishes"


async def sleeper() -> None:
    await asyncio.sleep(30)  # sleeper waits


def test_callback_site_is_never_asyncio_code() -> None:
    """A block timed after the fact is placed at the app's line: a task suspended inside
    asyncio.sleep is at the line that awaits it (not in asyncio/tasks.py), and a callback of
    asyncio's own has no site at all."""
    from asyncwatch._core.stacks import callback_site

    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(sleeper())
        loop.run_until_complete(asyncio.sleep(0))  # the task is now suspended in sleep()
        site = callback_site(asyncio.Handle(task.cancel, (), loop))
        assert site is not None
        (filename, line, function), module = site
        assert (filename, line, function) == (__file__, marked_line(__file__, "sleeper waits"),
                                              "sleeper")
        assert module == __name__
        future = loop.create_future()
        set_result = asyncio.futures._set_result_unless_cancelled  # type: ignore[attr-defined]
        internal = asyncio.Handle(set_result, (future, None), loop)
        assert callback_site(internal) is None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(task)
    finally:
        loop.close()
