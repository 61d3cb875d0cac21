"""Loops come and go as they would without asyncwatch: nothing it keeps holds a loop, a dead
loop's figures are folded when it closes or is collected (not when something reads them),
and nothing touches a loop before its constructor has finished."""

from __future__ import annotations

import asyncio
import gc
import os
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import asyncwatch

from .conftest import run_python, wait_for

LOOPS = 60

# Loops dropped unclosed say so from __del__ ("unclosed event loop", and their sockets): a
# warning raised as an error there is an unraisable exception, and pytest's record of it
# would hold the very loop these tests wait to see freed.
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def factories() -> list[Any]:
    out = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - ./scripts/test installs it
        out.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip("no uvloop")))
    else:
        out.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return out


def install(**settings: Any) -> asyncwatch.Watch:
    """Every part that keeps per-loop state on, scanning and beating often."""
    settings.setdefault("raise_errors", True)
    settings.setdefault("deadlock_interval_s", 0.01)
    return asyncwatch.install(metrics_exporters=("none",), block_threshold_s=0.05, **settings)


async def churn() -> None:
    """A little of everything asyncwatch keeps per loop: tasks, timers, locks, a queue, a
    semaphore, gather, the default executor, a task still pending when the loop stops."""
    lock, sem, queue = asyncio.Lock(), asyncio.Semaphore(2), asyncio.Queue[int]()

    async def child(i: int) -> int:
        async with lock:
            await asyncio.sleep(0)
        async with sem:
            await queue.put(i)
        return await queue.get()

    await asyncio.gather(*(child(i) for i in range(4)))
    await asyncio.get_running_loop().run_in_executor(None, sum, [1, 2])
    for _ in range(3):  # a few timer rounds: heartbeats and deadlock scans run meanwhile
        await asyncio.sleep(0.002)
    # Left pending when the loop stops (scanned meanwhile); held by its loop alone, on purpose.
    asyncio.ensure_future(asyncio.Event().wait())  # noqa: RUF006


def alive(refs: list[weakref.ref[Any]]) -> int:
    gc.collect()
    return sum(r() is not None for r in refs)


def all_freed(refs: list[weakref.ref[Any]]) -> Callable[[], bool]:
    # Polled: the watchdog and advisor threads hold a loop for a moment while they look at it.
    return lambda: alive(refs) == 0


@contextmanager
def quiet_loop_errors() -> Iterator[None]:
    """A loop dropped with a task pending logs that from its finalizer: expected here."""
    handler = asyncio.BaseEventLoop.default_exception_handler
    asyncio.BaseEventLoop.default_exception_handler = lambda self, context: None  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        asyncio.BaseEventLoop.default_exception_handler = handler  # type: ignore[method-assign]


# ------------------------------------------------------------------ item 1: loops are freed


@pytest.mark.parametrize("new_loop", factories())
def test_closed_loops_are_freed(new_loop: Callable[[], Any]) -> None:
    """Loops created, run and closed are collected, whatever ran on them."""
    watch = install()
    refs = []
    with quiet_loop_errors():
        for _ in range(LOOPS):
            loop = new_loop()
            loop.set_exception_handler(lambda loop, context: None)
            loop.run_until_complete(churn())
            loop.close()
            refs.append(weakref.ref(loop))
            del loop
        wait_for(all_freed(refs), what=f"{alive(refs)} of {LOOPS} closed loops to be freed")
    assert watch.tasks.loop_count >= LOOPS  # they were instrumented


def test_dropped_loops_are_freed_with_their_descriptors() -> None:
    """Loops the app drops without ``close()`` are collected and their selectors and
    self-pipes closed, as with bare asyncio (3 descriptors each)."""
    install()
    fds = len(os.listdir("/proc/self/fd"))
    refs = []
    with quiet_loop_errors():
        for _ in range(LOOPS):
            loop = asyncio.new_event_loop()
            loop.run_until_complete(churn())
            refs.append(weakref.ref(loop))
            del loop
        wait_for(all_freed(refs), what=f"{alive(refs)} of {LOOPS} dropped loops to be freed")
    assert len(os.listdir("/proc/self/fd")) - fds < 10  # bare: the same few (thread pools)


