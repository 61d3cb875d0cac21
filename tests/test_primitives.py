"""Lock/Semaphore/Condition ownership tracking: right holders, same behaviour, exact restore."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import asyncwatch
from asyncwatch.sync._inline import _stdlib_body
from asyncwatch.sync._state import STATE_ATTR, PrimitiveObserver, PrimitiveState, state_of
from asyncwatch.testing import settle

from .deadlock_helpers import install, line_of

HERE = __file__
CLASSES = (
    asyncio.Lock,
    asyncio.Semaphore,
    asyncio.BoundedSemaphore,
    asyncio.Condition,
    asyncio.Event,
    asyncio.Queue,
)


def class_attributes() -> dict[type, dict[str, Any]]:
    return {cls: dict(vars(cls)) for cls in CLASSES}


def test_with_only_the_advisor_only_semaphores_are_patched() -> None:
    """Deadlock detection off, advisor on (its queue metrics off): Lock, Condition, Event and
    Queue keep their own methods (nothing to pay per Event a server makes per request);
    semaphores are tracked. With the queue metrics on, only Queue.get and Queue.put change."""
    before = class_attributes()
    install(deadlock_detection=False, advisor=True)
    try:
        queue = before[asyncio.Queue]
        changed = {k for k, v in vars(asyncio.Queue).items() if queue.get(k) is not v}
        assert changed == {"get", "put"}
    finally:
        asyncwatch.uninstall()
    install(deadlock_detection=False, advisor=True, advisor_queues=False)
    try:
        for cls in (asyncio.Lock, asyncio.Condition, asyncio.Event, asyncio.Queue):
            assert dict(vars(cls)) == before[cls], cls
        assert asyncio.Semaphore.__dict__["acquire"] is not before[asyncio.Semaphore]["acquire"]
        assert state_of(asyncio.Semaphore(2)) is not None
    finally:
        asyncwatch.uninstall()
    assert class_attributes() == before


def test_uninstall_restores_the_classes_exactly() -> None:
    """After uninstall every attribute of Lock, Semaphore, Condition... is the original."""
    before = class_attributes()
    install()
    assert asyncio.Lock.__dict__["acquire"] is not before[asyncio.Lock]["acquire"]
    asyncwatch.uninstall()
    after = class_attributes()
    for cls in CLASSES:
        assert after[cls].keys() == before[cls].keys()
        for name, value in before[cls].items():
            assert after[cls][name] is value, (cls, name)


def test_a_later_patch_by_someone_else_is_left_in_place() -> None:
    """If the app patched Lock.acquire after install, uninstall does not undo the app's."""
    original = asyncio.Lock.__dict__["acquire"]
    install()
    ours = asyncio.Lock.__dict__["acquire"]

    async def theirs(self: asyncio.Lock) -> bool:
        return bool(await ours(self))

    asyncio.Lock.acquire = theirs  # type: ignore[method-assign]
    try:
        asyncwatch.uninstall()
        assert asyncio.Lock.__dict__["acquire"] is theirs
    finally:
        asyncio.Lock.acquire = original  # type: ignore[method-assign]


async def test_tracked_init_makes_the_same_objects_and_errors() -> None:
    """The generated __init__ leaves each object as the original would (plus the state
    attribute), raises the same errors naming the same method, and notes the creation site.
    Lock and Event run the stdlib's two stores in place (their source and code are
    recognised); a class whose __init__ differs has its own called."""
    fresh = {cls: vars(cls()) for cls in (asyncio.Lock, asyncio.Event)}
    queue_state = {k: v for k, v in vars(asyncio.Queue(3)).items() if k != "_finished"}
    errors = {}
    for cls in (asyncio.Lock, asyncio.Event, asyncio.Queue):
        with pytest.raises(TypeError) as caught:
            cls(1, 2, 3)  # type: ignore[call-arg]
        errors[cls] = str(caught.value)
    install()
    assert _stdlib_body(asyncio.Lock.__dict__["__init__"].__wrapped__) is not None
    assert _stdlib_body(asyncio.Event.__dict__["__init__"].__wrapped__) is not None
    assert _stdlib_body(asyncio.Queue.__dict__["__init__"].__wrapped__) is None
    for cls, before in fresh.items():
        made = cls()  # created by the generated init
        state = state_of(made)
        assert state is not None and state.site is not None
        assert state.site[1] == line_of("created by the generated init", HERE)
        after = {k: v for k, v in vars(made).items() if k != STATE_ATTR}
        assert after == before
        assert all(type(after[k]) is type(v) for k, v in before.items())
    queue = asyncio.Queue(3)
    assert queue.maxsize == 3
    assert {k: v for k, v in vars(queue).items() if k not in ("_finished", STATE_ATTR)} == (
        queue_state
    )
    for cls, message in errors.items():
        with pytest.raises(TypeError) as caught:
            cls(1, 2, 3)  # type: ignore[call-arg]
        assert str(caught.value) == message

    class Changed:
        def __init__(self) -> None:
            self._waiters = None
            self._locked = True  # not the stdlib's body

    assert _stdlib_body(Changed.__init__) is None
    assert asyncio.Event().is_set() is False
    lock = asyncio.Lock()
    assert await lock.acquire() is True
    assert lock.locked()
    lock.release()


