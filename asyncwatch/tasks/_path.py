"""The task path: one task, from the factory call to its done-callback, and the per-task
sampling state that decides which tasks are timed.

Every task created on an instrumented loop goes this way (``_hook`` installs the factory on the
loop, ``_recorder`` aggregates what is counted here):

The hot path (steps 1, 2 and 5 for an untimed task) is ``HookCore._factory`` and
``StatsCore.on_done``, which ``LoopHook`` and ``TaskStats`` inherit from one of two twins: the
compiled ``_fastpath`` (C, built by ``setup.py`` where a compiler is present) or
``_purepath`` (Python, the fallback, or forced with ``ASYNCWATCH_NO_EXTENSIONS=1``).

1. ``HookCore._factory`` finds the coroutine's ``TaskStats`` by its code object (``by_code``);
   a coroutine seen for the first time is named and given its slot by ``Shard.stats_for``.
2. An untimed task (``created < next_at``, the common case) is made by the chained factory or
   ``asyncio.Task``; ``created`` and ``peak`` are bumped and ``TaskStats.on_done`` (bound once,
   ``done_cb``) is its done-callback, or the request's combined callback while an ASGI
   request is being handled.
3. Otherwise ``LoopHook._slow``: the task is timed when ``created`` reached ``sample_at`` and
   gets a span by its coroutine's ``span`` share. A ``_Timed`` record keeps the creation time
   and the weight; ``TaskStats.schedule_sample`` picks the next timed task; ``_Timed.mark`` is
   queued before the Task exists, so it runs just ahead of the first step and measures the
   schedule delay; the span is started by the ``TaskSpans`` of asyncwatch's tracer (``_spans``).
4. A task that took its first step inside the factory (an eager task, 3.12+) has no schedule
   delay; one that also finished there is completed at once.
5. At the end, ``_Timed.done`` counts the outcome (``TaskStats.on_done``), adds the run
   duration of a timed task and ends the span; an untimed task's ``on_done`` only counts.

Sampling: every task is counted (created, in flight, outcome), but only about ``timed_per_s``
tasks per second per coroutine are timed (schedule delay and run duration), each sample
weighted by the number of tasks it stands for (``weight``). The stride adapts to the rate
every ``_WINDOW_S`` or ``_WINDOW_N`` tasks, whichever comes first, and is jittered so periodic
workloads cannot alias with it; strides are remembered per coroutine name (``memo``, shared
by the recorder's shards), and a reader shortens a stride left long by a burst that has
passed (``retune``). Tasks of a coroutine
that gets spans all take the slow path (``next_at`` stays 0) but are timed at the same rate.

The hot path (``HookCore._factory`` and ``StatsCore.on_done``) does no allocation, string
work, locking or clock reads for untimed tasks: a dict lookup by code object, a few integer
bumps and one bound done-callback. Timed tasks also read the clock and schedule one ``mark``
callback just ahead of the task's first step.

Nothing the app can see changes: the Task object is the one the chained factory or
``asyncio.Task`` made; the coroutine is not wrapped (``get_coro()``, ``get_stack()``, frames
and cancellation semantics are untouched); names are never set here; contextvars are only
touched for tasks that get a span, and only in the task's own fresh copy.
"""

from __future__ import annotations

import asyncio
import asyncio.tasks as _asyncio_tasks
import contextvars
import inspect
import random
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core.imports import twin
from .._core.measure import ErrorOverflow, Histogram, clock
from .._core.names import TASK_NAME

if TYPE_CHECKING:
    from ._hook import TaskWatcher
    from ._purepath import HookCore, StatsCore
    from ._recorder import Shard


#: Which hot path is in use, "compiled (file)" or "pure Python (why)": ``asyncwatch config``
#: prints it.
ACCELERATOR: str
if not TYPE_CHECKING:
    # _fastpath is built by setup.py when it can (stub: _fastpath.pyi)
    _core, ACCELERATOR = twin(__package__, "_fastpath", "_purepath")
    HookCore, StatsCore = _core.HookCore, _core.StatsCore

_EAGER_POSSIBLE = sys.version_info >= (3, 12)

