"""Blocked loops found for real: event loops in threads, blocked by real calls, a real watchdog.

Each blocking body holds its loop until the test releases it, and the test releases it only
after it has seen the block reported, so nothing depends on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import asyncwatch
from asyncwatch.loopwatch._blocked import BlockedLoop

from .conftest import collect, marked_line, point, run_python, wait_for

SOURCE = Path(__file__).resolve()
THREAD = "app-loop"


def line_of(marker: str) -> int:
    """The line of this file that ends with ``# <marker>``."""
    return marked_line(SOURCE, marker)


# ---------------------------------------------------------------- blocking bodies


class Blocker:
    """A way to hold the loop until released: ``body()`` blocks, ``release()`` ends it."""

    name = ""
    marker = ""

    def __init__(self) -> None:
        self.released = threading.Event()

    def body(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        pass


class Sleep(Blocker):
    name = marker = "sleep"

    def body(self) -> None:
        while not self.released.is_set():
            time.sleep(0.005)  # sleep


class Cpu(Blocker):
    name = marker = "cpu"

    def body(self) -> None:
        any(self.released.is_set() for _ in itertools.count())  # cpu


class SocketRecv(Blocker):
    name = marker = "socket"

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = socket.socketpair()

    def body(self) -> None:
        self.a.recv(1)  # socket

    def release(self) -> None:
        self.b.send(b"x")

    def close(self) -> None:
        self.a.close()
        self.b.close()


class PipeRead(Blocker):
    name = marker = "file"

    def __init__(self) -> None:
        super().__init__()
        self.r, self.w = os.pipe()
        self.closed = False

    def body(self) -> None:
        os.read(self.r, 1)  # file

    def release(self) -> None:
        os.write(self.w, b"x")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.r)
            os.close(self.w)


BLOCKERS: dict[str, type[Blocker]] = {b.name: b for b in (Sleep, Cpu, SocketRecv, PipeRead)}
PLACES = ("task", "call_soon", "call_later", "done_callback")


# ---------------------------------------------------------------- running a loop that blocks


async def blocking_task(blocker: Blocker) -> None:
    blocker.body()