UVLOOP_DROPPED = """
import asyncio, gc, os, sys, warnings, weakref
import uvloop
if sys.argv[1] == "installed":
    import asyncwatch
    asyncwatch.install(metrics_exporters=("none",), deadlock_interval_s=0.01)
refs = []
async def main():
    for _ in range(3):
        await asyncio.sleep(0.002)
fds = len(os.listdir("/proc/self/fd"))
for _ in range(40):
    loop = uvloop.new_event_loop()
    loop.run_until_complete(main())
    refs.append(weakref.ref(loop))
    del loop
warnings.simplefilter("ignore")
gc.collect()
print(sum(r() is not None for r in refs), len(os.listdir("/proc/self/fd")) - fds)
"""


def test_uvloop_dropped_loops_cost_what_they_cost_bare() -> None:
    """uvloop keeps a loop dropped without ``close()`` alive by itself (its libuv handles
    reference it): asyncwatch adds no loop and no descriptor to that."""
    pytest.importorskip("uvloop")
    figures = {}
    for how in ("bare", "installed"):
        done = run_python(UVLOOP_DROPPED, how)
        assert done.returncode == 0, done.stderr
        kept, fds = map(int, done.stdout.split())
        figures[how] = (kept, fds)
    assert figures["installed"] == figures["bare"]


@pytest.mark.parametrize("new_loop", factories())
def test_asyncio_run_does_not_keep_its_loop(new_loop: Callable[[], Any]) -> None:
    """After ``asyncio.run()`` (a Runner) returns, its loop is gone: at once, and after many
    runs none survives (the idea of anyio's test_asyncio_run_does_not_leak_event_loop)."""
    install()
    refs: list[weakref.ref[Any]] = []

    async def main() -> None:
        refs.append(weakref.ref(asyncio.get_running_loop()))
        await churn()

    with quiet_loop_errors():
        for _ in range(LOOPS):
            with asyncio.Runner(loop_factory=new_loop) as runner:
                runner.run(main())
        wait_for(all_freed(refs), what=f"{alive(refs)} of {LOOPS} loops of asyncio.run")


def test_asyncio_run_loop_is_gone_right_after() -> None:
    """The plain ``asyncio.run`` path, checked right after each call."""
    install()
    refs: list[weakref.ref[Any]] = []

    async def main() -> None:
        refs.append(weakref.ref(asyncio.get_running_loop()))
        await churn()

    with quiet_loop_errors():
        for _ in range(5):
            asyncio.run(main())
            wait_for(all_freed(refs), what="the loop of asyncio.run to be freed")


def test_uninstall_cancels_what_it_scheduled_without_holding_the_loop() -> None:
    """The heartbeat and scan timers are found and cancelled by uninstall() although
    asyncwatch holds them only weakly (the loop owns them)."""
    install()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(churn())
        ours = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        assert {type(getattr(h._callback, "__self__", h)).__name__ for h in ours} >= {
            "Heartbeat", "DeadlockDetector"
        }
        asyncwatch.uninstall(timeout_s=2)
        assert all(h.cancelled() for h in ours)
    finally:
        loop.close()


# ------------------------------------------------------------------ item 2: folded at once


def coroutines(count: int) -> list[Callable[[], Any]]:
    """``count`` coroutine functions with distinct names."""
    out = []
    for i in range(count):
        namespace: dict[str, Any] = {"__name__": "jobs"}
        exec(f"async def job_{i}():\n    return {i}\n", namespace)
        out.append(namespace[f"job_{i}"])
    return out


async def run_all(jobs: list[Callable[[], Any]]) -> None:
    await asyncio.gather(*(job() for job in jobs))


def test_closed_loops_are_folded_without_a_reader() -> None:
    """Nothing reads the metrics: each loop's per-coroutine figures are folded when it
    closes (asyncio.run) or is collected (dropped), so none is left behind per dead loop;
    the counts come out whole when something does read them."""
    watch = install()
    jobs = coroutines(20)
    for _ in range(10):
        asyncio.run(run_all(jobs))
    assert watch.recorder._shards == []  # no reader ran, yet nothing is left per loop
    with quiet_loop_errors():
        for _ in range(10):
            loop = asyncio.new_event_loop()
            loop.run_until_complete(run_all(jobs))
            del loop
        wait_for(lambda: alive([]) == 0 and watch.recorder._shards == [],
                 what="the dropped loops' shards to be folded")
    stats = asyncwatch.stats()
    for job in jobs:
        assert stats.coroutines[f"jobs.{job.__qualname__}"].created == 20


