"""asyncwatch: observability and profiling middleware for asyncio applications.

The one line::

    import asyncwatch
    asyncwatch.install()

observes every asyncio task in the process (created, schedule delay, duration, outcome, in
flight, peak, memory) and serves the figures at http://127.0.0.1:9464/metrics, or wherever the
standard ``OTEL_*`` variables point. Without code changes: ``asyncwatch run -- python app.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Everything below is imported on first use (PEP 562 ``__getattr__``), so ``import asyncwatch``
# costs next to nothing and install() loads only what its configuration uses: no
# OpenTelemetry SDK, starlette, aiomonitor or yappi until something needs them.
_LAZY = {
    "AsyncWatchMiddleware": ".asgi._middleware",
    "AwaitChain": ".deadlock._report",
    "BlockedLoop": ".loopwatch._blocked",
    "Concurrency": ".advisor",
    "Config": "._core.config",
    "ConfigError": "._core.config",
    "CoroutineProfile": ".profiler._profiling",
    "CoroutineStats": ".tasks._stats",
    "DeadlockFinding": ".deadlock._report",
    "Finding": "._core.findings",
    "Frame": "._core.findings",
    "FunctionProfile": ".profiler._profiling",
    "Gate": ".advisor",
    "Percentiles": ".tasks._stats",
    "PrimitiveInfo": ".deadlock._report",
    "ProcessStats": ".tasks._stats",
    "ProfileReport": ".profiler._profiling",
    "ProfileSession": ".profiler._profiling",
    "ProfilerBusy": ".profiler._profiling",
    "Recommendation": ".advisor",
    "Stats": ".tasks._stats",
    "StuckTaskFinding": ".deadlock._report",
    "Watch": "._watch",
    "idle": ".deadlock._idle",
    "profile": ".profiler._profiling",
    "profile_sync": ".profiler._profiling",
    "profiling": ".profiler._profiling",
}

if TYPE_CHECKING:
    from . import testing as testing
    from ._core.config import Config, ConfigError
    from ._core.findings import Finding, Frame
    from ._watch import Watch as Watch
    from .advisor import Advisor, Concurrency, Gate, Recommendation
    from .asgi._middleware import AsyncWatchMiddleware
    from .deadlock._idle import idle
    from .deadlock._report import AwaitChain, DeadlockFinding, PrimitiveInfo, StuckTaskFinding
    from .loopwatch._blocked import BlockedLoop
    from .profiler._profiling import (
        CoroutineProfile,
        FunctionProfile,
        ProfilerBusy,
        ProfileReport,
        ProfileSession,
        profile,
        profile_sync,
        profiling,
    )
    from .tasks._stats import CoroutineStats, Percentiles, ProcessStats, Stats


def __getattr__(name: str) -> Any:
    import importlib

    if name == "testing":  # the public test helpers, a submodule loaded on first use
        return importlib.import_module(".testing", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name == "AsyncWatchMiddleware":
        # the Watch module tells the middleware how to install asyncwatch when the app adds
        # the middleware first (it never imports the Watch itself)
        importlib.import_module("._watch", __name__)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "testing"})


__all__ = [
    "AsyncWatchMiddleware",
    "AwaitChain",
    "BlockedLoop",
    "Concurrency",
    "Config",
    "ConfigError",
    "CoroutineProfile",
    "CoroutineStats",
    "DeadlockFinding",
    "Finding",
    "Frame",
    "FunctionProfile",
    "Gate",
    "Percentiles",
    "PrimitiveInfo",
    "ProcessStats",
    "ProfileReport",
    "ProfileSession",
    "ProfilerBusy",
    "Recommendation",
    "Stats",
    "StuckTaskFinding",
    "Watch",
    "__version__",
    "advise",
    "batch",
    "concurrency",
    "current",
    "findings",
    "gate",
    "idle",
    "install",
    "profile",
    "profile_sync",
    "profiling",
    "rejected",
    "stats",
    "testing",
    "uninstall",
]


def install(
    config: Config | None = None,
    /,
    *,
    metric_readers: Sequence[Any] = (),
    tracer_provider: Any = None,
    **settings: Any,
) -> Watch:
    """Observe every asyncio task in this process. Idempotent; returns the running ``Watch``.

    Called before any event loop exists, it instruments every loop created afterwards
    (``asyncio.run``, ``asyncio.Runner``, ``new_event_loop``, uvloop); called inside a running
    loop, it instruments that loop too. Settings come from ``config`` (default
    ``Config.from_env()``, i.e. the ``ASYNCWATCH_*`` variables) overridden by keyword
    arguments, e.g. ``install(prometheus_port=9100)``. A bad value raises ``ConfigError``
    naming the setting; nothing else asyncwatch does ever raises into your code.

    ``metric_readers``: extra OpenTelemetry ``MetricReader`` objects to attach to
    asyncwatch's own MeterProvider (e.g. an ``InMemoryMetricReader`` in tests).
    ``tracer_provider``: the OpenTelemetry ``TracerProvider`` for asyncwatch's spans (default:
    the global one if the app set an SDK provider, else asyncwatch's own).
    """
    from ._watch import install as _install

    return _install(
        config, metric_readers=metric_readers, tracer_provider=tracer_provider, **settings
    )


def uninstall(timeout_s: float | None = None) -> None:
    """Stop observing and put back every task factory and class attribute install() changed.

    Exporters get a final flush bounded by ``timeout_s`` (default ``export_timeout_s``;
    ``math.inf`` waits up to an hour, a negative or nan value means the default).
    Idempotent. Also runs at interpreter exit.
    """
    from ._watch import uninstall as _uninstall

    _uninstall(timeout_s)


def current() -> Watch | None:
    """The running ``Watch``, or None when asyncwatch is not installed."""
    return _current_watch()


def _current_watch() -> Watch | None:
    watch = sys.modules.get(__name__ + "._watch")
    return None if watch is None else watch.current()


def stats() -> Stats:
    """A snapshot per coroutine name: created, in flight, peak, ok/error/cancelled counts, and
    duration and schedule-delay percentiles (p50/p95/p99), plus process figures.

    Empty (``installed=False``) when asyncwatch is not installed. The process figures are
    read from ``/proc`` (through psutil) at the call: a few small file reads, well under a
    millisecond, but file I/O all the same. An app whose blocking-call detector (blockbuster)
    guards the event loop calls it through ``asyncio.to_thread(asyncwatch.stats)``. Nothing
    else of asyncwatch's opens a file on the loop's thread.
    """
    watch = _current_watch()
    if watch is None:
        from .tasks._stats import Stats

        return Stats(installed=False)
    return watch.stats()


def findings(kind: str | None = None, *, grouped: bool = True) -> list[Finding]:
    """What asyncwatch's detectors found, oldest first; only ``kind`` if given
    (e.g. ``"blocked_loop"``, ``"deadlock"``, ``"stuck_task"``). Bounded per kind.

    Repeats are grouped by site (a blocked loop's culprit line and route): one finding per
    site, its newest occurrence, with ``count``, ``first_seen``, ``last_seen``, ``worst_s``,
    ``typical_s`` (median) and a few ``exemplars`` stacks. ``grouped=False``: every
    occurrence still kept, each with ``count=1``.

    Empty when asyncwatch is not installed.
    """
    watch = _current_watch()
    if watch is None:
        return []
    return watch.findings.list(kind, grouped=grouped)


def advise() -> list[Recommendation]:
    """What to change: thread/process pool sizes, concurrency limits, batch sizes, processes.

    Each ``Recommendation`` names its ``target`` and ``knob`` (``max_workers``,
    ``concurrency_limit``, ``batch_size`` or ``processes``), the ``current`` and ``suggested``
    values, the ``expected_gain``, the ``evidence`` (figures measured while installed, in plain
    words; the model's terms are in ``detail``) and a ``confidence``; ``summary`` says what was
    seen and what to do. One entry per knob watched, of one ``kind``: ``advice`` (a value to
    set), ``need_data`` (``suggested`` None, ``need``: the runs to make) or ``no_change``
    (``reason``: why it is where it should be). Changes first, largest expected gain first.
    Empty when nothing has been watched yet, or when asyncwatch (or its advisor) is not
    installed.
    """
    watch = _current_watch()
    advisor = getattr(watch, "advisor", None)
    if advisor is None or not advisor.active:
        return []
    recommendations: list[Recommendation] = advisor.advise()
    return recommendations


def batch(name: str, size: int | Callable[..., int], *, budget_s: float | None = None) -> Any:
    """Record one of your own batches, so the advisor can suggest a batch size.

    As a context manager (``with`` or ``async with``)::

        with asyncwatch.batch("db-insert", size=len(rows)):
            db.insert_many(rows)

    or as a decorator, ``size`` being a callable given the function's arguments::

        @asyncwatch.batch("embed", size=lambda texts: len(texts))
        async def embed(texts): ...

    ``budget_s`` is the most one batch may take (default ``advisor_batch_budget_s``). Batches
    that raise are not recorded. Costs two clock reads per batch; a no-op when asyncwatch is not
    installed.
    """
    from .advisor._advisor import make_batch

    return make_batch(_running_advisor, name, size, budget_s)


def _running_advisor() -> Advisor | None:
    advisor: Advisor | None = getattr(_current_watch(), "advisor", None)
    return advisor


def concurrency(name: str, limit: int | None = None, *, backlog: Any = None) -> Concurrency:
    """Mark one unit of work running under your own concurrency limit (a worker pool, a gate),
    so the advisor can suggest the limit::

        async def worker():
            while True:
                job = await queue.get()
                with asyncwatch.concurrency("runner", limit=N_WORKERS, backlog=queue):
                    await run(job)

    ``backlog``: the queue feeding it (anything with ``qsize()``) or a callable returning how
    many jobs wait, so waiting is measured too. A no-op when asyncwatch is not installed.
    """
    watch = _current_watch()
    advisor = getattr(watch, "advisor", None)
    from .advisor._limits import make_concurrency

    return make_concurrency(getattr(advisor, "limits", None), name, limit, backlog)


def rejected() -> None:
    """Mark the current task's hold of a concurrency limit (a semaphore, or
    ``asyncwatch.concurrency``) as failed though nothing was raised: a 429, a throttled or
    rejected response. The advisor counts only successful holds as throughput, so a limit
    where the backend starts refusing work is not mistaken for a fast one::

        async with sem:
            response = await client.post(url, json=body)
            if response.status_code == 429:
                asyncwatch.rejected()

    Holds released while an exception propagates count as failed without it. A no-op outside
    a task or when asyncwatch is not installed (one weak reference to the task until it
    releases or ends).
    """
    from .advisor._limits import mark_rejected

    mark_rejected()


def gate(name: str, *, rpm: float | None = None, tpm: float | None = None, tokens: int = 0) -> Gate:
    """Measure the wait at a rate gate (requests and tokens per minute, as LLM APIs meter):
    put it around your limiter's wait, per request::

        async with asyncwatch.gate("openai", rpm=RPM, tpm=TPM, tokens=prompt_tokens):
            await rpm_limiter.acquire()           # e.g. aiolimiter.AsyncLimiter
            await tpm_limiter.acquire(prompt_tokens)

    Exported per gate name: requests and tokens through it (``asyncwatch.gate.passes``), the
    declared limits (``asyncwatch.gate.limit``), the time callers waited inside
    (``asyncwatch.gate.wait.time``) and how many wait now (``asyncwatch.gate.waiting``). It
    never waits itself; 100 names at most (then ``_OTHER``). A no-op when asyncwatch is not
    installed.
    """
    watch = _current_watch()
    advisor = getattr(watch, "advisor", None)
    from .advisor._gates import make_gate

    return make_gate(getattr(advisor, "gates", None), name, rpm, tpm, tokens)