async def scenario(blocker: Blocker, place: str) -> None:
    """Block the running loop once, in ``place``, then return."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()

    def callback(*_: Any) -> None:
        try:
            blocker.body()
        finally:
            finished.set_result(None)

    if place == "task":
        await asyncio.create_task(blocking_task(blocker), name="blocker-task")
        return
    if place == "call_soon":
        loop.call_soon(callback)
    elif place == "call_later":
        loop.call_later(0.001, callback)
    else:
        trigger = loop.create_future()
        trigger.add_done_callback(callback)
        trigger.set_result(None)
    await finished


def start_loop(
    main: Callable[[], Any], *, uvloop: bool = False, name: str = THREAD
) -> threading.Thread:
    """Run ``main()`` in a new event loop in a new thread."""

    def target() -> None:
        if uvloop:
            import uvloop as uv

            loop = uv.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    thread = threading.Thread(target=target, name=name)
    thread.start()
    return thread


def blocks(ongoing: bool | None = None) -> list[BlockedLoop]:
    found = [f for f in asyncwatch.findings("blocked_loop") if isinstance(f, BlockedLoop)]
    return [f for f in found if ongoing is None or f.ongoing == ongoing]


def block_once(blocker: Blocker, place: str, *, uvloop: bool = False) -> BlockedLoop:
    """Block a loop in a thread; release it once the block is reported; the final finding."""
    thread = start_loop(lambda: scenario(blocker, place), uvloop=uvloop)
    try:
        ongoing = wait_for(lambda: blocks(ongoing=True), what="block reported while it lasts")
        assert len(ongoing) == 1
    finally:
        blocker.release()
        thread.join(30)
        blocker.close()
    assert not thread.is_alive()
    final = wait_for(lambda: blocks(ongoing=False), what="final finding")
    assert len(blocks()) == 1
    return final[0]


@pytest.fixture
def blocker(request: pytest.FixtureRequest) -> Iterator[Blocker]:
    b = BLOCKERS[request.param]()
    yield b
    b.close()


def check_culprit(finding: BlockedLoop, blocker: Blocker, place: str) -> None:
    assert finding.culprit is not None
    assert Path(finding.culprit.filename).resolve() == SOURCE
    assert finding.culprit.lineno == line_of(blocker.marker)
    # (the CPU-bound body spins inside a generator expression on its line)
    assert finding.culprit.function.startswith(f"{type(blocker).__name__}.body")
    assert finding.culprit in finding.stack
    assert finding.thread == THREAD
    assert not finding.ongoing
    assert finding.samples >= (1 if finding.exact else 2)  # precise mode needs no second look
    assert finding.duration_s > asyncwatch.current().config.block_threshold_s  # type: ignore[union-attr]
    if place == "task":
        assert finding.task == "blocker-task"
        assert finding.coroutine is not None
        assert finding.coroutine.endswith(".blocking_task")
    else:
        assert finding.task is None


# ---------------------------------------------------------------- the scenarios


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("blocker", list(BLOCKERS), indirect=True)
def test_culprit_line_is_named(watch: asyncwatch.Watch, blocker: Blocker, place: str) -> None:
    """time.sleep, a CPU-bound loop, a socket recv and a pipe read, each in a task, a
    call_soon and a call_later callback and a done-callback: the finding names the exact line,
    the task (or none), the thread; it is recorded while the loop is still held."""
    check_culprit(block_once(blocker, place), blocker, place)


@pytest.mark.parametrize("place", PLACES)
def test_uvloop_blocks_are_named(watch: asyncwatch.Watch, place: str) -> None:
    """Under uvloop (whose callbacks run from C) the watchdog names the line just the same."""
    pytest.importorskip("uvloop")
    blocker = Sleep()
    check_culprit(block_once(blocker, place, uvloop=True), blocker, place)


def test_cpu_block_under_uvloop(watch: asyncwatch.Watch) -> None:
    """A CPU-bound block under uvloop (the GIL held throughout) is named too."""
    pytest.importorskip("uvloop")
    blocker = Cpu()
    check_culprit(block_once(blocker, "task", uvloop=True), blocker, "task")


def test_block_outputs(
    watch: asyncwatch.Watch, reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    """One block: counted and timed under its culprit line, loop lag recorded, one WARNING
    line naming file:line and the task."""
    caplog.set_level(logging.WARNING, logger="asyncwatch")
    blocker = Sleep()
    finding = block_once(blocker, "task")
    expected_line = line_of("sleep")
    metrics = collect(reader)
    blocked = point(metrics["asyncwatch.loop.blocked"], code__line__number=expected_line)
    assert blocked.value == 1
    assert Path(blocked.attributes["code.file.path"]).resolve() == SOURCE
    assert blocked.attributes["code.function.name"].endswith("Sleep.body")
    hist = point(metrics["asyncwatch.loop.blocked.duration"], code__line__number=expected_line)
    assert hist.count == 1 and hist.sum == pytest.approx(finding.duration_s)
    (lag,) = metrics["asyncwatch.loop.lag"]
    assert lag.count >= 1
    lines = [r for r in caplog.records if "event loop blocked" in r.getMessage()]
    assert len(lines) == 1
    message = lines[0].getMessage()
    assert lines[0].levelno == logging.WARNING
    assert f"{finding.culprit.filename}:{expected_line}" in message  # type: ignore[union-attr]
    assert "'blocker-task'" in message


def test_span_and_route_of_the_blocking_request(watch: asyncwatch.Watch) -> None:
    """The finding carries the route (asyncwatch's context variable) and the span current in
    the blocking task, and the block is added to that span as an event when detected."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from asyncwatch._core.context import current_route

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    blocker = Sleep()
    ids: dict[str, str] = {}

    async def request() -> None:
        with tracer.start_as_current_span("GET /items/{id}") as span:
            current_route.set("/items/{id}")
            ids["trace"] = f"{span.get_span_context().trace_id:032x}"
            ids["span"] = f"{span.get_span_context().span_id:016x}"
            await asyncio.create_task(blocking_task(blocker), name="blocker-task")

    thread = start_loop(request)
    try:
        wait_for(lambda: blocks(ongoing=True), what="block")
    finally:
        blocker.release()
        thread.join(30)
    (finding,) = wait_for(lambda: blocks(ongoing=False), what="final finding")
    assert finding.route == "/items/{id}"
    assert (finding.trace_id, finding.span_id) == (ids["trace"], ids["span"])
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    assert event.name == "asyncwatch.loop.blocked"
    assert event.attributes["code.line.number"] == line_of("sleep")
    assert event.attributes["asyncwatch.block.ongoing"] is True
    threshold = asyncwatch.current().config.block_threshold_s  # type: ignore[union-attr]
    assert threshold < event.attributes["asyncwatch.block.duration"] <= finding.duration_s


def test_route_falls_back_to_the_span_http_route(watch: asyncwatch.Watch) -> None:
    """Without asyncwatch's context variable, the current span's http.route is the route."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    blocker = Sleep()

    async def request() -> None:
        with tracer.start_as_current_span("GET", attributes={"http.route": "/users/{uid}"}):
            loop = asyncio.get_running_loop()
            done = loop.create_future()

            def callback() -> None:
                blocker.body()
                done.set_result(None)

            loop.call_soon(callback)  # a plain callback: its context is the handle's
            await done

    thread = start_loop(request)
    try:
        wait_for(lambda: blocks(ongoing=True), what="block")
    finally:
        blocker.release()
        thread.join(30)
    (finding,) = wait_for(lambda: blocks(ongoing=False), what="final finding")
    assert finding.task is None
    assert finding.route == "/users/{uid}"
    assert finding.span_id is not None


def test_busy_healthy_loop_has_no_block(watch: asyncwatch.Watch) -> None:
    """Loop iterations of 15,000 short callbacks (queued by 15 producer tasks) and batches of
    short tasks make the heartbeat late, past the threshold, so the watchdog samples the loop;
    but no callback holds it: no finding that blames code."""
    looks: list[int] = []

    async def busy() -> None:
        loop = asyncio.get_running_loop()
        monitor = watch.loops.monitor_of(loop)
        assert monitor is not None
        # Rounds until the watchdog has looked at least twice (a loaded machine may need more
        # than two before a beat is late enough), at most a minute of them.
        deadline = time.monotonic() + 60
        rounds = 0
        while rounds < 2 or (monitor.looks < 2 and time.monotonic() < deadline):
            rounds += 1
            finished = loop.create_future()
            left = [15_000]

            def work(left: list[int] = left, finished: asyncio.Future[None] = finished) -> None:
                sum(range(300))
                left[0] -= 1
                if left[0] == 0:
                    finished.set_result(None)

            async def produce() -> None:
                for _ in range(1_000):
                    loop.call_soon(work)

            await asyncio.gather(*(produce() for _ in range(15)))
            await finished

            async def small() -> int:
                await asyncio.sleep(0)
                return sum(range(1_000))

            for _ in range(10):
                await asyncio.gather(*(small() for _ in range(300)))
        looks.append(monitor.looks)  # (read while the loop is still open)

    thread = start_loop(busy)
    thread.join(120)
    assert looks[0] >= 2, "the loop was never late enough to be sampled"
    # A full collection of the test session's heap can itself hold the loop past the
    # threshold on a loaded machine: a real block, named as such, not a callback's.
    assert [b for b in blocks() if b.cause != "garbage_collection"] == []


def test_two_loops_in_two_threads_blocked_at_once(watch: asyncwatch.Watch) -> None:
    """Two loops blocked at the same time in different threads: both found, each with its
    own thread and line."""
    sleeper, reader = Sleep(), SocketRecv()
    one = start_loop(lambda: scenario(sleeper, "task"), name="loop-one")
    two = start_loop(lambda: scenario(reader, "call_soon"), name="loop-two")
    try:
        wait_for(lambda: len(blocks(ongoing=True)) == 2, what="both blocks")
    finally:
        sleeper.release()
        reader.release()
        one.join(30)
        two.join(30)
        reader.close()
    found = wait_for(lambda: len(blocks(ongoing=False)) == 2 and blocks(ongoing=False))
    by_thread = {f.thread: f for f in found}
    assert by_thread["loop-one"].culprit.lineno == line_of("sleep")  # type: ignore[union-attr]
    assert by_thread["loop-one"].task == "blocker-task"
    assert by_thread["loop-two"].culprit.lineno == line_of("socket")  # type: ignore[union-attr]
    assert by_thread["loop-two"].task is None
    threads = [t for t in threading.enumerate() if t.name == "asyncwatch-watchdog"]
    assert len(threads) == 1


def test_uninstall_leaves_no_thread_and_no_heartbeat() -> None:
    """uninstall() joins the watchdog thread and cancels every loop's heartbeat."""
    w = asyncwatch.install(metrics_exporters=("none",), raise_errors=True)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.sleep(0))
        thread = w.loops.thread
        assert thread is not None and thread.is_alive()
        asyncwatch.uninstall()
        assert not thread.is_alive()
        assert [t for t in threading.enumerate() if t.name == "asyncwatch-watchdog"] == []
        loop.run_until_complete(asyncio.sleep(0))
        assert [h for h in loop._scheduled if not h.cancelled()] == []  # type: ignore[attr-defined]
    finally:
        loop.close()


