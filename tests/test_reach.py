"""The reference walk behind stuck-task verdicts: roots, private holders, hidden references."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from asyncwatch.deadlock._reach import REACHABLE, UNKNOWN, UNREACHABLE, direct, reach


class Thing:
    pass


GLOBAL = Thing()
# The verdicts are under test here, not reach()'s 0.1 s budget: one heap pass over a long test
# session's heap takes tens of ms, more on a loaded machine, and the budget would answer UNKNOWN.
UNHURRIED = 60.0


def test_a_module_global_is_reachable() -> None:
    """An object a module holds is reachable (through the module's namespace)."""
    verdict = reach([GLOBAL], set(), max_s=UNHURRIED)
    assert verdict.outcome == REACHABLE
    assert verdict.root.startswith("module")


def test_a_local_of_running_code_is_never_claimed_unreachable() -> None:
    """A reference gc cannot list (a plain function's local) makes the verdict unknown."""
    thing = Thing()
    box = [thing]
    verdict = reach([box[0]], {id(box)}, max_s=UNHURRIED)
    assert thing is box[0]
    assert verdict.outcome == UNKNOWN


def test_held_only_by_private_containers_is_unreachable() -> None:
    """An object only private holders reference, through a plain object, is unreachable."""
    box: list[Any] = [Thing()]
    owner = Thing()
    owner.__dict__["inner"] = box.pop()
    holder = [owner]
    del owner
    verdict = reach([holder[0].__dict__["inner"]], {id(holder)}, max_s=UNHURRIED)
    assert verdict.outcome == UNREACHABLE


def test_a_thread_local_variable_is_a_hidden_reference() -> None:
    """An object a running thread holds in a plain local is never declared unreachable."""
    ready, leave = threading.Event(), threading.Event()
    box: list[Any] = [Thing()]
    before = reach([box[0]], {id(box)}, max_s=UNHURRIED)

    def hold() -> None:
        mine = box[0]
        ready.set()
        leave.wait()
        del mine

    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait()
    try:
        during = reach([box[0]], {id(box)}, max_s=UNHURRIED)
    finally:
        leave.set()
        thread.join()
    assert before.outcome == UNREACHABLE
    assert during.outcome == UNKNOWN


async def test_direct_check_sees_async_with_and_await_iterators() -> None:
    """A condition held only by a waiting coroutine (local, `async with`) is decided cheaply."""

    async def waits(cond: asyncio.Condition) -> None:
        async with cond:
            await cond.wait()

    def start() -> asyncio.Task[None]:
        return asyncio.create_task(waits(asyncio.Condition()))

    task = start()
    for _ in range(3):
        await asyncio.sleep(0)
    coros: list[Any] = []
    coro: Any = task.get_coro()
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        coros.append(coro)
        coro = coro.cr_await
    private = [task, *coros]
    # A one-item list, as `direct` takes it (3.14's `async with` keeps the object on the
    # frame's stack as well as in the local, so it is met twice among the referents).
    cond = [r for r in _referents(coros[0]) if isinstance(r, asyncio.Condition)][:1]
    verdict = direct(cond, private, [])
    cond.clear()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert verdict is not None
    assert verdict.outcome == UNREACHABLE
    assert verdict.held_by_user


def test_direct_check_defers_when_someone_else_holds_it() -> None:
    """Any reference from outside the private set sends the decision to the walk."""
    thing = [Thing()]
    other = [thing[0]]
    assert direct(thing, [], []) is None
    assert other


def _referents(obj: Any) -> list[Any]:
    import gc

    return gc.get_referents(obj)