TaskFactory = Callable[..., Any]
FaultSink = Callable[[str, BaseException], object]


class LoopHook(HookCore):
    """The task factory installed on one loop; chains to ``inner``. The factory itself
    (``_factory``) and the fields it reads (``by_code``, ``inner``, ``requests``) are
    ``HookCore``'s, compiled or pure Python."""

    __slots__ = (
        "__weakref__",
        "_ctx",
        "active",
        "attached",
        "factory",
        "inner_takes_context",
        "shard",
        "spans",
        "watcher",
    )

    def __init__(self, watcher: TaskWatcher, shard: Shard, inner: TaskFactory | None) -> None:
        self.watcher = watcher
        self.shard = shard
        self.by_code = shard.by_code  # the same dict, one attribute hop closer
        self.active = True  # False once uninstalled or switched off after repeated faults
        self.attached = False  # on_loop ran (the loop has run since it was instrumented)
        self.inner = inner
        self.inner_takes_context = _takes_context(inner)
        # Empty context the mark callbacks run in: one per loop (a Context may be entered by
        # one thread at a time, and each loop runs on one thread).
        self._ctx = contextvars.Context()
        self.factory = self._factory  # bound once: this exact object is what the loop holds
        # The ASGI middleware's request ContextVar once a middleware is active, else None:
        # tasks created while a request is handled are counted per request (its on_task).
        self.requests: contextvars.ContextVar[Any] | None = watcher.requests
        # The TaskSpans that starts and ends this loop's task spans, for asyncwatch's tracer
        # (one per Watch, kept until uninstalled: then this hook passes every task through).
        self.spans: Any = None

    def switch_off(self) -> None:
        """Pass every task straight through from now on (uninstalled or failing)."""
        self.active = False
        self.by_code = {}
        self.requests = None

    def set_inner(self, factory: TaskFactory | None) -> None:
        """The app set its own factory on this loop: keep observing and chain to it."""
        self.inner = factory
        self.inner_takes_context = _takes_context(factory)

    def _create(self, loop: asyncio.AbstractEventLoop, coro: Any, kwargs: dict[str, Any]) -> Any:
        inner = self.inner
        if inner is not None:
            return inner(loop, coro, **kwargs)
        return _asyncio_tasks.Task(coro, loop=loop, **kwargs)

    def _lookup(self, coro: Any) -> TaskStats | None:
        if not self.active:
            return None  # switched off: by_code was emptied, so every task comes here
        try:
            return self.shard.stats_for(coro)
        except Exception as exc:
            self.fault("task_factory", exc)
            return None

    def _slow(
        self,
        stats: TaskStats,
        created: int,
        loop: asyncio.AbstractEventLoop,
        coro: Any,
        kwargs: dict[str, Any],
    ) -> Any:
        rec: _Timed | None = None
        try:
            share = stats.span
            want_span = share >= 1.0 or (share > 0.0 and random.random() < share)
            sampled = created >= stats.sample_at
            if sampled or want_span:
                t0 = clock() if sampled else 0.0  # an untimed span needs no clock read
                rec = _Timed(self, stats, t0, stats.weight, sampled)
                if sampled:
                    stats.schedule_sample(t0, created)
                    # Queued before the Task exists, so it runs just ahead of its first step.
                    loop.call_soon(rec.mark, context=self._ctx)
                if want_span:
                    self._start_span(rec, stats, kwargs)
        except RuntimeError:
            rec = None  # a closed loop: Task() below raises the app's own error
        except Exception as exc:
            self.fault("task_factory", exc)
            rec = None
        inner = self.inner
        if inner is not None:
            task = inner(loop, coro, **kwargs)
        else:
            task = _asyncio_tasks.Task(coro, loop=loop, **kwargs)
        try:
            created = stats.created + 1  # re-read: eager steps re-enter the hook (see _factory)
            stats.created = created
            in_flight = created - stats.done
            if in_flight > stats.peak:  # noqa: PLR1730 - a compare is cheaper than max()
                stats.peak = in_flight
            requests = self.requests
            if requests is not None:
                request = requests.get()
                if request is not None:
                    request.on_task(task)
            if rec is None:
                task.add_done_callback(stats.done_cb)
                return task
            if _EAGER_POSSIBLE and rec.start is None and _started(task, coro):
                rec.start = rec.t0  # ran eagerly inside the factory: no schedule delay
                if rec.sampled:
                    stats.delay.add(0.0, rec.weight)
                if task.done():
                    # Finished inside the factory: it ended now, not when a done-callback
                    # would get its turn after the creator's step (which may be long).
                    rec.done(task)
                    return task
            task.add_done_callback(rec.done)
        except Exception as exc:
            self.fault("task_factory", exc)
        return task

    def _start_span(self, rec: _Timed, stats: TaskStats, kwargs: dict[str, Any]) -> None:
        # kwargs is this factory call's own dict: the span's context is put in it.
        spans = self.spans
        if spans is None:  # the first span on this loop: the tracer is made now if deferred
            spans = self.spans = self.watcher.spans()
        rec.span = spans.start(stats.key, kwargs, self.inner_takes_context)

    def fault(self, hook: str, exc: BaseException) -> None:
        """Report an internal error; switch the whole task hook off if it keeps failing."""
        if self.watcher.faults.report(hook, exc):
            self.watcher.switch_off()


