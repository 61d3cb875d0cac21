"""Closed-loop workloads for the advisor, with a known best, on a virtual clock.

Each workload is a small asyncio app (real ``asyncio.Semaphore``, real ``asyncio.gather``,
asyncwatch's real probes) whose I/O is ``asyncio.sleep`` against a simulated backend. It runs
on ``VirtualLoop``: an event loop whose clock jumps to the next timer instead of waiting, so
a run of seconds of simulated traffic takes a fraction of that in CPU, and gives the same
figures on a loaded 2-core machine as on an idle one (the probes, the advisor's windows and
the semaphore wait times read the same virtual clock; the advisor's sampler thread is
stopped, the advice is evaluated on demand). ``run_closed_loop`` plays a user who applies
each suggestion (or makes the first run a "need data" names) until the advisor says "no
change"; ``sweep`` is the brute force it is judged against.

``benchmarks/advisor_convergence.py`` runs the same workloads in real time.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import selectors
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncwatch


class VirtualClock:
    """Seconds of simulated time; ``advance`` is called by the loop's selector."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on ``clock``: when nothing is ready, time jumps to the next timer."""

    def __init__(self, clock: VirtualClock) -> None:
        selector = selectors.DefaultSelector()
        real_select = selector.select

        def select(timeout: float | None = None) -> Any:
            events = real_select(0)
            if not events and timeout is not None and timeout > 0:
                clock.now += timeout
            return events

        selector.select = select  # type: ignore[method-assign]
        super().__init__(selector)
        self._virtual = clock

    def time(self) -> float:
        return self._virtual.now


@contextmanager
def virtual_watch(window_s: float) -> Iterator[tuple[asyncwatch.Watch, VirtualClock]]:
    """asyncwatch installed with every advisor clock on one virtual clock."""
    from asyncwatch import _watch
    from asyncwatch.advisor import _advisor, _batches, _limits
    from asyncwatch.sync import _tracker as _primitives

    clock = VirtualClock()
    saved = (_advisor.clock, _batches.clock, _limits.clock, _watch.PrimitiveTracker)
    _advisor.clock = _batches.clock = _limits.clock = clock
    _watch.PrimitiveTracker = functools.partial(  # type: ignore[misc]
        _primitives.PrimitiveTracker, clock=clock)
    state = random.getstate()
    random.seed(16)  # the semaphore probe's sampling countdown
    try:
        watch = asyncwatch.install(
            metrics_exporters=("none",), raise_errors=True, advisor_interval_s=3600,
            advisor_window_s=window_s, loop_watch=False, deadlock_detection=False,
        )
        try:
            watch.advisor._stop.set()  # advice on demand only, at virtual times
            yield watch, clock
        finally:
            asyncwatch.uninstall(timeout_s=2)
    finally:
        _advisor.clock, _batches.clock, _limits.clock, _watch.PrimitiveTracker = saved
        random.setstate(state)


def run_virtual(clock: VirtualClock, main: Callable[[], Any]) -> Any:
    """Run ``main()`` on a fresh ``VirtualLoop``."""
    with asyncio.Runner(loop_factory=lambda: VirtualLoop(clock)) as runner:
        return runner.run(main())


# ---------------------------------------------------------------- backends


@dataclass
class Backend:
    """A service with ``capacity`` requests at once, each taking ``base_s``.

    ``overload``: what happens past the capacity. ``"queue"``: requests share it (latency
    grows with the load, throughput stays flat). ``"explode"``: latency grows with the
    square of the overload (up to 40x), and a share (n - capacity) / n of the requests is
    answered 429 after ``reject_s`` (the client marks them ``asyncwatch.rejected()`` and
    retries).
    """

    capacity: int
    base_s: float
    overload: str
    reject_s: float = 0.02
    seed: int = 16
    inflight: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    async def call(self) -> bool:
        self.inflight += 1
        n = self.inflight
        try:
            over = n / self.capacity
            if self.overload == "explode" and over > 1:
                if self.rng.random() < (n - self.capacity) / n:
                    await asyncio.sleep(self.reject_s)
                    return False
                await asyncio.sleep(self.base_s * min(over * over, 40.0))
            else:
                await asyncio.sleep(self.base_s * max(1.0, over))
            return True
        finally:
            self.inflight -= 1


def make_limit(limit: int) -> asyncio.Semaphore:
    """The app's semaphore: one creation site for every run (the advisor's target)."""
    return asyncio.Semaphore(limit)