def test_retained_memory_does_not_grow_with_dead_loops() -> None:
    """The memory asyncwatch keeps for dead loops is the same after 10 and after 60 loops,
    with 30 coroutine names each and nothing reading (was about 8.6 KiB per name per loop)."""
    import tracemalloc

    install()
    jobs = coroutines(30)

    def kept_after(loops: int) -> int:
        for _ in range(loops):
            asyncio.run(run_all(jobs))
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        kept_after(10)  # names, code caches and the retired totals exist from here on
        first = kept_after(10)
        later = kept_after(50)
    finally:
        tracemalloc.stop()
    # 50 more loops at 8.6 KiB x 30 names would be 12.6 MiB; allow 1% of that for noise
    assert later - first < 128 * 1024, (first, later)


# ------------------------------------------------------------------ item 3: not before it is built


class LateClockLoop(asyncio.SelectorEventLoop):
    """A loop whose ``call_at`` reads an attribute its own ``__init__`` sets after the base
    constructor returned (anything scheduling a timer from inside that constructor fails).
    Its clock is the stdlib's, so asyncwatch does schedule its scans on it (a loop that
    replaces ``time()`` gets no timer of ours at all: see test_stdlib_compat)."""

    def __init__(self) -> None:
        super().__init__()
        self.timers_scheduled = 0

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        self.timers_scheduled += 1
        return super().call_at(when, callback, *args, context=context)


def test_loop_subclass_is_not_touched_before_its_init_finished() -> None:
    """150 such loops: no internal error, and the deadlock detector is still scanning on
    its timer afterwards (it finds a deadlock on the next one)."""
    watch = install(raise_errors=False, deadlock_interval_s=0.01)
    for _ in range(150):
        loop = LateClockLoop()
        try:
            loop.run_until_complete(churn())
        finally:
            loop.set_exception_handler(lambda loop, context: None)
            loop.close()
    assert watch.faults.counts == {}
    assert watch.deadlocks.active
    tasks: dict[str, asyncio.Task[None]] = {}

    async def wait_on(other: str) -> None:
        await asyncio.sleep(0)
        await tasks[other]

    async def scenario() -> None:
        tasks["a"] = asyncio.create_task(wait_on("b"))
        tasks["b"] = asyncio.create_task(wait_on("a"))
        deadline = time.monotonic() + 20
        while not asyncwatch.findings("deadlock"):
            assert time.monotonic() < deadline, "no deadlock found by the timed scans"
            await asyncio.sleep(0.01)  # polling with a deadline: the scans run meanwhile

    loop = LateClockLoop()
    loop.set_exception_handler(lambda loop, context: None)
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
        gc.collect()
    assert watch.faults.counts == {}


def test_attached_when_the_loop_first_runs() -> None:
    """A loop made while installed gets its task factory at once (tasks created before it
    runs are counted) and its heartbeat and scans only once it runs."""
    watch = install()
    loop = asyncio.new_event_loop()
    try:
        assert watch.tasks.hook_of(loop) is not None
        assert not loop._scheduled and not loop._ready  # type: ignore[attr-defined]
        assert watch.loops.monitor_of(loop) is None
        early = loop.create_task(asyncio.sleep(0))
        loop.run_until_complete(early)
        assert watch.loops.monitor_of(loop) is not None
    finally:
        loop.close()


def test_a_stopped_watch_is_freed() -> None:
    """After ``uninstall()`` nothing asyncwatch keeps at module level holds the stopped Watch
    (and through it the recorder, the exporters and every figure it gathered): it is freed
    with its own reference cycles. In a fresh interpreter, so no test harness holds it."""
    code = """if True:
        import asyncio, gc, weakref
        import asyncwatch
        from asyncwatch import _watch

        async def work():
            await asyncio.gather(*(asyncio.sleep(0) for _ in range(50)))

        asyncwatch.install(prometheus_port=0)
        asyncio.run(work())
        ref = weakref.ref(_watch._current)
        asyncwatch.uninstall(timeout_s=2)
        gc.collect()
        watch = ref()
        if watch is None:
            print("freed")
        else:
            holders = [type(r).__name__ for r in gc.get_referrers(*gc.get_referrers(watch))]
            print("kept", sorted(set(holders)))
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "freed", result.stdout