class _Timed:
    """Per-task record of a timed (sampled) or spanned task; alive only while the task is."""

    __slots__ = ("hook", "sampled", "span", "start", "stats", "t0", "weight")

    def __init__(self, hook: LoopHook, stats: TaskStats, t0: float, weight: int, sampled: bool):
        self.hook = hook
        self.stats = stats
        self.t0 = t0
        self.weight = weight
        self.sampled = sampled
        self.start: float | None = None
        self.span: Any = None

    def mark(self) -> None:
        """Runs just before the task's first step (queued ahead of it)."""
        try:
            if self.start is None:
                now = clock()
                self.start = now
                if self.sampled:
                    self.stats.delay.add(now - self.t0, self.weight)
        except Exception as exc:  # pragma: no cover - defensive
            self.hook.fault("task_mark", exc)

    def done(self, task: asyncio.Task[Any]) -> None:
        """Done-callback of a timed or spanned task."""
        try:
            stats = self.stats
            stats.on_done(task)
            span = self.span
            if self.sampled:
                now = clock()
                start = self.t0 if self.start is None else self.start
                stats.duration.add(now - start, self.weight)
                if span is not None:
                    self.span = None
                    attributes: dict[str, Any] = {TASK_NAME: task.get_name()}
                    if self.start is not None:
                        attributes["asyncwatch.task.schedule_delay"] = self.start - self.t0
                    self.hook.spans.end(span, task, attributes)
            elif span is not None:
                self.span = None
                self.hook.spans.end(span, task, {TASK_NAME: task.get_name()})
        except Exception as exc:
            self.hook.fault("task_done", exc)


