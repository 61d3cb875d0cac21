"""Hand the Recorder's aggregates to OpenTelemetry at collection time.

The hot path never calls the OTel SDK. Instead each metric source yields ``Point``s (a
``MetricDef``, attributes and a value or histogram) when a reader collects, and
``MetricsBridge`` turns them into the SDK's own data model (``Metric``/``Sum``/``Histogram``)
and merges them into the batch the reader is about to export. Temporality follows what each
reader prefers: cumulative as recorded, or delta against that reader's previous collection.

Series budget: each distinct series (a histogram counts its buckets, sum and count) is
admitted once and then always exported on its own, until ``max_series`` are admitted. Points
of series that find the budget spent are folded, per metric, into one series whose every
attribute is ``_OTHER`` (counts and histograms added, gauges by their maximum), so a page
never holds much more than the budget whatever the app does. Series with no attributes are
always admitted: there is one of each.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._core import names as n
from .._core.points import SCOPE_NAME, Attrs, HistValue, Point, Source

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import Metric, MetricsData
    from opentelemetry.sdk.resources import Resource

# The OpenTelemetry SDK is imported where it is used (collection time), not here: a process
# whose metrics are never collected (a short script, a test interpreter) never loads it.

# the SDK instrument class each kind is recorded with, by name
_KIND_CLASS = {"counter": "Counter", "updowncounter": "UpDownCounter", "histogram": "Histogram"}


def _is_delta(prefs: Mapping[Any, Any], kind: str) -> bool:
    """Whether a reader wants ``kind`` as delta. Readers key their preferences by the SDK's
    internal instrument classes (``_Counter``...), so match on the class name."""
    wanted = _KIND_CLASS.get(kind)
    if wanted is None:
        return False
    for cls, temporality in prefs.items():
        if getattr(cls, "__name__", "").lstrip("_") == wanted:
            return getattr(temporality, "name", None) == "DELTA"
    return False


class MetricsBridge:
    """Collects every source into SDK ``Metric`` objects; see the module docstring."""

    def __init__(self, version: str, max_series: int = 3000) -> None:
        self.version = version
        self._scope: Any = None
        self.max_series = max_series
        # series admitted under the budget (metric name, sorted attributes), and their cost
        self._admitted: set[tuple[str, tuple[Any, ...]]] = set()
        self._admitted_cost = 0
        self._budget_logged = False
        self._sources: list[tuple[str, Source]] = []
        self._last: set[str] = set()
        self._lock = threading.Lock()
        # per reader (by id): previous cumulative value per (metric, attributes)
        self._previous: dict[int, dict[tuple[str, tuple[Any, ...]], Any]] = {}
        self.on_error: Callable[[str, BaseException], None] = lambda hook, exc: None

    @property
    def scope(self) -> Any:
        """asyncwatch's ``InstrumentationScope`` (made at the first collection)."""
        if self._scope is None:
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope

            self._scope = InstrumentationScope(SCOPE_NAME, self.version)
        return self._scope

    def add_source(self, name: str, source: Source, *, last: bool = False) -> None:
        """Register a callable that yields points at collection time (``last``: collected
        after the others, so the internal-errors source counts their failures in the same
        collection)."""
        with self._lock:
            if last:
                self._last.add(name)
            self._sources.append((name, source))
            self._sources.sort(key=lambda item: item[0] in self._last)  # stable: order kept

    def remove_source(self, name: str) -> None:
        """Forget the source registered under ``name``."""
        with self._lock:
            self._sources = [(k, s) for k, s in self._sources if k != name]
            self._last.discard(name)

    def points(self) -> list[Point]:
        """Every source's points now; a failing source is skipped and reported."""
        with self._lock:
            sources = list(self._sources)
        out: list[Point] = []
        for name, source in sources:
            try:
                out.extend(source())
            except Exception as exc:
                self.on_error(f"collect:{name}", exc)
        return out

    def metrics(self, reader: Any) -> list[Metric]:
        """The SDK metrics for one collection by ``reader`` (temporality as it prefers).

        Each source is isolated: one that raises, or yields a point that cannot be converted,
        is left out of this collection and counted (``collect:<source>`` in
        ``asyncwatch.internal.errors``); every other source is served.
        """
        from opentelemetry.sdk.metrics.export import AggregationTemporality, Gauge, Metric, Sum
        from opentelemetry.sdk.metrics.export import Histogram as HistogramData

        now = time.time_ns()
        prefs = getattr(reader, "_instrument_class_temporality", {})
        grouped: dict[str, tuple[n.MetricDef, list[Any]]] = {}
        with self._lock:
            previous = self._previous.setdefault(id(reader), {})
            sources = list(self._sources)
        for name, source in sources:
            try:
                converted = []
                for mdef, attrs, value, start in self._within_budget(list(source())):
                    delta = _is_delta(prefs, mdef.kind)
                    point = self._point(mdef, attrs, value, start, now, previous if delta else None)
                    if point is not None:
                        converted.append((mdef, point))
            except Exception as exc:
                self.on_error(f"collect:{name}", exc)
                continue
            for mdef, point in converted:
                grouped.setdefault(mdef.name, (mdef, []))[1].append(point)
        out = []
        for mdef, points in grouped.values():
            delta = _is_delta(prefs, mdef.kind)
            temporality = (
                AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
            )
            data: Any
            if mdef.kind == "histogram":
                data = HistogramData(points, temporality)
            elif mdef.kind == "gauge":
                data = Gauge(points)
            else:
                data = Sum(points, temporality, is_monotonic=mdef.kind == "counter")
            out.append(Metric(mdef.name, mdef.description, mdef.unit, data))
        return out

    def _within_budget(self, points: list[Point]) -> list[Point]:
        """``points`` with those of series beyond the budget folded; see the module docstring."""
        out: list[Point] = []
        folded: dict[str, Point] = {}
        with self._lock:
            for point in points:
                mdef, attrs, value, start = point
                if not attrs:
                    out.append(point)
                    continue
                key = (mdef.name, tuple(sorted(attrs.items())))
                if key not in self._admitted:
                    cost = len(value.counts) + 2 if isinstance(value, HistValue) else 1
                    if self._admitted_cost + cost > self.max_series:
                        other = folded.get(mdef.name)
                        folded[mdef.name] = point if other is None else _fold(other, point)
                        continue
                    self._admitted.add(key)
                    self._admitted_cost += cost
                out.append(point)
        if folded and not self._budget_logged:
            self._budget_logged = True
            logging.getLogger("asyncwatch").warning(
                "asyncwatch: %d metric series exported, the max_series budget; further series "
                "are folded into one _OTHER series per metric",
                self._admitted_cost,
            )
        for mdef, attrs, value, start in folded.values():
            point = (mdef, dict.fromkeys(attrs, n.OVERFLOW), value, start)
            # an admitted series may already be all _OTHER (a source's own overflow key)
            for i, same in enumerate(out):
                if same[0] is mdef and same[1] == point[1]:
                    out[i] = _fold(same, point)
                    break
            else:
                out.append(point)
        return out

    @staticmethod
    def _point(
        mdef: n.MetricDef,
        attrs: Attrs,
        value: int | float | HistValue,
        start: int,
        now: int,
        previous: dict[tuple[str, tuple[Any, ...]], Any] | None,
    ) -> Any:
        from opentelemetry.sdk.metrics.export import HistogramDataPoint, NumberDataPoint

        attributes = dict(attrs)
        if previous is not None:
            key = (mdef.name, tuple(sorted(attributes.items())))
            before = previous.get(key)
            previous[key] = (value, now)
            if before is not None:
                start = before[1]
                value = _minus(value, before[0])
        if isinstance(value, HistValue):
            return HistogramDataPoint(
                attributes=attributes,
                start_time_unix_nano=start,
                time_unix_nano=now,
                count=value.count,
                sum=value.sum,
                bucket_counts=list(value.counts),
                explicit_bounds=list(value.bounds),
                min=value.min,
                max=value.max,
            )
        return NumberDataPoint(
            attributes=attributes, start_time_unix_nano=start, time_unix_nano=now, value=value
        )

    def merge(self, data: MetricsData, reader: Any, resource: Resource) -> MetricsData:
        """``data`` with asyncwatch's metrics added under its own instrumentation scope."""
        from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics

        ours = ScopeMetrics(self.scope, self.metrics(reader), "")
        resource_metrics = list(data.resource_metrics) if data is not None else []
        if resource_metrics:
            first = resource_metrics[0]
            scopes = [s for s in first.scope_metrics if s.scope.name != SCOPE_NAME]
            resource_metrics[0] = ResourceMetrics(first.resource, [*scopes, ours], first.schema_url)
        else:
            resource_metrics = [ResourceMetrics(resource, [ours], "")]
        return MetricsData(resource_metrics)

    def forget(self, reader: Any) -> None:
        """Drop the delta state kept for ``reader``."""
        with self._lock:
            self._previous.pop(id(reader), None)

    def after_fork(self) -> None:
        """In a forked child: a new lock (another thread may have held this one at fork
        time, and would hold it forever). The sources and figures stay."""
        self._lock = threading.Lock()


