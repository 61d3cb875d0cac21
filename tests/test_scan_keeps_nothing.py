"""The deadlock scanner's records between scans (and the cycle probe's) keep none of the
app's objects alive: a wait that ends between two scans frees what it waited on right away,
not at the next scan."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

import asyncwatch
import asyncwatch.deadlock._scanstate as scanstate


class Payload:
    """A result the app drops as soon as it has used it."""


def test_a_finished_wait_frees_its_future_and_tasks_before_the_next_scan() -> None:
    watch = asyncwatch.install(
        metrics_exporters=("none",), raise_errors=True, deadlock_interval_s=3600.0
    )
    refs: dict[str, weakref.ref[object]] = {}

    async def child(release: asyncio.Event) -> Payload:
        await release.wait()
        return Payload()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        release = asyncio.Event()
        children = [asyncio.create_task(child(release)) for _ in range(3)]
        waiter = loop.create_future()

        async def parent(waiter: asyncio.Future[Payload], children: list[Any]) -> None:
            await waiter  # a plain future
            results = await asyncio.gather(*children)  # a gather of tasks
            refs["results"] = weakref.ref(results[0])

        task = asyncio.create_task(parent(waiter, children))
        await asyncio.sleep(0)
        for _ in range(2):  # seen twice: the wait is classified and followed
            watch.deadlocks.scan(loop)
        refs["future"] = weakref.ref(waiter)
        waiter.set_result(Payload())
        del waiter
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for _ in range(2):
            watch.deadlocks.scan(loop)  # the parent now waits on the gather
        gather = task._fut_waiter  # type: ignore[attr-defined]
        assert gather is not None
        refs["gather"] = weakref.ref(gather)
        refs["child"] = weakref.ref(children[0])
        del gather, children
        release.set()
        await task
        del task
        # Still on the loop, before any further scan; freed by reference counting alone.
        alive = [name for name, ref in refs.items() if ref() is not None]
        assert alive == [], f"kept alive past their wait: {alive}"

    gc.disable()
    try:
        asyncio.run(main())
    finally:
        gc.enable()
        asyncwatch.uninstall()


def test_the_cycle_probe_keeps_nothing_between_slices_or_probes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cycle probe remembers the waits it followed by weak reference only, and holds the
    tasks it reads only within a slice: after a probe (in slices of one task here) over a
    parent awaiting a child task and a gather, the waits end and everything is freed by
    reference counting alone, before any further probe."""
    monkeypatch.setattr(scanstate, "PROBE_SLICE", 1)
    watch = asyncwatch.install(
        metrics_exporters=("none",), raise_errors=True, deadlock_interval_s=3600.0
    )
    refs: dict[str, weakref.ref[object]] = {}

    async def child(release: asyncio.Event) -> Payload:
        await release.wait()
        return Payload()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        release = asyncio.Event()
        children = [asyncio.create_task(child(release)) for _ in range(3)]

        async def parent(children: list[Any]) -> None:
            await children[0]
            await asyncio.gather(*children[1:])

        async def gatherer(children: list[Any]) -> None:
            results = await asyncio.gather(*children)
            refs["results"] = weakref.ref(results[0])

        tasks = [asyncio.create_task(parent(children)), asyncio.create_task(gatherer(children))]
        await asyncio.sleep(0)
        state = watch.deadlocks._state(loop)
        slices = 0
        steps = scanstate.probe_steps(loop, state)
        for _ in steps:
            slices += 1
            held = [
                name for name, value in steps.gi_frame.f_locals.items()
                if isinstance(value, asyncio.Future)
            ]
            assert held == [], f"a probe holds {held} between slices"
            await asyncio.sleep(0)
        del steps
        assert slices >= len(children) + len(tasks) - 1
        assert {id(t) for t in tasks} <= set(state.probed)  # both waits were followed
        gather = tasks[1]._fut_waiter  # type: ignore[attr-defined]
        refs["gather"] = weakref.ref(gather)
        refs["child"] = weakref.ref(children[0])
        refs["parent"] = weakref.ref(tasks[0])
        del gather, children
        release.set()
        while not all(t.done() for t in tasks):  # (awaiting them would keep a handle)
            await asyncio.sleep(0)
        del tasks
        await asyncio.sleep(0)
        alive = [name for name, ref in refs.items() if ref() is not None]
        assert alive == [], f"kept alive past their wait: {alive}"

    gc.disable()
    try:
        asyncio.run(main())
    finally:
        gc.enable()
        asyncwatch.uninstall()
