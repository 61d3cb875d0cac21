"""The task hook: every task observed, whatever creates it, and nothing the app sees changes."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import re
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest

import asyncwatch
import asyncwatch.tasks._path
from asyncwatch._core.measure import clock
from asyncwatch.tasks._path import LoopHook

HERE = __name__  # the module part of every coroutine key defined in this file
PACKAGE_DIR = str(Path(asyncwatch.__file__).parent)
var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


async def leaf() -> str:
    return "leaf"


async def fails() -> None:
    raise KeyError("boom")


async def sleeps() -> None:
    await asyncio.sleep(3600)


def created(name: str) -> int:
    stats = asyncwatch.stats()
    return stats[f"{HERE}.{name}"].created if f"{HERE}.{name}" in stats else 0


# ------------------------------------------------------------------ every creation path


@pytest.mark.usefixtures("watch")
def test_create_task_and_loop_create_task_are_seen() -> None:
    """asyncio.create_task and loop.create_task both go through the hook."""

    async def main() -> None:
        await asyncio.create_task(leaf())
        await asyncio.get_running_loop().create_task(leaf())

    asyncio.run(main())
    assert created("leaf") == 2


@pytest.mark.usefixtures("watch")
def test_taskgroup_gather_ensure_future_wait_for_are_seen() -> None:
    """TaskGroup, gather, ensure_future and wait_for all create observed tasks (wait_for
    only before 3.12: from then on it awaits a coroutine in place, in a timeout block)."""

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(leaf())
        await asyncio.gather(leaf(), leaf())
        await asyncio.ensure_future(leaf())
        await asyncio.wait_for(leaf(), timeout=60)

    asyncio.run(main())
    assert created("leaf") == (5 if sys.version_info < (3, 12) else 4)


@pytest.mark.usefixtures("watch")
def test_every_kind_of_loop_made_after_install_is_instrumented() -> None:
    """asyncio.run, asyncio.Runner and new_event_loop loops are all instrumented."""
    asyncio.run(leaf())
    with asyncio.Runner() as runner:
        runner.run(leaf())
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(leaf())
    finally:
        loop.close()
    assert created("leaf") == 3


def test_install_inside_a_running_loop_instruments_it() -> None:
    """install() called from inside a running loop observes that loop's later tasks."""

    async def main() -> None:
        asyncwatch.install(metrics_exporters=("none",), raise_errors=True)
        await asyncio.create_task(leaf())

    asyncio.run(main())
    assert created("leaf") == 1


def test_install_with_a_loop_set_but_not_running() -> None:
    """A loop set as current before install() is instrumented by install()."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        asyncwatch.install(metrics_exporters=("none",), raise_errors=True)
        loop.run_until_complete(leaf())
        assert created("leaf") == 1
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.mark.usefixtures("watch")
def test_loops_in_several_threads_are_counted_exactly() -> None:
    """Loops in four threads at once: every task counted, none lost to a race."""

    def work() -> None:
        async def main() -> None:
            for _ in range(50):
                await asyncio.gather(*[leaf() for _ in range(20)])

        asyncio.run(main())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = asyncwatch.stats()[f"{HERE}.leaf"]
    assert stats.created == 4 * 50 * 20
    assert stats.ok == 4 * 50 * 20
    assert stats.in_flight == 0


# ------------------------------------------------------------------ what is counted


@pytest.mark.usefixtures("watch")
def test_outcomes_are_counted_by_kind() -> None:
    """ok, error (by exception type) and cancelled are counted separately."""

    async def main() -> None:
        await asyncio.gather(leaf(), leaf(), fails(), return_exceptions=True)
        t = asyncio.create_task(sleeps())
        await asyncio.sleep(0)
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)

    asyncio.run(main())
    stats = asyncwatch.stats()
    assert stats[f"{HERE}.leaf"].ok == 2
    assert stats[f"{HERE}.fails"].errors == 1
    assert stats[f"{HERE}.fails"].errors_by_type == {"KeyError": 1}
    assert stats[f"{HERE}.sleeps"].cancelled == 1


@pytest.mark.usefixtures("watch")
def test_in_flight_and_peak() -> None:
    """In flight counts tasks not yet done; peak keeps the most at once."""
    seen: dict[str, int] = {}

    async def main() -> None:
        tasks = [asyncio.create_task(sleeps()) for _ in range(7)]
        await asyncio.sleep(0)
        seen["in_flight"] = asyncwatch.stats()[f"{HERE}.sleeps"].in_flight
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    stats = asyncwatch.stats()[f"{HERE}.sleeps"]
    assert seen["in_flight"] == 7
    assert stats.in_flight == 0
    assert stats.peak == 7


@pytest.mark.usefixtures("watch")
def test_key_is_the_coroutine_not_the_task_name() -> None:
    """Tasks are keyed by module-qualified __qualname__, never by the task's name."""

    class Worker:
        async def run(self) -> None:
            pass

    async def main() -> None:
        await asyncio.create_task(Worker().run(), name="request-12345")

    asyncio.run(main())
    keys = set(asyncwatch.stats().coroutines)
    assert f"{HERE}.test_key_is_the_coroutine_not_the_task_name.<locals>.Worker.run" in keys
    assert not any("request-12345" in k for k in keys)