class TaskStats(StatsCore):
    """Counters and sampling state for one coroutine name on one event loop. Written only by
    that loop's thread (``retune`` excepted, see there). The counters the hot path writes and
    the done-callback (``on_done``) are ``StatsCore``'s, compiled or pure Python.

    Only what must be counted per task is: ``created`` (factory), ``done``, ``cancelled`` and
    ``failed`` (done-callback). In flight (created - done) and ok (done - cancelled - failed)
    are derived when read, which keeps the hot path to a couple of writes.

    Sampling state (see the module docstring): the next timed task (``sample_at``), the next
    task to take the hook's slow path (``next_at``), how many tasks it stands for
    (``weight``), and the adaptive ``stride`` with its rate window (``win_t``, ``win_n``).
    """

    __slots__ = (
        "delay",
        "duration",
        "errors",
        "fault",
        "key",
        "max_errors",
        "memo",
        "sample_at",
        "span",
        "stride",
        "target",
        "weight",
        "win_n",
        "win_t",
    )

    def __init__(
        self,
        key: str,
        target_per_s: float,
        max_errors: int,
        span: float,
        memo: dict[str, float] | None = None,
        fault: FaultSink | None = None,
    ) -> None:
        self.key = key
        self.created = 0
        self.done = 0
        self.peak = 0
        self.cancelled = 0
        self.failed = 0
        self.errors: dict[type[BaseException], int] = {}
        self.max_errors = max_errors
        self.duration = Histogram()
        self.delay = Histogram()
        # The task hook takes its slow path when ``created`` reaches ``next_at``: for the next
        # timed sample (``sample_at``), or for every task of a coroutine that gets spans.
        self.sample_at = 1
        self.next_at = 0 if span > 0 else 1
        self.weight = 1  # how many tasks the next timed one stands for
        # Strides last seen for each key, shared by the recorder's shards: a new loop starts
        # at the rate the previous one ended with instead of timing every task for a while.
        self.memo = memo if memo is not None else {}
        self.stride = self.memo.get(key, 1.0)
        self.target = target_per_s
        self.win_t = clock()
        self.win_n = 0
        # span: 0 = no task spans; 1 = every task; in between = that fraction of tasks
        self.span = span
        # Where an error of our own in the done-callback goes (the Watch's Faults.report)
        self.fault: FaultSink = fault or _no_sink
        # Bound once: the hot path must not allocate a bound method per task.
        self.done_cb = self.on_done

    @property
    def in_flight(self) -> int:
        """Tasks created and not finished."""
        return self.created - self.done

    @property
    def ok(self) -> int:
        """Tasks that returned normally."""
        return self.done - self.cancelled - self.failed

    def error(self, exc: BaseException) -> None:
        """Count one failed task under its exception type (bounded)."""
        self.failed += 1
        kind: type[BaseException] = type(exc)
        errors = self.errors
        if kind in errors:
            errors[kind] += 1
        elif len(errors) < self.max_errors:
            errors[kind] = 1
        else:
            errors[ErrorOverflow] = errors.get(ErrorOverflow, 0) + 1

    def schedule_sample(self, now: float, created: int) -> None:
        """After a timed task: pick when the next one is (adaptive stride, jittered)."""
        elapsed = now - self.win_t
        # A window ends after _WINDOW_S, or early once a burst has made _WINDOW_N tasks:
        # otherwise a coroutine's first burst (a fresh loop, a short program) would be timed
        # task by task for a quarter of a second.
        if elapsed >= _WINDOW_S or (created - self.win_n >= _WINDOW_N and elapsed > 0.0):
            rate = (created - self.win_n) / elapsed
            self.stride = max(1.0, rate / self.target)
            self.win_t, self.win_n = now, created
            self.memo[self.key] = self.stride
        stride = self.stride
        skip = 1 if stride <= 1.0 else 1 + int(random.random() * (2.0 * stride - 1.0))
        self.weight = skip
        self.sample_at = created + skip
        if self.span <= 0:
            self.next_at = self.sample_at

    def retune(self, now: float) -> None:
        """From a reader's thread: shorten a stride left long by a burst that has passed."""
        elapsed = now - self.win_t
        if self.stride > 1.0 and elapsed >= 2.0:
            created = self.created
            stride = max(1.0, (created - self.win_n) / elapsed / self.target)
            if stride < self.stride:
                self.stride = stride
                self.win_t, self.win_n = now, created
                if self.sample_at - created > 2 * stride:
                    skip = max(1, int(stride))
                    self.weight = skip
                    self.sample_at = created + skip
                    if self.span <= 0:
                        self.next_at = self.sample_at


_WINDOW_S = 0.25  # how often the sampling stride adapts to a coroutine's task rate
_WINDOW_N = 256  # ... or sooner, after this many tasks (a burst: over 1,000 tasks a second)


def _no_sink(hook: str, exc: BaseException) -> None:
    pass


def _takes_context(factory: TaskFactory | None) -> bool:
    """Whether a chained factory accepts ``context=`` (so a span can be made current)."""
    if factory is None:
        return True
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or p.name == "context" for p in params)


def _started(task: asyncio.Task[Any], coro: Any) -> bool:
    """After the factory returned: did the task already take its first step (eager start)?"""
    if task.done():
        return True
    return bool(getattr(coro, "cr_suspended", False) or getattr(coro, "cr_running", False))