async def test_lock_holder_is_the_acquiring_task() -> None:
    """The holder is recorded on acquire and forgotten on release; the site is the caller."""
    install()
    lock = asyncio.Lock()  # made here
    state = state_of(lock)
    assert state is not None
    assert state.site is not None
    assert state.site[1] == line_of("made here", HERE)
    assert await lock.acquire() is True
    assert state.holder is asyncio.current_task()
    lock.release()
    assert state.holder is None
    with pytest.raises(RuntimeError, match="not acquired"):
        lock.release()


async def test_semaphore_holders_are_counted_per_task() -> None:
    """Each task's permits are counted; BoundedSemaphore still refuses an extra release."""
    install()
    sem = asyncio.BoundedSemaphore(3)
    state = state_of(sem)
    assert state is not None
    assert state.initial == 3
    entered = asyncio.Event()
    leave = asyncio.Event()

    async def hold_two() -> None:
        async with sem, sem:
            entered.set()
            await leave.wait()

    other = asyncio.create_task(hold_two())
    await entered.wait()
    async with sem:
        assert state.holders == {other: 2, asyncio.current_task(): 1}
        assert state.held() == 3
    leave.set()
    await other
    assert not state.holders
    assert state.held() == 0
    with pytest.raises(ValueError, match="released too many times"):
        sem.release()


async def test_release_by_another_task_makes_ownership_unknown() -> None:
    """A permit released by a task that did not take it: holders are no longer claimed."""
    install()
    sem = asyncio.Semaphore(1)
    state = state_of(sem)
    assert state is not None
    await sem.acquire()

    async def release_for_it() -> None:
        sem.release()

    await asyncio.create_task(release_for_it())
    assert state.uncertain
    assert not state.holders


async def test_condition_lock_is_tracked_through_the_condition() -> None:
    """A Condition's lock knows its Condition; wait() releases and re-acquires it."""
    install()
    cond = asyncio.Condition()
    lock_state = state_of(cond._lock)  # type: ignore[attr-defined]
    assert lock_state is not None
    assert lock_state.part_of is state_of(cond)
    assert lock_state.describe().startswith("the lock of Condition 'cond' created at")
    seen: list[Any] = []

    async def notifier() -> None:
        async with cond:
            seen.append(lock_state.holder)
            cond.notify()

    async with cond:
        me = asyncio.current_task()
        task = asyncio.create_task(notifier())
        await cond.wait()
        assert lock_state.holder is me
    await task
    assert seen == [task]
    assert lock_state.holder is None


async def test_cancelled_waiter_leaves_the_lock_consistent() -> None:
    """Cancelling a task waiting for a lock behaves as in bare asyncio."""
    install()
    lock = asyncio.Lock()
    await lock.acquire()
    waiter = asyncio.create_task(lock.acquire())
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    lock.release()
    assert not lock.locked()
    async with lock:
        assert state_of(lock).holder is asyncio.current_task()  # type: ignore[union-attr]


async def test_observer_gets_wait_times_only_for_contended_acquires() -> None:
    """PrimitiveObserver.acquired: waited_s is None when free, a duration when it waited."""
    watch, _ = install()
    calls: list[tuple[str, float | None]] = []

    class Recorder(PrimitiveObserver):
        def acquired(self, state: PrimitiveState, task: Any, waited_s: float | None) -> None:
            calls.append((state.kind, waited_s))

    watch.primitives.observe(Recorder())
    lock = asyncio.Lock()
    async with lock:
        contender = asyncio.create_task(lock.acquire())
        await settle()
    await contender
    lock.release()
    assert calls[0] == ("Lock", None)
    assert calls[1][0] == "Lock"
    assert calls[1][1] is not None
    assert calls[1][1] >= 0
    state = state_of(lock)
    assert state is not None
    assert state.waits == 1


async def test_objects_made_while_installed_still_work_after_uninstall() -> None:
    """A Condition created while installed keeps working (and tracking stops) afterwards."""
    install()
    cond = asyncio.Condition()
    sem = asyncio.Semaphore(1)
    asyncwatch.uninstall()
    async with cond:
        cond.notify_all()
    async with sem:
        pass
    assert not state_of(sem).holders  # type: ignore[union-attr]


async def test_reinstall_tracks_objects_from_an_earlier_install() -> None:
    """A lock made under one install is tracked by the next one, its site kept."""
    install()
    lock = asyncio.Lock()
    site = state_of(lock).site  # type: ignore[union-attr]
    asyncwatch.uninstall()
    watch, _ = install()
    async with lock:
        state = state_of(lock)
        assert state is not None
        assert state.tracker is watch.primitives
        assert state.holder is asyncio.current_task()
        assert state.site == site
