"""Issue 17.2: nothing of asyncwatch runs on every loop iteration by default, and the advisor
still knows how busy each loop is (read from its own thread: peeks at the loop thread's stack,
and the thread's CPU and run-queue time)."""

from __future__ import annotations

import asyncio
import os
import selectors
import sys
import threading
import time
from collections import Counter
from types import FrameType
from typing import Any

import asyncwatch
from asyncwatch._core.faults import Faults
from asyncwatch._core.stacks import current_frames
from asyncwatch.advisor._loopload import LoopLoad
from tests.advisor_workloads import io_call
from tests.conftest import wait_for

ORIGINAL_RUN_ONCE = asyncio.BaseEventLoop._run_once  # type: ignore[attr-defined]
ORIGINAL_HANDLE_RUN = asyncio.events.Handle._run
ORIGINAL_CALL_SOON = asyncio.BaseEventLoop.call_soon


async def one_callback_per_iteration(n: int) -> None:
    """``n`` callbacks in one chain: each loop iteration runs one, then calls ``select``."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = [n]

    def link() -> None:
        left[0] -= 1
        if left[0] > 0:
            loop.call_soon(link)
        else:
            done.set_result(None)

    loop.call_soon(link)
    await done


def test_defaults_run_nothing_per_loop_iteration() -> None:
    """Every default on (task hook, watchdog and heartbeat, advisor, deadlock scans): over
    10,000 loop iterations of one callback each, no asyncwatch function runs anywhere near once
    per iteration (what runs on the loop is driven by time: heartbeat, scans), and the
    selector, ``_run_once``, ``Handle._run`` and ``call_soon`` are asyncio's own. Before, the
    advisor wrapped the selector's ``select`` (two clock reads per iteration): 10,000 calls."""
    n = 10_000
    watch = asyncwatch.install(metrics_exporters=("none",), raise_errors=True)
    package = os.path.dirname(asyncwatch.__file__) + os.sep
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(package):
            calls[f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_code.co_name}"] += 1

    async def main() -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        for _ in range(3):  # everything that attaches to a loop has attached
            await asyncio.sleep(0)
        sys.setprofile(profile)
        try:
            await one_callback_per_iteration(n)
        finally:
            sys.setprofile(None)
        assert "select" not in vars(loop._selector)  # type: ignore[attr-defined]
        assert type(loop)._run_once is ORIGINAL_RUN_ONCE  # type: ignore[attr-defined]
        assert not {"_run_once", "call_soon", "call_at", "call_later"} & set(vars(loop))
        assert asyncio.events.Handle._run is ORIGINAL_HANDLE_RUN
        assert type(loop).call_soon is ORIGINAL_CALL_SOON
        return loop

    try:
        loop = asyncio.run(main())
        assert watch.loops.monitor_of(loop) is not None  # the watchdog did watch it
        assert watch.advisor.load._meters[loop].thread_id is not None  # the advisor measured it
    finally:
        asyncwatch.uninstall(timeout_s=2)
    heaviest = calls.most_common(1)[0][1] if calls else 0
    assert heaviest < n // 10, calls.most_common(5)


def _saturate(handler_step: Any, seconds: float) -> list[Any]:
    async def main() -> list[Any]:
        end = time.perf_counter() + seconds

        async def handler() -> None:
            while time.perf_counter() < end:
                handler_step()
                await asyncio.sleep(0)

        await asyncio.gather(*(handler() for _ in range(4)))
        return [r for r in asyncwatch.advise() if r.knob == "processes"]

    return asyncio.run(main())