@pytest.mark.usefixtures("watch")
def test_timings_are_recorded() -> None:
    """Duration and schedule delay percentiles are filled in for timed tasks."""

    async def main() -> None:
        await asyncio.gather(*[leaf() for _ in range(100)])

    asyncio.run(main())
    stats = asyncwatch.stats()[f"{HERE}.leaf"]
    assert stats.duration.timed == 100
    assert stats.duration.p50 is not None and stats.duration.p50 >= 0
    assert stats.schedule_delay.p99 is not None and stats.schedule_delay.p99 >= 0


def test_sampled_timing_still_counts_every_task() -> None:
    """With a low timing rate, counts stay exact and the weighted sample stands for all."""
    asyncwatch.install(metrics_exporters=("none",), raise_errors=True, timed_per_s=1.0)

    async def main() -> None:
        for _ in range(20):
            await asyncio.gather(*[leaf() for _ in range(500)])

    asyncio.run(main())
    stats = asyncwatch.stats()[f"{HERE}.leaf"]
    assert stats.created == stats.ok == 10_000
    assert 0 < stats.duration.timed <= 10_000 + 2 * stats.duration.timed


# ------------------------------------------------------------------ transparency


@pytest.mark.usefixtures("watch")
def test_names_are_never_changed() -> None:
    """Explicit names are kept and default names keep asyncio's Task-N form."""
    names: list[str] = []

    async def main() -> None:
        t1 = asyncio.create_task(leaf(), name="mine")
        t2 = asyncio.create_task(leaf())
        names.extend([t1.get_name(), t2.get_name()])
        await asyncio.gather(t1, t2)

    asyncio.run(main())
    assert names[0] == "mine"
    assert names[1].startswith("Task-")


def test_names_are_what_they_are_without_asyncwatch() -> None:
    """Every way of making a task gives it the name it gets without asyncwatch installed,
    also where Python renames a factory-made task (3.13.0-3.13.2 call set_name(None) after
    any task factory, so asyncwatch's factory alone turned every "Task-N" into "None")."""

    def names() -> list[str]:
        out: list[str] = []

        async def main() -> None:
            loop = asyncio.get_running_loop()
            out.append(asyncio.create_task(leaf()).get_name())
            out.append(loop.create_task(leaf()).get_name())
            async with asyncio.TaskGroup() as tg:
                out.append(tg.create_task(leaf()).get_name())
            out.append(loop.create_task(leaf(), name="given").get_name())
            loop.set_task_factory(my_factory)  # the app's own factory: as Python does it
            out.append(asyncio.create_task(leaf()).get_name())
            out.append(asyncio.create_task(leaf(), name="given").get_name())
            await asyncio.gather(
                *(t for t in asyncio.all_tasks() if t is not asyncio.current_task())
            )

        asyncio.run(main())
        return [re.sub(r"^Task-\d+$", "Task-N", n) for n in out]

    bare = names()
    asyncwatch.install(metrics_exporters=("none",), raise_errors=True)
    assert names() == bare
    assert bare[:4] == ["Task-N", "Task-N", "Task-N", "given"]


@pytest.mark.usefixtures("watch")
def test_get_coro_and_get_stack_are_the_apps_own() -> None:
    """get_coro() is the app's coroutine object and get_stack() has no asyncwatch frame."""
    seen: dict[str, Any] = {}

    async def main() -> None:
        coro = sleeps()
        task = asyncio.create_task(coro)
        await asyncio.sleep(0)
        seen["same"] = task.get_coro() is coro
        seen["files"] = [f.f_code.co_filename for f in task.get_stack()]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert seen["same"]
    assert seen["files"]
    assert not any(f.startswith(PACKAGE_DIR) for f in seen["files"])


