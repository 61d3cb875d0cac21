"""The parts of asyncwatch's telemetry that subclass or build OpenTelemetry SDK objects.

Imported only when an exporter or provider of asyncwatch's own is built (see ``_exporters``),
so a process that never exports does not load the SDK.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from ._guard import DropCounter, ExportGuard


class GuardedMetricExporter(MetricExporter):
    """A metric exporter whose every call is bounded by an ``ExportGuard``."""

    def __init__(self, inner: MetricExporter, guard: ExportGuard) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self.guard = guard

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Export in the guard; FAILURE (counted) if the exporter is slow or down."""
        limit = min(timeout_millis, self.guard.timeout_s * 1000)
        result = self.guard.call(
            lambda: self.inner.export(metrics_data, timeout_millis=limit, **kwargs), 1
        )
        self.guard.note(result is MetricExportResult.SUCCESS)
        if result is MetricExportResult.SUCCESS:
            return result
        if result is MetricExportResult.FAILURE:
            self.guard.drops.add("metrics", "rejected", 1)
        return MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Flush within the guard's deadline."""
        return bool(self.guard.call(lambda: self.inner.force_flush(timeout_millis), 0))

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Shut the inner exporter down within the guard's deadline."""
        self.guard.call(
            lambda: self.inner.shutdown(timeout_millis=timeout_millis, **kwargs) or True, 0
        )


class GuardedSpanExporter(SpanExporter):
    """A span exporter whose every call is bounded by an ``ExportGuard``."""

    def __init__(self, inner: SpanExporter, guard: ExportGuard) -> None:
        self.inner = inner
        self.guard = guard

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export in the guard; FAILURE (counted) if the exporter is slow or down."""
        result = self.guard.call(lambda: self.inner.export(spans), len(spans))
        self.guard.note(result is SpanExportResult.SUCCESS)
        if result is SpanExportResult.SUCCESS:
            return result
        if result is SpanExportResult.FAILURE:
            self.guard.drops.add("traces", "rejected", len(spans))
        return SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Flush within the guard's deadline."""
        return bool(self.guard.call(lambda: self.inner.force_flush(timeout_millis), 0))

    def shutdown(self) -> None:
        """Shut the inner exporter down within the guard's deadline."""

        def stop() -> bool:
            self.inner.shutdown()
            return True

        self.guard.call(stop, 0)


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor (bounded queue), counting the spans it drops when full."""

    def __init__(self, exporter: SpanExporter, drops: DropCounter, **kwargs: Any) -> None:
        super().__init__(exporter, **kwargs)
        self._aw_drops = drops

    def on_end(self, span: ReadableSpan) -> None:
        """Queue the span; count it if the queue is already full (the SDK then drops one)."""
        queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)
        if queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen:
            self._aw_drops.add("traces", "queue_full", 1)
        super().on_end(span)


def make_resource() -> Resource:
    """This process's resource: OTEL_* variables, plus pid and a per-process instance id."""
    attributes: dict[str, Any] = {
        "process.pid": os.getpid(),
        "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
    }
    named_in_env = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    if not named_in_env:
        script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
        attributes["service.name"] = f"unknown_service:{script or 'python'}"
    return Resource.create(attributes)