def test_loop_watch_off_starts_nothing() -> None:
    """loop_watch=False: no heartbeat, no watchdog thread (the deadlock scanner, which has its
    own timer, is off too so that the loop's timer list must be empty)."""
    w = asyncwatch.install(
        metrics_exporters=("none",), raise_errors=True, loop_watch=False, deadlock_detection=False
    )
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.sleep(0))
        assert w.loops.thread is None
        assert w.loops.monitor_of(loop) is None
        assert list(loop._scheduled) == []  # type: ignore[attr-defined]
    finally:
        loop.close()


def test_forked_child_runs_its_own_watchdog() -> None:
    """A child forked from a watched process starts its own watchdog and finds its blocks;
    the parent's findings are not inherited."""
    code = f"""
import asyncio, os, sys, threading, time
sys.path.insert(0, {str(SOURCE.parent.parent)!r})
import asyncwatch
w = asyncwatch.install(metrics_exporters=("none",), block_threshold_s=0.05)

async def block(seconds):
    await asyncio.sleep(0)
    time.sleep(seconds)
    await asyncio.sleep(0.05)

asyncio.run(block(0.3))
parent_thread = w.loops.thread
assert parent_thread.is_alive() and len(asyncwatch.findings("blocked_loop")) == 1
pid = os.fork()
if pid == 0:
    ok = asyncwatch.findings("blocked_loop") == []
    asyncio.run(block(0.3))
    child_thread = w.loops.thread
    ok = ok and child_thread is not None and child_thread.is_alive()
    ok = ok and child_thread is not parent_thread
    found = asyncwatch.findings("blocked_loop")
    ok = ok and len(found) == 1 and found[0].culprit.function == "block"
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "child 0" in result.stdout, (result.stdout, result.stderr)


# ---------------------------------------------------------------- precise mode


def test_precise_mode_patches_and_restores_handle_run() -> None:
    """precise_callbacks wraps asyncio.Handle._run; uninstall() puts the original back."""
    original = asyncio.events.Handle.__dict__["_run"]
    asyncwatch.install(metrics_exporters=("none",), precise_callbacks=True)
    assert asyncio.events.Handle.__dict__["_run"] is not original
    asyncwatch.uninstall()
    assert asyncio.events.Handle.__dict__["_run"] is original


def test_precise_mode_leaves_a_later_patch_alone() -> None:
    """If someone wrapped Handle._run after asyncwatch, uninstall() leaves theirs."""
    original = asyncio.events.Handle.__dict__["_run"]
    asyncwatch.install(metrics_exporters=("none",), precise_callbacks=True)
    ours = asyncio.events.Handle.__dict__["_run"]

    def theirs(self: Any) -> None:
        ours(self)

    asyncio.events.Handle._run = theirs  # type: ignore[method-assign]
    try:
        asyncwatch.uninstall()
        assert asyncio.events.Handle.__dict__["_run"] is theirs
    finally:
        asyncio.events.Handle._run = original  # type: ignore[method-assign]


@pytest.mark.parametrize("place", PLACES)
def test_precise_mode_names_the_line_and_times_exactly(place: str) -> None:
    """In precise mode a sampled block keeps its culprit line and gets exact timing."""
    asyncwatch.install(metrics_exporters=("none",), raise_errors=True, precise_callbacks=True)
    blocker = Cpu()
    finding = block_once(blocker, place)
    check_culprit(finding, blocker, place)
    assert finding.exact


def short_sleep() -> None:
    time.sleep(0.06)  # short


def test_precise_mode_catches_a_block_too_short_for_the_watchdog() -> None:
    """A single callback just over the threshold (which the heartbeat may miss) is reported
    by precise mode, timed from its real start, named by line or by callback."""
    asyncwatch.install(
        metrics_exporters=("none",), raise_errors=True, precise_callbacks=True,
        block_threshold_s=0.05,
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def callback() -> None:  # callback site
            short_sleep()
            done.set_result(None)

        loop.call_soon(callback)
        await done

    thread = start_loop(main)
    thread.join(30)
    (finding,) = wait_for(lambda: blocks(ongoing=False), what="precise finding")
    assert finding.exact
    assert finding.duration_s >= 0.06  # time.sleep(0.06) sleeps at least that long
    assert finding.culprit is not None
    assert finding.culprit.lineno in (line_of("short"), line_of("callback site"))


def test_internal_error_in_precise_report_never_reaches_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If recording a slow callback fails inside asyncwatch, the app's loop runs on and the
    error is counted."""
    w = asyncwatch.install(
        metrics_exporters=("none",), precise_callbacks=True, block_threshold_s=0.01
    )

    def broken(*args: Any) -> None:
        raise RuntimeError("asyncwatch bug")

    monkeypatch.setattr(w.loops.report, "detected", broken)

    async def main() -> str:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(lambda: (short_sleep(), done.set_result("still running")))
        return await done

    assert asyncio.run(main()) == "still running"
    assert w.faults.counts.get("precise_callbacks", 0) >= 1