@pytest.mark.usefixtures("watch")
def test_contextvars_behave_as_without_asyncwatch() -> None:
    """A task gets a copy of its creator's context; an explicit context= is used as given."""
    seen: dict[str, str] = {}

    async def reads_and_writes() -> None:
        seen["inside"] = var.get()
        var.set("changed-inside")

    async def main() -> None:
        var.set("creator")
        await asyncio.create_task(reads_and_writes())
        seen["after"] = var.get()
        ctx = contextvars.Context()
        await asyncio.create_task(reads_and_writes(), context=ctx)
        seen["given_ctx"] = ctx[var]

    asyncio.run(main())
    assert seen == {"inside": "unset", "after": "creator", "given_ctx": "changed-inside"}


@pytest.mark.usefixtures("watch")
def test_cancellation_semantics_are_unchanged() -> None:
    """Cancel messages, cancelling() and uncancel() work exactly as in asyncio."""
    seen: dict[str, Any] = {}

    async def stubborn() -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError as exc:
            seen["msg"] = exc.args[0] if exc.args else None
            task = asyncio.current_task()
            assert task is not None
            seen["cancelling"] = task.cancelling()
            seen["uncancel"] = task.uncancel()
        return "survived"

    async def main() -> None:
        t = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        t.cancel("stop please")
        seen["result"] = await t

    asyncio.run(main())
    assert seen == {"msg": "stop please", "cancelling": 1, "uncancel": 0, "result": "survived"}


@pytest.mark.usefixtures("watch")
def test_exceptions_propagate_unchanged() -> None:
    """The very exception object the coroutine raised reaches the awaiter."""
    raised = KeyError("x")

    async def raiser() -> None:
        raise raised

    async def main() -> BaseException:
        try:
            await asyncio.create_task(raiser())
        except KeyError as exc:
            return exc
        return AssertionError("no exception")

    assert asyncio.run(main()) is raised


@pytest.mark.usefixtures("watch")
def test_never_retrieved_exception_is_still_reported() -> None:
    """asyncio's 'exception was never retrieved' report still fires for an unread failure."""
    reports: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, ctx: reports.append(ctx["message"])
        )
        task = asyncio.create_task(fails())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert task.done()
        del task
        gc.collect()

    asyncio.run(main())
    assert any("never retrieved" in m for m in reports), reports
    assert asyncwatch.stats()[f"{HERE}.fails"].errors == 1


@pytest.mark.usefixtures("watch")
def test_finished_task_is_freed() -> None:
    """Nothing of asyncwatch keeps a finished task alive."""
    refs: list[weakref.ref[Any]] = []

    async def main() -> None:
        task = asyncio.create_task(leaf())
        refs.append(weakref.ref(task))
        await task
        del task

    asyncio.run(main())
    gc.collect()
    assert refs[0]() is None


@pytest.mark.usefixtures("watch")
def test_pending_orphan_is_still_destroyed_and_reported() -> None:
    """A pending task nobody references is collected and reported, as without asyncwatch."""
    reports: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, ctx: reports.append(ctx["message"])
        )
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def waits_forever(future: asyncio.Future[None]) -> None:
            await future

        task = asyncio.create_task(waits_forever(never))
        await asyncio.sleep(0)
        ref = weakref.ref(task)
        del task, never
        gc.collect()
        assert ref() is None

    asyncio.run(main())
    assert any("destroyed but it is pending" in m for m in reports), reports


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks exist from Python 3.12")
@pytest.mark.usefixtures("watch")
def test_eager_tasks_still_start_eagerly() -> None:
    """With eager_task_factory chained, a task runs its first step inside create_task."""
    order: list[str] = []

    async def step() -> None:
        order.append("task")

    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        t = asyncio.create_task(step())
        order.append("after create")
        await t

    asyncio.run(main())
    assert order == ["task", "after create"]
    assert created("test_eager_tasks_still_start_eagerly.<locals>.step") == 1


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks exist from Python 3.12")
@pytest.mark.usefixtures("watch")
def test_tasks_created_inside_an_eager_step_are_all_counted() -> None:
    """An eager task's first step runs inside the factory, so tasks it creates re-enter the
    hook before the outer call has counted its own: every one is still counted, once."""
    key = f"{HERE}.test_tasks_created_inside_an_eager_step_are_all_counted.<locals>.nest"
    seen: dict[str, int] = {}

    async def nest(depth: int) -> None:
        if depth:
            await asyncio.create_task(nest(depth - 1))

    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        await asyncio.create_task(nest(5))
        stats = asyncwatch.stats()[key]
        seen["created"], seen["in_flight"] = stats.created, stats.in_flight

    asyncio.run(main())
    stats = asyncwatch.stats()[key]
    assert seen["created"] == 6
    assert seen["in_flight"] >= 0
    assert (stats.created, stats.ok, stats.in_flight) == (6, 6, 0)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks exist from Python 3.12")
