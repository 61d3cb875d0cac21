"""Never cry wolf: healthy apps with long idle waits give zero deadlock or stuck findings."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import threading
from typing import Any

import pytest

import asyncwatch
from asyncwatch.deadlock._scanstate import PROBED_TYPES
from asyncwatch.testing import scan, settle

from .deadlock_helpers import install

CONNECTIONS = 1000


def quiet_scans(watch: asyncwatch.Watch, clock: Any, rounds: int = 12) -> list[Any]:
    """Scan until every wait has been judged many thresholds long; return all findings."""
    made = list(scan())
    made += scan()
    for _ in range(rounds):
        clock.advance(watch.deadlocks.stuck_after_s * 20)
        made += scan()
    return made


async def test_server_with_idle_keepalive_connections() -> None:
    """A real asyncio server holding 1,000 idle keep-alive connections: nothing is stuck."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * CONNECTIONS + 256
    if soft < wanted:  # two sockets per connection in this one process
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    watch, clock = install()
    served = 0
    all_in = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
        if served == CONNECTIONS:
            all_in.set()
        try:
            while line := await reader.readline():  # keep-alive: wait for the next request
                writer.write(line)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    serving = asyncio.create_task(server.serve_forever())
    clients = []
    for _ in range(CONNECTIONS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        clients.append((reader, writer))
    await all_in.wait()
    echoes = await asyncio.gather(*(reader.readline() for reader, _ in clients))
    assert set(echoes) == {b"hello\n"}
    listeners = [asyncio.create_task(reader.read(1)) for reader, _ in clients]  # client side
    await settle()

    made = quiet_scans(watch, clock)
    waiting = [t for t in asyncio.all_tasks() if t._fut_waiter is not None]  # type: ignore[attr-defined]
    for _, writer in clients:
        writer.close()
    await asyncio.gather(*listeners, return_exceptions=True)
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    server.close()
    await server.wait_closed()
    assert len(waiting) > 2 * CONNECTIONS  # the scans really saw the idle connections
    assert made == []
    # no deadlock or stuck-task finding (the watchdog may report the test's own set-up of
    # 1,000 connections holding the loop on a loaded machine; that is not this test's subject)
    assert [f for f in asyncwatch.findings() if f.kind != "blocked_loop"] == []


async def worker(queue: asyncio.Queue[int], done: list[int]) -> None:
    while True:
        done.append(await queue.get())
        queue.task_done()


async def producer(queue: asyncio.Queue[int], stop: asyncio.Event) -> None:
    for i in range(10):
        await queue.put(i)
    await queue.join()
    await stop.wait()  # alive, and may put more when woken


class Service:
    """A queue held by an app object, fed by a callback the loop will run later."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)

    def feed(self) -> None:
        self.queue.put_nowait(1)


def start_pools(stop: asyncio.Event, done: list[int]) -> list[asyncio.Task[None]]:
    """The app: queues referenced only by its own tasks, objects and timers (not the test)."""
    queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(3)]
    tasks = [asyncio.create_task(worker(q, done)) for q in queues for _ in range(5)]
    tasks += [asyncio.create_task(producer(q, stop)) for q in queues]
    service = Service()
    tasks += [asyncio.create_task(worker(service.queue, done)) for _ in range(3)]
    asyncio.get_running_loop().call_later(3600, service.feed)
    return tasks


async def test_worker_pools_on_live_queues() -> None:
    """Workers idle on queues whose producers are alive (waiting, or a timer callback)."""
    watch, clock = install()
    stop = asyncio.Event()
    done: list[int] = []
    tasks = start_pools(stop, done)
    await settle(20)
    assert len(done) == 30

    made = quiet_scans(watch, clock)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert watch.deadlocks.checks >= 5  # four queues and the stop event were each judged
    assert made == []


# The app of the next test, at module level so the test's own frame holds none of it.


async def sleeper() -> None:
    await asyncio.sleep(3600)


async def holds_lock(lock: asyncio.Lock) -> None:
    async with lock:
        await asyncio.sleep(3600)


async def wants_lock(lock: asyncio.Lock) -> None:
    async with lock:
        pass


async def group() -> None:
    async with asyncio.TaskGroup() as tg:
        for _ in range(3):
            tg.create_task(sleeper())


async def timed() -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), 3600)


async def under_timeout() -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(3600):
            await asyncio.Future()


async def forever() -> None:
    await asyncio.Future()  # the documented way to run forever


async def forever_event() -> None:
    await asyncio.Event().wait()


async def in_thread(release: threading.Event) -> None:
    await asyncio.get_running_loop().run_in_executor(None, release.wait)


async def until_signal(shutdown: asyncio.Event) -> None:
    await shutdown.wait()


async def notifier(cond: asyncio.Condition) -> None:
    await asyncio.sleep(3600)
    async with cond:
        cond.notify_all()


async def listener(cond: asyncio.Condition) -> None:
    async with cond:
        await cond.wait()


async def parent() -> None:
    await asyncio.gather(asyncio.create_task(sleeper()), asyncio.shield(asyncio.sleep(3600)))


def start_waiters(release: threading.Event) -> list[asyncio.Task[None]]:
    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, shutdown.set)
    lock = asyncio.Lock()
    cond = asyncio.Condition()
    coros = [
        sleeper(), holds_lock(lock), wants_lock(lock), group(), timed(), under_timeout(),
        forever(), forever_event(), in_thread(release), until_signal(shutdown),
        notifier(cond), listener(cond), parent(),
    ]
    return [asyncio.create_task(c) for c in coros]


async def test_long_sleeps_timeouts_and_waits_by_design() -> None:
    """Sleeps, timeouts, TaskGroups, held locks, threads, signals and wait-forever idioms."""
    watch, clock = install()
    release = threading.Event()
    tasks = start_waiters(release)
    await settle(10)

    made = quiet_scans(watch, clock)
    release.set()
    asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert watch.deadlocks.checks >= 5  # futures, events, the condition were judged
    assert made == []


def test_uvloop_waits_by_design_and_a_real_stuck_task() -> None:
    """On uvloop (whose timers asyncwatch cannot list) the same waits give nothing, while a
    consumer whose producer died is still found."""
    uvloop = pytest.importorskip("uvloop")
    watch, clock = install()
    release = threading.Event()

    async def crashing(queue: asyncio.Queue[int]) -> None:
        raise RuntimeError("producer crashed")

    async def consuming(queue: asyncio.Queue[int]) -> None:
        await queue.get()

    def start_pair() -> list[asyncio.Task[None]]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        return [asyncio.create_task(crashing(queue)), asyncio.create_task(consuming(queue))]

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: None)  # the crash is on purpose
        tasks = start_waiters(release) + start_pair()
        tasks.append(asyncio.create_task(asyncio.sleep(3600)))
        loop.call_later(3600, release.set)
        await settle(10)
        made = quiet_scans(watch, clock)
        release.set()
        loop.remove_signal_handler(signal.SIGUSR1)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return made

    made = uvloop.run(main())
    assert [f.kind for f in made] == ["stuck_task"]
    assert "no producer is left" in made[0].explanation


async def test_the_cycle_probe_raises_no_false_alarm() -> None:
    """A healthy app full of tasks awaiting tasks: a gather over workers each awaiting a
    child task, 50 tasks awaiting one shared task, nested gathers, a TaskGroup, a chain of
    100 tasks each awaiting the next, a task waiting for a gather that includes a finished
    task, a lock holder awaiting a task while others wait for the lock, wait() and shield().
    Cycle probes run every 10 ms over every one of those waits (following what TaskGroups,
    wait(), shield() and locks wait on): none finds a cycle (no scan is brought forward), and
    no deadlock is reported."""
    watch, _ = install(deadlock_interval_s=0.01)
    loop = asyncio.get_running_loop()
    release = asyncio.Event()

    async def leaf() -> None:
        await release.wait()

    async def worker() -> None:
        await asyncio.create_task(leaf())

    async def nested() -> None:
        await asyncio.gather(asyncio.gather(leaf(), leaf()), leaf())

    async def grouped() -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(3):
                tg.create_task(worker())

    chain: list[asyncio.Task[None]] = []

    async def link(i: int) -> None:
        await release.wait() if i == 99 else await chain[i + 1]

    async def with_done(done: asyncio.Task[None]) -> None:
        await asyncio.gather(done, leaf())

    lock = asyncio.Lock()

    async def holder() -> None:
        async with lock:
            await asyncio.create_task(leaf())  # holds the lock, awaits a task

    async def wants_lock() -> None:
        async with lock:
            pass

    async def waits_and_shields() -> None:
        await asyncio.wait([asyncio.create_task(leaf())])
        await asyncio.shield(asyncio.create_task(leaf()))

    shared = asyncio.create_task(leaf())
    finished = asyncio.create_task(asyncio.sleep(0))
    await finished

    async def on_shared() -> None:
        await shared

    apps = [
        asyncio.create_task(asyncio.wait_for(asyncio.gather(*(worker() for _ in range(20))), 60)),
        *(asyncio.create_task(on_shared()) for _ in range(50)),
        *(asyncio.create_task(nested()) for _ in range(10)),
        asyncio.create_task(grouped()),
        asyncio.create_task(with_done(finished)),
        asyncio.create_task(holder()),
        *(asyncio.create_task(wants_lock()) for _ in range(5)),
        *(asyncio.create_task(waits_and_shields()) for _ in range(5)),
    ]
    chain.extend(asyncio.create_task(link(i)) for i in range(100))
    await settle()
    state = watch.deadlocks._state(loop)
    on_tasks = [
        t for t in asyncio.all_tasks()
        if isinstance(t._fut_waiter, PROBED_TYPES)  # type: ignore[attr-defined]
    ]
    assert len(on_tasks) > 150
    # Poll (with a deadline) until probes have followed every one of those waits.
    deadline = loop.time() + 60
    while not all(id(t) in state.probed for t in on_tasks) or watch.deadlocks.probes < 5:
        assert loop.time() < deadline, "the probes did not get round to every wait"
        await asyncio.sleep(0.01)
    probes = watch.deadlocks.probes
    while watch.deadlocks.probes < probes + 3:  # and a few more, all waits probed before
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    assert watch.deadlocks.probe_hits == 0
    assert asyncwatch.findings("deadlock") == []
    release.set()
    await asyncio.gather(*apps, *chain, shared)