def _fold(a: Point, b: Point) -> Point:
    """Two points of one metric as one: counts added, gauges by their maximum."""
    mdef, attrs, x, start = a
    y = b[2]
    value: int | float | HistValue
    if isinstance(x, HistValue) and isinstance(y, HistValue) and x.bounds == y.bounds:
        value = HistValue(
            x.bounds,
            tuple(i + j for i, j in zip(x.counts, y.counts, strict=True)),
            x.sum + y.sum,
            x.count + y.count,
            min(x.min, y.min),
            max(x.max, y.max),
        )
    elif isinstance(x, HistValue) or isinstance(y, HistValue):
        value = x  # one metric's histograms share their bounds; keep the first if not
    elif mdef.kind == "gauge":
        value = max(x, y)
    else:
        value = x + y
    return mdef, {**attrs, **b[1]}, value, min(start, b[3])


def _minus(
    now: int | float | HistValue, before: int | float | HistValue
) -> int | float | HistValue:
    if isinstance(now, HistValue) and isinstance(before, HistValue):
        return HistValue(
            now.bounds,
            tuple(a - b for a, b in zip(now.counts, before.counts, strict=True)),
            now.sum - before.sum,
            now.count - before.count,
            now.min,
            now.max,
        )
    if isinstance(now, HistValue) or isinstance(before, HistValue):
        raise TypeError("cannot subtract a histogram from a number")
    return now - before