@pytest.mark.usefixtures("watch")
def test_eager_task_that_finishes_at_once_is_timed_to_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task that finishes inside its eager first step ended then: its duration does not
    include the rest of its creator's step (the hook's clock is driven by hand here)."""
    now = [clock()]
    monkeypatch.setattr(asyncwatch.tasks._path, "clock", lambda: now[0])

    async def quick() -> None:
        pass

    async def main() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        task = asyncio.create_task(quick())
        assert task.done()
        now[0] += 10.0  # the creator holds the loop "10 s" more before it awaits
        await task

    asyncio.run(main())
    stats = asyncwatch.stats()[
        f"{HERE}.test_eager_task_that_finishes_at_once_is_timed_to_its_end.<locals>.quick"
    ]
    assert (stats.created, stats.ok, stats.in_flight) == (1, 1, 0)
    assert stats.duration.timed == 1
    assert stats.duration.max < 1.0, stats.duration


# ------------------------------------------------------------------ chaining and restoring


class MyTask(asyncio.Task):  # type: ignore[type-arg]
    """A Task subclass an app's own factory might return."""


def my_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
    return MyTask(coro, loop=loop, **kwargs)


def test_factory_set_before_install_is_chained() -> None:
    """An app factory already on the loop keeps running, and its Task class is kept."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.set_task_factory(my_factory)
    try:
        asyncwatch.install(metrics_exporters=("none",), raise_errors=True)
        task = loop.create_task(leaf())
        loop.run_until_complete(task)
        assert type(task) is MyTask
        assert created("leaf") == 1
        assert loop.get_task_factory() is my_factory
        asyncwatch.uninstall()
        assert loop.get_task_factory() is my_factory
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.mark.usefixtures("watch")
def test_factory_set_after_install_is_chained_and_still_observed() -> None:
    """The app replacing the factory later does not stop observation; it sees its own."""
    seen: dict[str, Any] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(my_factory)
        seen["factory"] = loop.get_task_factory()
        seen["type"] = type(asyncio.create_task(leaf()))
        await asyncio.sleep(0)
        loop.set_task_factory(None)
        seen["after_none"] = loop.get_task_factory()
        await asyncio.create_task(leaf())

    asyncio.run(main())
    assert seen == {"factory": my_factory, "type": MyTask, "after_none": None}
    assert created("leaf") == 2


@pytest.mark.usefixtures("watch")
def test_factory_that_chains_to_previous_does_not_loop() -> None:
    """A factory wrapping 'the previous factory' (as aiomonitor's does) cannot recurse into us."""
    calls: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        previous = loop.get_task_factory()

        def wrapping(lp: Any, coro: Any, **kw: Any) -> Any:
            calls.append(coro.__qualname__)
            if previous is None:
                return asyncio.Task(coro, loop=lp, **kw)
            return previous(lp, coro, **kw)

        loop.set_task_factory(wrapping)
        await asyncio.create_task(leaf())

    asyncio.run(main())
    assert calls.count("leaf") == 1
    assert created("leaf") == 1


@pytest.mark.usefixtures("watch")
def test_invalid_factory_is_refused_as_asyncio_would() -> None:
    """set_task_factory with a non-callable raises asyncio's own TypeError."""

    async def main() -> None:
        with pytest.raises(TypeError, match="task factory must be a callable or None"):
            asyncio.get_running_loop().set_task_factory(42)  # type: ignore[arg-type]

    asyncio.run(main())


def test_uninstall_restores_loops_and_classes_exactly() -> None:
    """After uninstall, running loops have their original factory and classes are untouched."""
    init = asyncio.BaseEventLoop.__init__
    seen: dict[str, Any] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen["before"] = loop.get_task_factory()
        asyncwatch.install(metrics_exporters=("none",))
        seen["hooked"] = type(loop)._task_factory if False else loop._task_factory  # type: ignore[attr-defined]
        asyncwatch.uninstall()
        seen["after"] = loop._task_factory  # type: ignore[attr-defined]
        await asyncio.create_task(leaf())

    asyncio.run(main())
    assert seen["before"] is None
    assert isinstance(getattr(seen["hooked"], "__self__", None), LoopHook)
    assert seen["after"] is None
    assert asyncio.BaseEventLoop.__init__ is init
    assert "__init__" in asyncio.BaseEventLoop.__dict__


def test_install_and_uninstall_are_idempotent() -> None:
    """install() twice returns the same Watch; uninstall() twice is harmless."""
    first = asyncwatch.install(metrics_exporters=("none",))
    assert asyncwatch.install() is first
    asyncwatch.uninstall()
    asyncwatch.uninstall()
    assert asyncwatch.current() is None
    assert asyncwatch.stats().installed is False


def test_uninstall_leaves_a_later_patch_alone() -> None:
    """If someone patched over asyncwatch's class attribute, uninstall does not undo theirs."""
    original = asyncio.BaseEventLoop.get_task_factory
    asyncwatch.install(metrics_exporters=("none",))
    ours = asyncio.BaseEventLoop.get_task_factory

    def theirs(self: Any) -> Any:
        return ours(self)

    asyncio.BaseEventLoop.get_task_factory = theirs  # type: ignore[method-assign]
    try:
        asyncwatch.uninstall()
        assert asyncio.BaseEventLoop.get_task_factory is theirs
    finally:
        asyncio.BaseEventLoop.get_task_factory = original  # type: ignore[method-assign]


# ------------------------------------------------------------------ other loops and libraries


uvloop = pytest.importorskip("uvloop") if sys.platform != "win32" else None


@pytest.mark.usefixtures("watch")
def test_uvloop_loops_are_instrumented_and_get_context() -> None:
    """uvloop's loops are instrumented and context= reaches them (Sentry's crash)."""
    assert uvloop is not None
    seen: dict[str, str] = {}

    async def reads() -> None:
        seen["value"] = var.get()

    async def main() -> None:
        ctx = contextvars.copy_context()
        ctx.run(var.set, "from-context")
        await asyncio.get_running_loop().create_task(reads(), context=ctx)
        await asyncio.gather(leaf(), leaf())

    uvloop.run(main())
    assert seen["value"] == "from-context"
    assert created("leaf") == 2


@pytest.mark.usefixtures("watch")
def test_anyio_cancel_scopes_still_work() -> None:
    """anyio's cancellation (which ddtrace's coroutine wrapper broke) works unchanged."""
    anyio = pytest.importorskip("anyio")
    seen: dict[str, Any] = {}

    async def main() -> None:
        with anyio.move_on_after(0.01) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 3600)
                tg.start_soon(anyio.sleep, 3600)
        seen["cancelled"] = scope.cancelled_caught

    anyio.run(main)
    assert seen["cancelled"] is True


