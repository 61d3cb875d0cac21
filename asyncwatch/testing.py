"""Helpers for testing an app that runs asyncwatch, as ``trio.testing`` and ``structlog.testing``
are for theirs. asyncwatch's own test suite uses them.

::

    import asyncwatch.testing as awt

    async def test_a_worker_nobody_wakes_is_reported_stuck():
        clock = awt.ManualClock()
        with awt.installed(clock=clock, stuck_task_after_s=60):
            task = asyncio.create_task(worker(asyncio.Event()), name="worker")  # never set
            await awt.settle()
            awt.scan()                      # the detector sees the wait begin...
            clock.advance(61)
            awt.scan()                      # ...and, a minute later, still there
            found = await awt.wait_for_finding("stuck_task", timeout=5)
            assert task.get_name() in found.tasks
            assert awt.snapshot().tasks["myapp.worker"].in_flight == 1

- ``ManualClock``: a clock that moves only when told to; pass it where asyncwatch takes a clock
  (``installed(clock=...)`` puts the deadlock and stuck-task detector on it).
- ``install()`` / ``installed()``: asyncwatch set up for tests: no exporter, internal errors
  raised instead of counted, every task timed, metrics readable through ``snapshot()``.
- ``snapshot()``: what asyncwatch recorded (tasks, metrics, findings) as a plain, frozen value.
- ``wait_for_finding()`` (async) and ``wait_for_finding_sync()``: the first finding of a kind,
  waited for on the detector's own signal, with a deadline; ``wait_until()`` polls any
  condition with a deadline.
- ``scan()``: one deadlock and stuck-task scan of the running loop, now.

Nothing here is imported by ``import asyncwatch``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import asyncwatch

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader

    from ._core.findings import Finding
    from ._watch import Watch
    from .tasks._stats import CoroutineStats

__all__ = [
    "TEST_SETTINGS",
    "ManualClock",
    "MetricPoint",
    "Snapshot",
    "install",
    "installed",
    "metrics",
    "point",
    "scan",
    "settle",
    "snapshot",
    "wait_for_finding",
    "wait_for_finding_sync",
    "wait_until",
]

T = TypeVar("T")


class ManualClock:
    """A monotonic clock that moves only when told to: ``clock()`` reads it, ``advance()``
    moves it. Usable wherever asyncwatch takes a ``Callable[[], float]`` clock."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward (never back); returns the new time."""
        if not seconds >= 0 or math.isinf(seconds):
            raise ValueError(f"advance({seconds!r}): a monotonic clock moves forward, finitely")
        self.now += seconds
        return self.now

    def __repr__(self) -> str:
        return f"ManualClock(now={self.now!r})"


# ---------------------------------------------------------------- install for tests

TEST_SETTINGS: Mapping[str, Any] = {
    "metrics_exporters": ("none",),
    "raise_errors": True,
    "timed_per_s": math.inf,
}
"""What ``install()`` sets unless told otherwise: no exporter (nothing listens on a port),
asyncwatch's internal errors raised rather than counted, every task's duration timed."""


def install(
    *,
    clock: Callable[[], float] | None = None,
    metric_reader: MetricReader | None = None,
    metric_readers: Sequence[MetricReader] = (),
    **settings: Any,
) -> Watch:
    """``asyncwatch.install()`` for a test: ``TEST_SETTINGS`` unless ``settings`` say
    otherwise, an in-memory metric reader attached (or ``metric_reader``) for ``snapshot()``,
    and any further ``metric_readers``.

    ``clock``: the clock the deadlock and stuck-task detector keeps time on (a
    ``ManualClock``, so a test can age a wait past ``stuck_task_after_s`` without waiting).
    Uninstall with ``asyncwatch.uninstall()``, or use ``installed()``.
    """
    if metric_reader is None:
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        metric_reader = InMemoryMetricReader()
    readers = [metric_reader, *metric_readers]
    watch = asyncwatch.install(metric_readers=readers, **{**TEST_SETTINGS, **settings})
    if clock is not None:
        watch.deadlocks.clock = clock
    return watch