def test_loop_saturated_by_blocking_calls_is_busy_not_computing() -> None:
    """Handlers that block the loop in ``time.sleep`` (GIL released, little CPU): the loop is
    busy (the peeks find it in the handlers, never waiting in its selector) while its thread's
    CPU is low, and the advice says to move the blocking calls off the loop first. A measure
    of the thread's CPU alone would call this loop idle."""
    watch = asyncwatch.install(metrics_exporters=("none",), raise_errors=True,
                               advisor_window_s=4, advisor_interval_s=3600)
    try:
        recs = _saturate(lambda: io_call(0.002), 2.5)
        (window,) = watch.advisor.load.windows(4)
        cores = watch.advisor.load.cores
    finally:
        asyncwatch.uninstall(timeout_s=2)
    assert window.peeks >= 5, window
    assert window.busy is not None and window.busy >= 0.9, window
    assert window.cpu is not None and window.cpu < 0.5, window
    if cores >= 2:
        (rec,) = recs
        assert rec.suggested is not None and rec.suggested >= 2
        assert "blocking rather than computing" in rec.evidence, rec.evidence


def test_idle_loop_is_not_busy() -> None:
    """A loop that waits (a long sleep, the heartbeat and scans its only work) reads as idle."""
    watch = asyncwatch.install(metrics_exporters=("none",), raise_errors=True,
                               advisor_window_s=4, advisor_interval_s=3600)

    async def main() -> None:
        await asyncio.sleep(2.0)
        watch.advisor.sample()

    try:
        asyncio.run(main())
        (window,) = watch.advisor.load.windows(4)
    finally:
        asyncwatch.uninstall(timeout_s=2)
    assert window.peeks >= 5, window
    assert window.busy is not None and window.busy < 0.5, window


class StalledSelector:
    """Replaces a selector's ``select`` (an instance attribute, as a library's wrapper would
    be): while ``armed`` the loop's thread waits inside it until ``release`` is set."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.original = selector.select
        self.armed = True
        self.inside = threading.Event()
        self.release = threading.Event()
        selector.select = self.select  # type: ignore[method-assign]

    def select(self, timeout: float | None = None) -> Any:
        if self.armed:
            self.inside.set()
            self.release.wait(30)
            self.release.clear()
            timeout = 0
        return self.original(timeout)


def test_peeks_tell_a_loop_waiting_in_its_selector_from_one_at_work() -> None:
    """Deterministic: the loop thread parked in known places, one peek each. Waiting in
    ``select`` (behind a wrapper) with nothing due is idle; in ``select`` with a callback
    ready or a timer due (a poll) is busy; a callback blocked in a call is busy."""
    load = LoopLoad(Faults())
    load.start()
    loop = asyncio.new_event_loop()
    load.attach(loop)  # armed by the loop's first iteration
    meter = load._meters[loop]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        wait_for(lambda: meter.thread_id is not None, what="the meter armed")

        def peek() -> bool:
            """One peek; True when it found the loop idle."""
            before = meter.idle_peeks
            assert load.peek()
            return meter.idle_peeks > before

        def in_select() -> bool:
            top = current_frames().get(thread.ident or 0)
            return top is not None and top.f_code.co_name == "select"

        wait_for(in_select, what="the loop waiting in select")
        assert peek()  # waiting in the real select, nothing scheduled

        parked, go_on = threading.Event(), threading.Event()

        def blocking() -> None:
            parked.set()
            go_on.wait(30)

        loop.call_soon_threadsafe(blocking)
        assert parked.wait(30)
        assert not peek()  # a callback blocked in a call (GIL released): busy
        go_on.set()
        wait_for(in_select, what="the loop waiting in select again")

        stall = StalledSelector(loop._selector)  # type: ignore[attr-defined]
        loop.call_soon_threadsafe(lambda: None)  # wakes the loop: its next select stalls
        assert stall.inside.wait(30)
        assert peek()  # in a wrapped select, nothing due: idle
        loop.call_soon_threadsafe(lambda: None)
        assert not peek()  # a callback ready: the select only polls
        stall.inside.clear()
        stall.release.set()
        assert stall.inside.wait(30)  # stalled again, the ready callback run
        wait_for(lambda: not loop._ready, what="the ready callback run")  # type: ignore[attr-defined]
        assert peek()
        loop.call_at(loop.time() - 1, lambda: None)  # (the loop's thread is parked)
        assert not peek()  # a timer due: busy
        stall.armed = False
        stall.release.set()
        assert meter.peeks == 6 and meter.idle_peeks == 3
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
        load.stop()