# ------------------------------------------------------------------ never breaking the host


def test_internal_error_is_counted_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure inside the hook never reaches the app: the task is made, the error counted."""
    from asyncwatch.tasks._recorder import Shard

    def broken(self: Shard, coro: Any) -> Any:
        raise RuntimeError("asyncwatch bug")

    monkeypatch.setattr(Shard, "stats_for", broken)
    asyncwatch.install(metrics_exporters=("none",))

    async def main() -> str:
        return await asyncio.create_task(leaf())

    assert asyncio.run(main()) == "leaf"
    watch = asyncwatch.current()
    assert watch is not None
    assert watch.faults.counts["task_factory"] >= 1
    assert sum("internal error in the task_factory hook" in r.message for r in caplog.records) == 1


def test_hook_switches_off_after_repeated_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hook that keeps failing stops trying; the app keeps working."""
    from asyncwatch.tasks._recorder import Shard

    def broken(self: Shard, coro: Any) -> Any:
        raise RuntimeError("asyncwatch bug")

    monkeypatch.setattr(Shard, "stats_for", broken)
    watch = asyncwatch.install(metrics_exporters=("none",))

    async def main() -> None:
        await asyncio.gather(*[leaf() for _ in range(250)])

    asyncio.run(main())
    assert watch.faults.counts["task_factory"] == watch.faults.limit
    assert watch.tasks.active is False


def test_strict_mode_raises_internal_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """With raise_errors (ASYNCWATCH_RAISE=1) internal errors surface, for our own tests."""
    from asyncwatch.tasks._recorder import Shard

    def broken(self: Shard, coro: Any) -> Any:
        raise RuntimeError("asyncwatch bug")

    monkeypatch.setattr(Shard, "stats_for", broken)
    asyncwatch.install(metrics_exporters=("none",), raise_errors=True)
    loop = asyncio.new_event_loop()
    coro = leaf()
    try:
        with pytest.raises(RuntimeError, match="asyncwatch bug"):
            loop.create_task(coro)  # noqa: RUF006 - it raises; there is no task to keep
    finally:
        coro.close()
        loop.close()