async def limit_app(backend: Backend, limit: int, *, clients: int, seconds: float) -> float:
    """``clients`` tasks call the backend through ``Semaphore(limit)`` for ``seconds``,
    retrying 429s; successful calls per second. At the end the tasks still waiting for the
    semaphore are cancelled (they leave without a hold), those holding it finish their call."""
    loop = asyncio.get_running_loop()
    sem = make_limit(limit)
    end = loop.time() + seconds
    ok = 0
    waiting: set[asyncio.Task[None]] = set()

    async def client() -> None:
        nonlocal ok
        task = asyncio.current_task()
        assert task is not None
        while loop.time() < end:
            waiting.add(task)
            await sem.acquire()
            waiting.discard(task)
            try:
                success = await backend.call()
                if not success:
                    asyncwatch.rejected()
            finally:
                sem.release()
            ok += success and loop.time() <= end

    tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
    await asyncio.sleep(seconds)
    for task in list(waiting):
        task.cancel()
    await asyncio.wait(tasks)
    return ok / seconds


def batch_cost(n: int) -> float:
    """One round trip with ``n`` items: 20 ms + 0.1 ms per item + a term growing with the
    batch (memory): the most items per second at about 225 items."""
    return 0.02 + 0.0001 * n + 0.02 / 225**2 * n * n


async def write_chunks(items: list[int], size: int) -> None:
    """The app's writer: ``items[i:i+size]``, each chunk fanned out with ``gather``."""

    async def store(_item: int, n: int) -> None:
        await asyncio.sleep(batch_cost(n))  # the chunk's round trip, shared by its items

    for i in range(0, len(items), size):
        chunk = items[i:i + size]
        await asyncio.gather(*(store(x, len(chunk)) for x in chunk))


async def batch_app(size: int, *, seconds: float) -> float:
    """Write lists of 1,000 items in chunks of ``size`` for ``seconds``: items per second."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    began, written = loop.time(), 0
    while loop.time() < end:
        await write_chunks(list(range(1000)), size)
        written += 1000
    return written / (loop.time() - began)


# ---------------------------------------------------------------- the user


@dataclass
class Step:
    """One run at a setting and what the advisor said after it."""

    setting: int
    measured: float  # throughput at that setting (the workload's own count)
    kind: str
    suggested: int | None
    confidence: str
    gain: float | None
    said: str


@dataclass
class Workload:
    """A knob, a start, the run at a setting, and the target's name in the advice."""

    name: str
    start: int
    run: Callable[[int], Callable[[], Any]]  # setting -> coroutine function of the run
    target: str  # a substring of the recommendation's target
    sweep_settings: tuple[int, ...]


def next_setting(rec: asyncwatch.Recommendation) -> int | None:
    """What the user does: apply the suggestion, or make the first run the advisor names."""
    if rec.kind == "advice":
        return rec.suggested
    if rec.kind == "need_data":
        found = re.findall(r"(?:limit of|batches of) (\d+)", rec.need or "")
        return int(found[0]) if found else None
    return None


@contextmanager
def real_watch(window_s: float) -> Iterator[tuple[asyncwatch.Watch, None]]:
    """asyncwatch installed as an app would (real time, the sampler thread running)."""
    watch = asyncwatch.install(metrics_exporters=("none",), advisor_interval_s=3600,
                               advisor_window_s=window_s)
    try:
        yield watch, None
    finally:
        asyncwatch.uninstall(timeout_s=2)


def _run(clock: VirtualClock | None, main: Callable[[], Any]) -> Any:
    return run_virtual(clock, main) if clock is not None else asyncio.run(main())


def run_closed_loop(w: Workload, *, window_s: float, max_steps: int = 8,
                    virtual: bool = True) -> list[Step]:
    """Apply the advice until "no change" (or ``max_steps``); every run and its advice."""
    steps: list[Step] = []
    with (virtual_watch if virtual else real_watch)(window_s) as (_, clock):
        setting = w.start
        for _ in range(max_steps):
            measured = _run(clock, w.run(setting))
            if clock is not None:
                clock.now += 0.001
            recs = [r for r in asyncwatch.advise() if w.target in r.target]
            assert len(recs) == 1, recs
            (rec,) = recs
            steps.append(Step(setting, measured, rec.kind, rec.suggested, rec.confidence,
                              rec.gain, rec.summary))
            nxt = next_setting(rec)
            if nxt is None:
                break
            setting = nxt
    return steps


def sweep(w: Workload, *, virtual: bool = True) -> dict[int, float]:
    """Brute force: the workload's throughput at every setting of its sweep."""
    out = {}
    for setting in w.sweep_settings:
        if virtual:
            with virtual_watch(3600) as (_, clock):
                out[setting] = run_virtual(clock, w.run(setting))
        else:
            out[setting] = asyncio.run(w.run(setting)())
    return out


def within(steps: list[Step], best: float, ratio: float = 1.5) -> int | None:
    """The first step whose run was within ``ratio`` of the best (None: never)."""
    return next((i for i, s in enumerate(steps) if s.measured * ratio >= best), None)