# ---------------------------------------------------------------------------- task source


# ---------------------------------------------------------------------------- process source


class ProcessSampler:
    """Process metrics per the OpenTelemetry semantic conventions, read at collection time."""

    def __init__(self) -> None:
        self._pid = -1
        self._proc: Any = None
        self.started_ns = time.time_ns()

    def _process(self) -> Any:
        import psutil

        if self._pid != os.getpid():  # forked: measure the child, not the parent
            self._pid = os.getpid()
            self._proc = psutil.Process(self._pid)
            self.started_ns = time.time_ns()
        return self._proc

    def points(self) -> Iterable[Point]:
        """Current readings."""
        import psutil

        proc = self._process()
        start = self.started_ns
        with proc.oneshot():
            cpu = proc.cpu_times()
            yield n.PROCESS_CPU_TIME, {n.CPU_MODE: "user"}, cpu.user, start
            yield n.PROCESS_CPU_TIME, {n.CPU_MODE: "system"}, cpu.system, start
            mem = proc.memory_info()
            yield n.PROCESS_MEMORY_USAGE, {}, mem.rss, start
            yield n.PROCESS_MEMORY_VIRTUAL, {}, mem.vms, start
            yield n.PROCESS_THREADS, {}, proc.num_threads(), start
            if hasattr(proc, "num_fds"):
                yield n.PROCESS_OPEN_FDS, {}, proc.num_fds(), start
            switches = proc.num_ctx_switches()
            yield (
                n.PROCESS_CONTEXT_SWITCHES,
                {n.CONTEXT_SWITCH_TYPE: "voluntary"},
                switches.voluntary,
                start,
            )
            yield (
                n.PROCESS_CONTEXT_SWITCHES,
                {n.CONTEXT_SWITCH_TYPE: "involuntary"},
                switches.involuntary,
                start,
            )
        # USS needs /proc/<pid>/smaps; absent on some platforms and sandboxes
        with contextlib.suppress(psutil.AccessDenied, AttributeError, OSError):
            yield n.PROCESS_MEMORY_USS, {}, proc.memory_full_info().uss, start
        for generation, stat in enumerate(gc.get_stats()):
            attrs = {n.GC_GENERATION: generation}
            yield n.GC_COLLECTIONS, attrs, stat["collections"], start
            yield n.GC_COLLECTED, attrs, stat["collected"], start
            yield n.GC_UNCOLLECTABLE, attrs, stat["uncollectable"], start
