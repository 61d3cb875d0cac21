"""The task path's two hot functions in Python: the twin of the compiled ``_fastpath``.

``StatsCore`` holds a coroutine's counters and its done-callback; ``HookCore`` holds the task
factory's lookup and the untimed task's path (steps 1, 2 and 5 of ``_path``'s walk).
``_path.TaskStats`` and ``_path.LoopHook`` subclass whichever twin is in use (``_path``
chooses; ``ASYNCWATCH_NO_EXTENSIONS=1`` forces this one) and add everything else: first
sight of a coroutine (``_lookup``), timed and spanned tasks (``_slow``), error counting
(``error``) and fault reports (``fault``).

The two twins do the same thing line for line; ``tests/test_fastpath.py`` runs both on the same
cases, and ``./scripts/test`` runs the task tests on each. A change here is a change there.
"""

from __future__ import annotations

import asyncio
import asyncio.tasks as _asyncio_tasks
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import contextvars

    from ._path import TaskStats


class StatsCore:
    """Per-coroutine counters and the done-callback (pure Python)."""

    __slots__ = ("cancelled", "created", "done", "done_cb", "failed", "next_at", "peak")

    created: int
    done: int
    peak: int
    cancelled: int
    failed: int
    next_at: int
    done_cb: Callable[[asyncio.Task[Any]], None]

    fault: Callable[[str, BaseException], object]  # TaskStats's slot: the Watch's fault sink

    def error(self, exc: BaseException) -> None:  # pragma: no cover - TaskStats has it
        raise NotImplementedError

    def on_done(self, task: asyncio.Task[Any]) -> None:
        """Done-callback: count the task's outcome without retrieving its exception."""
        try:
            self.done += 1
            if task.cancelled():
                self.cancelled += 1
                return
            # Read the private slot, not .exception(): calling that marks the exception as
            # retrieved and would silence asyncio's "exception was never retrieved" warning.
            try:
                exc = task._exception
            except AttributeError:  # a Future-like from a custom factory without the slot
                return
            if exc is not None:
                self.error(exc)
        except Exception as exc:  # never let asyncio report our error as the app's
            self.fault("task_done", exc)


class HookCore:
    """The task factory's hot path (pure Python)."""

    __slots__ = ("by_code", "inner", "requests")

    by_code: dict[int, TaskStats]
    inner: Callable[..., Any] | None
    requests: contextvars.ContextVar[Any] | None

    def _lookup(self, coro: Any) -> TaskStats | None:  # pragma: no cover - LoopHook has it
        raise NotImplementedError

    def _create(self, loop: asyncio.AbstractEventLoop, coro: Any, kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError  # pragma: no cover - LoopHook has it

    def _slow(
        self,
        stats: TaskStats,
        created: int,
        loop: asyncio.AbstractEventLoop,
        coro: Any,
        kwargs: dict[str, Any],
    ) -> Any:  # pragma: no cover - LoopHook has it
        raise NotImplementedError

    def fault(self, hook: str, exc: BaseException) -> None:  # pragma: no cover - ditto
        raise NotImplementedError

    def _factory(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        # The hot path: every line here runs for every task in the app (see benchmarks/).
        try:
            stats = self.by_code[id(coro.cr_code)]
        except (AttributeError, KeyError):
            found = self._lookup(coro)
            if found is None:
                return self._create(loop, coro, kwargs)
            stats = found
        created = stats.created + 1
        if created >= stats.next_at:  # timed or spanned
            return self._slow(stats, created, loop, coro, kwargs)
        # Untimed task, the common case: two counter writes and a bound done-callback.
        inner = self.inner
        if inner is not None:
            task = inner(loop, coro, **kwargs)
        elif kwargs:
            task = _asyncio_tasks.Task(coro, loop=loop, **kwargs)
        else:
            task = _asyncio_tasks.Task(coro, loop=loop)
        try:
            # Re-read, not the count taken above: an eager task (3.12+) runs its first step
            # inside the call above, and tasks it creates there re-enter this hook and
            # count themselves first; writing the old figure back would lose them.
            created = stats.created + 1
            stats.created = created
            in_flight = created - stats.done
            if in_flight > stats.peak:  # noqa: PLR1730 - a compare is cheaper than max()
                stats.peak = in_flight
            requests = self.requests
            if requests is None:
                task.add_done_callback(stats.done_cb)
            else:  # one ContextVar read, only while an ASGI middleware is active
                request = requests.get(None)
                if request is None:
                    task.add_done_callback(stats.done_cb)
                else:  # created while handling a request: counted for it too
                    task.add_done_callback(request.done_callback(stats))
        except Exception as exc:
            self.fault("task_factory", exc)
        return task
