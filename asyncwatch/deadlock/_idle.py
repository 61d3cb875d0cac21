"""``asyncwatch.idle()``: tell the stuck-task detector that a wait is meant to be long.

Works whether or not asyncwatch is installed, as a context manager (plain or ``async with``)
or as a decorator of a coroutine function::

    with asyncwatch.idle():
        await shutdown_requested.wait()

    @asyncwatch.idle
    async def listen_forever(): ...

Marks are kept per task (weakly: a finished task is forgotten) and cost nothing elsewhere.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, overload

from .._core.aio import current_task

F = TypeVar("F", bound=Callable[..., Any])

_MARKED: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def is_idle(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is inside an ``idle()`` block right now."""
    try:
        return task in _MARKED
    except TypeError:
        return False


class IdleMarker:
    """The object ``idle()`` returns: a context manager and a decorator."""

    def __enter__(self) -> IdleMarker:
        task = current_task()
        if task is not None:
            _MARKED[task] = _MARKED.get(task, 0) + 1
        return self

    def __exit__(self, *exc: object) -> None:
        task = current_task()
        if task is None:
            return
        count = _MARKED.get(task, 0)
        if count <= 1:
            _MARKED.pop(task, None)
        else:
            _MARKED[task] = count - 1

    async def __aenter__(self) -> IdleMarker:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def marked(*args: Any, **kwargs: Any) -> Any:
                with IdleMarker():
                    return await func(*args, **kwargs)

            return marked  # type: ignore[return-value]
        raise TypeError("asyncwatch.idle decorates coroutine functions (async def)")


@overload
def idle() -> IdleMarker: ...
@overload
def idle(func: F, /) -> F: ...
def idle(func: Any = None, /) -> Any:
    """Mark waits as expected to last: the stuck-task detector never reports a task while it
    is inside ``with idle():`` / ``async with idle():`` or a coroutine decorated ``@idle``.

    Deadlocks are reported regardless. Without asyncwatch installed this does nothing.
    For code you cannot change, list its coroutines in the ``idle_coroutines`` setting.
    """
    if func is None:
        return IdleMarker()
    return IdleMarker()(func)