def table(rows: list[tuple[Workload, list[Step], dict[int, float]]]) -> str:
    """The convergence table (markdown)."""
    out = ["| workload | brute-force best (throughput/s) | runs, each with the advice it got "
           "(throughput/s) [confidence] | within 1.5x of best after | ends with |",
           "|---|---|---|---|---|"]
    for w, steps, brute in rows:
        best_at = max(brute, key=brute.__getitem__)
        path = " -> ".join(
            f"{s.setting} ({s.measured:,.0f})" + (
                f" [{s.confidence}]" if s.kind == "advice" else
                " [need data]" if s.kind == "need_data" else "")
            for s in steps)
        reached = within(steps, brute[best_at])
        last = steps[-1]
        end = (f"no change at {last.setting}" if last.kind == "no_change" else
               f"{last.kind} at {last.setting}")
        out.append(f"| {w.name} | {best_at} ({brute[best_at]:,.0f}) | {path} | "
                   f"{'never' if reached is None else f'{reached} steps'} | {end} |")
    return "\n".join(out)


def workloads() -> list[Workload]:
    """The closed-loop suite (issue 16): limit and batch shapes with a known best."""

    def limit_run(backend: Callable[[], Backend], clients: int,
                  seconds: float) -> Callable[[int], Callable[[], Any]]:
        def run(limit: int) -> Callable[[], Any]:
            return lambda: limit_app(backend(), limit, clients=clients, seconds=seconds)

        return run

    levels = (1, 2, 4, 8, 12, 16, 20, 24, 32, 48, 64, 128, 256)
    return [
        Workload(
            "over-provisioned semaphore (256; latency explodes past 20, 429s + retries)", 256,
            limit_run(lambda: Backend(20, 0.05, "explode"), 256, 2.0), "make_limit", levels),
        Workload(
            "under-provisioned semaphore (2; backend capacity 16)", 2,
            limit_run(lambda: Backend(16, 0.05, "queue"), 64, 2.0), "make_limit", levels),
        Workload(
            "fixed-size batches (items[i:i+32] via gather; best ~225)", 32,
            lambda size: lambda: batch_app(size, seconds=3.0), "write_chunks",
            (16, 32, 64, 128, 180, 225, 256, 320, 512)),
    ]


# ---------------------------------------------------------------- pools (a cost model)


@dataclass(frozen=True)
class PoolModel:
    """A pool of ``callers`` tasks each calling through an executor in a loop; each call
    holds a CPU (for threads: the GIL) for ``cpu_s`` and blocks for ``block_s``.

    Executor threads run on the wall clock, so this workload is a cost model rather than an
    app: ``figures`` gives what the probes would measure over ``seconds``. Threads: calls
    overlap while blocked, their CPU parts are serialised by the GIL. Process workers: one
    CPU each, up to ``cores``.
    """

    cpu_s: float
    block_s: float
    callers: int
    cores: int
    seconds: float = 10.0

    def throughput(self, workers: int, processes: bool) -> float:
        run = self.cpu_s + self.block_s
        cpu_cap = (self.cores if processes else 1.0) / self.cpu_s
        return min(workers / run, cpu_cap, self.callers / run)

    def figures(self, workers: int, processes: bool) -> Any:
        from asyncwatch.advisor._pool_model import PoolFigures

        x = self.throughput(workers, processes)
        latency = self.callers / x  # Little's law: every caller is in the pool
        busy = min(workers, self.callers)
        run = busy / x  # a worker holds a call this long (stretched when the GIL is full)
        wait = max(0.0, latency - run)
        calls = round(x * self.seconds)
        label = "ProcessPoolExecutor" if processes else "ThreadPoolExecutor 'mixed'"
        return PoolFigures(label, not processes, workers, calls, self.seconds,
                           None if processes else wait, None if processes else run,
                           latency, self.cpu_s, self.cores)


def pool_closed_loop(model: PoolModel, *, workers: int = 1,
                     max_steps: int = 8) -> list[Step]:
    """Apply the pool advice (threads, or a process pool) until "no change"."""
    from asyncwatch.advisor._pool_model import pool_advice

    steps: list[Step] = []
    processes = False
    for _ in range(max_steps):
        measured = model.throughput(workers, processes)
        (rec,) = pool_advice(model.figures(workers, processes), min_calls=50,
                             max_threads=128)
        name = f"{'processes' if processes else 'threads'} {workers}"
        steps.append(Step(workers if not processes else -workers, measured, rec.kind,
                          rec.suggested, rec.confidence, rec.gain, f"{name}: {rec.summary}"))
        if rec.kind != "advice" or rec.suggested is None:
            break
        processes = processes or rec.knob == "processes"
        workers = rec.suggested
    return steps


def pool_sweep(model: PoolModel) -> dict[int, float]:
    """Brute force: threads 1-64 (positive keys), process pools 1-cores (negative keys)."""
    out = {w: model.throughput(w, False) for w in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)}
    out.update({-p: model.throughput(p, True) for p in range(1, model.cores + 1)})
    return out