def test_route_of_a_request_blocking_under_the_asgi_middleware(watch: asyncwatch.Watch) -> None:
    """A Starlette handler served by uvicorn through AsyncWatchMiddleware blocks the loop: the
    finding names the route template the request matched, from the middleware's own context
    (nothing set by the app), and the culprit line in the handler."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from asyncwatch import AsyncWatchMiddleware
    from tests.asgi_servers import Uvicorn

    blocker = Sleep()

    async def item(request: Any) -> PlainTextResponse:
        blocker.body()
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/items/{item_id:int}", item)])
    app.add_middleware(AsyncWatchMiddleware)
    with Uvicorn(app) as server:
        answer: list[int] = []
        url = f"{server.url}/items/42"
        client = threading.Thread(
            target=lambda: answer.append(httpx.get(url, timeout=30).status_code)
        )
        client.start()
        try:
            wait_for(lambda: blocks(ongoing=True), what="block")
        finally:
            blocker.release()
            client.join(30)
    assert answer == [200]
    (finding,) = wait_for(lambda: blocks(ongoing=False), what="final finding")
    assert finding.route == "/items/{item_id}"  # the template (Starlette drops the convertor)
    assert finding.culprit is not None and finding.culprit.lineno == line_of("sleep")
    assert finding.coroutine is not None and "run_asgi" in finding.coroutine


# ---------------------------------------------------------------- idle in select is not blocked


class StalledSelector:
    """Wraps a loop's selector so that, once armed, the loop's thread stays inside
    ``select()`` until released: what a loop thread starved of CPU looks like from outside
    (the heartbeat's timer is due, the thread has not come back from its selector)."""

    def __init__(self, selector: Any) -> None:
        self.original = selector.select
        self.armed = threading.Event()
        self.entered = threading.Event()
        self.released = threading.Event()
        selector.select = self.select

    def select(self, timeout: float | None = None) -> Any:
        if self.armed.is_set() and not self.released.is_set():
            self.entered.set()
            self.released.wait(30)  # the thread sits in its selector, idle
        return self.original(timeout)


@pytest.mark.parametrize("precise", [False, True])
def test_a_loop_idle_in_its_selector_is_not_blocked(
    precise: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Heartbeat late while the loop waits in select() (behind the advisor's own selector
    wrapper, too): no blocked-loop finding and no culprit line, but the lateness is counted
    as starvation and said in a log line that says it is not a block."""
    watch = asyncwatch.install(
        metrics_exporters=("none",), raise_errors=True, block_threshold_s=0.05,
        precise_callbacks=precise,
    )
    stalled: list[StalledSelector] = []
    loops: list[Any] = []
    started = threading.Event()
    done = threading.Event()

    async def main() -> None:
        await asyncio.sleep(0)  # the advisor's load meter wraps the selector first
        loop = asyncio.get_running_loop()
        stalled.append(StalledSelector(loop._selector))  # type: ignore[attr-defined]
        loops.append(loop)
        started.set()
        while not done.is_set():
            await asyncio.sleep(0.01)

    with caplog.at_level(logging.WARNING, logger="asyncwatch"):
        thread = start_loop(main)
        try:
            assert started.wait(30)
            monitor = watch.loops.monitor_of(loops[0])
            assert monitor is not None
            stalled[0].armed.set()
            assert stalled[0].entered.wait(30)
            wait_for(lambda: monitor.starved >= 1, what="the late beat to be seen")
        finally:
            for s in stalled:
                s.released.set()
            done.set()
            thread.join(30)
    assert blocks() == []
    assert watch.loops.culprits._slots == {}
    assert "short of CPU (not a blocked loop" in caplog.text