@contextmanager
def installed(
    *,
    clock: Callable[[], float] | None = None,
    metric_reader: MetricReader | None = None,
    **settings: Any,
) -> Iterator[Watch]:
    """``install()`` for the body of a ``with`` block, uninstalled afterwards."""
    watch = install(clock=clock, metric_reader=metric_reader, **settings)
    try:
        yield watch
    finally:
        asyncwatch.uninstall(timeout_s=2)


def _watch() -> Watch:
    watch = asyncwatch.current()
    if watch is None:
        raise RuntimeError("asyncwatch is not installed (see asyncwatch.testing.install)")
    return watch


def scan(loop: asyncio.AbstractEventLoop | None = None) -> list[Finding]:
    """Scan ``loop`` (default: the running one) for deadlocks and stuck tasks now, from its
    own thread; returns the findings this scan made (also recorded, as a timed scan's are).

    A wait is judged once two scans have seen it, so a test scans, advances its clock past
    ``stuck_task_after_s`` if it waits for a stuck task, and scans again."""
    return list(_watch().deadlocks.scan(loop))


async def settle(rounds: int = 5) -> None:
    """Let freshly created tasks run up to their first real wait."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# ---------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class MetricPoint:
    """One data point of one metric, as plain values (a copy: later recording leaves it be).

    ``value`` for counters, up-down counters and gauges; ``count``, ``sum``, ``min``, ``max``,
    ``bucket_counts`` and ``explicit_bounds`` for histograms (``None``/empty otherwise)."""

    metric: str
    attributes: Mapping[str, Any]
    value: float | None = None
    count: int | None = None
    sum: float | None = None
    min: float | None = None
    max: float | None = None
    bucket_counts: tuple[int, ...] = ()
    explicit_bounds: tuple[float, ...] = ()


def metrics(reader: MetricReader) -> dict[str, list[MetricPoint]]:
    """Metric name -> its data points, from one collection of ``reader`` (an OpenTelemetry
    ``InMemoryMetricReader`` given to ``install(metric_readers=[...])``)."""
    collect = getattr(reader, "get_metrics_data", None)
    if collect is None:
        raise TypeError(f"{reader!r} cannot be read on demand (use an InMemoryMetricReader)")
    data = collect()
    out: dict[str, list[MetricPoint]] = {}
    if data is None:
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points = out.setdefault(metric.name, [])
                points.extend(_plain(metric.name, p) for p in metric.data.data_points)
    return out


def _plain(name: str, p: Any) -> MetricPoint:
    attributes = dict(p.attributes or {})
    if hasattr(p, "value"):
        return MetricPoint(name, attributes, value=p.value)
    return MetricPoint(
        name,
        attributes,
        count=p.count,
        sum=p.sum,
        min=getattr(p, "min", None),
        max=getattr(p, "max", None),
        bucket_counts=tuple(getattr(p, "bucket_counts", ())),
        explicit_bounds=tuple(getattr(p, "explicit_bounds", ())),
    )


def point(points: list[MetricPoint], /, **attributes: Any) -> MetricPoint:
    """The one point among ``points`` whose attributes include ``attributes`` (write a dot in
    an attribute name as ``__``: ``http__route="/items"``); AssertionError unless exactly one."""
    wanted = {k.replace("__", "."): v for k, v in attributes.items()}
    found = [p for p in points if all(p.attributes.get(k) == v for k, v in wanted.items())]
    if len(found) != 1:
        seen = [dict(p.attributes) for p in points]
        raise AssertionError(f"{len(found)} points match {wanted} among {seen}")
    return found[0]


@dataclass(frozen=True)
class Snapshot:
    """What asyncwatch had recorded at one moment, as plain frozen values.

    ``tasks``: per coroutine name, its ``CoroutineStats`` (created, in flight, peak, outcomes,
    duration and schedule-delay percentiles), as ``asyncwatch.stats()`` gives them.
    ``metrics``: metric name -> points (empty unless a reader was attached, as ``install()``
    does). ``findings``: every finding kept, oldest first, ungrouped."""

    tasks: Mapping[str, CoroutineStats] = field(default_factory=dict)
    metrics: Mapping[str, tuple[MetricPoint, ...]] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()

    def point(self, metric: str, /, **attributes: Any) -> MetricPoint:
        """The one point of ``metric`` whose attributes include ``attributes`` (see
        ``point()``); AssertionError if the metric was not recorded or not one point matches."""
        if metric not in self.metrics:
            raise AssertionError(f"no metric {metric!r} recorded (have: {sorted(self.metrics)})")
        return point(list(self.metrics[metric]), **attributes)

    def kinds(self) -> dict[str, int]:
        """How many findings of each kind are kept."""
        out: dict[str, int] = {}
        for finding in self.findings:
            out[finding.kind] = out.get(finding.kind, 0) + 1
        return out


def snapshot(reader: MetricReader | None = None) -> Snapshot:
    """What the installed asyncwatch has recorded now (empty when it is not installed).

    Metrics come from ``reader``, else from the first in-memory reader given to
    ``install()`` (``asyncwatch.testing.install`` attaches one); none: no metrics."""
    watch = asyncwatch.current()
    if watch is None:
        return Snapshot()
    if reader is None:  # the first reader attached that can be read on demand
        attached = getattr(watch.telemetry, "extra_readers", ())
        reader = next((r for r in attached if hasattr(r, "get_metrics_data")), None)
    collected = metrics(reader) if reader is not None else {}
    return Snapshot(
        tasks=dict(watch.stats().coroutines),
        metrics={name: tuple(points) for name, points in collected.items()},
        findings=tuple(watch.findings.list(grouped=False)),
    )


# ---------------------------------------------------------------- waiting


def _matches(kind: str, where: Callable[[Finding], bool] | None) -> Callable[[Finding], bool]:
    def match(finding: Finding) -> bool:
        return finding.kind == kind and (where is None or bool(where(finding)))

    return match


def _already(watch: Watch, match: Callable[[Finding], bool]) -> Finding | None:
    return next((f for f in reversed(watch.findings.list(grouped=False)) if match(f)), None)


async def wait_for_finding(
    kind: str, *, timeout: float = 10.0, where: Callable[[Finding], bool] | None = None
) -> Finding:
    """The newest finding of ``kind`` already kept (``where(finding)`` true, if given), else
    the first one made within ``timeout`` seconds; ``TimeoutError`` naming the kind if none.

    It waits on the detectors' own signal (no polling), and the loop stays free meanwhile, so
    the timed deadlock scans of this loop run. Kinds: ``"blocked_loop"``, ``"deadlock"``,
    ``"stuck_task"``, ..."""
    watch = _watch()
    match = _matches(kind, where)
    loop = asyncio.get_running_loop()
    arrived: asyncio.Future[Finding] = loop.create_future()

    def deliver(finding: Finding) -> None:
        if not arrived.done():
            arrived.set_result(finding)

    def listener(finding: Finding) -> None:  # called on whichever thread made the finding
        if match(finding) and not loop.is_closed():
            loop.call_soon_threadsafe(deliver, finding)

    watch.findings.listen(listener)
    try:
        found = _already(watch, match)
        if found is not None:
            return found
        try:
            return await asyncio.wait_for(arrived, timeout)
        except TimeoutError:
            raise TimeoutError(f"no {kind!r} finding within {timeout:g} s") from None
    finally:
        watch.findings.unlisten(listener)


def wait_for_finding_sync(
    kind: str, *, timeout: float = 10.0, where: Callable[[Finding], bool] | None = None
) -> Finding:
    """``wait_for_finding`` for code outside the event loop (a test that runs the app in
    another thread): it blocks this thread, so never call it on the watched loop's thread."""
    watch = _watch()
    match = _matches(kind, where)
    arrived = threading.Event()
    box: list[Finding] = []

    def listener(finding: Finding) -> None:
        if match(finding) and not box:
            box.append(finding)
            arrived.set()

    watch.findings.listen(listener)
    try:
        found = _already(watch, match)
        if found is not None:
            return found
        if not arrived.wait(timeout):
            raise TimeoutError(f"no {kind!r} finding within {timeout:g} s")
        return box[0]
    finally:
        watch.findings.unlisten(listener)


def wait_until(
    predicate: Callable[[], T | None], timeout: float = 20.0, what: str = "condition"
) -> T:
    """Poll ``predicate`` (from a thread other than the loop's) until it returns something
    truthy, and return that; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)  # polling with a deadline
        delay = min(delay * 2, 0.2)
