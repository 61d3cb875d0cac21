"""What the configuration names, built: the readers of the metrics exporters, the span
processors of the traces exporters, the Prometheus reader and its registry, and the check
at install that each configured exporter's package is there (a ConfigError naming the extra
to install, not an ImportError at the first export). Push exporters are wrapped in an
``ExportGuard`` (see ``_guard``); the SDK classes themselves are imported only here, when
one is built.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .._core.config import Config, ConfigError
from ._guard import DropCounter, ExportGuard, exporter_log_filter

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter

# the extra that brings each protocol's exporter (asyncwatch[all] has both)
_OTLP_EXTRA = {"http_protobuf": "otlp", "grpc": "otlp-grpc"}

_OTLP_MODULES = {
    "http_protobuf": (
        "opentelemetry.exporter.otlp.proto.http.metric_exporter",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    ),
    "grpc": (
        "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    ),
}


def check_exporters(config: Config) -> None:
    """Fail fast (ConfigError) if a configured exporter's package is missing."""
    protocol = config.otlp_protocol.replace("/", "_")
    for exporter in config.metrics_exporters:
        if exporter == "otlp":
            _need(_OTLP_MODULES[protocol][0], _OTLP_EXTRA[protocol], "metrics exporter otlp")
        if exporter == "prometheus":
            # found, not loaded: it is loaded at the first scrape
            _need(
                "opentelemetry.exporter.prometheus",
                "all",
                "metrics exporter prometheus",
                load=False,
            )
    if "otlp" in config.traces_exporters:
        _need(_OTLP_MODULES[protocol][1], _OTLP_EXTRA[protocol], "traces exporter otlp")
    if "none" not in config.traces_exporters:
        _check_batch_settings()


def _need(module: str, extra: str, setting: str, *, load: bool = True) -> Any:
    """``module``, imported (``load``) or only found, or ConfigError naming ``setting``."""
    import importlib
    import importlib.util

    try:
        if load:
            return importlib.import_module(module)
        found = importlib.util.find_spec(module) is not None
    except ImportError:
        found = False
    if not found:
        if extra == "otlp-grpc":
            setting += " with otlp_protocol=grpc"
        raise ConfigError(f"{setting} needs `pip install asyncwatch[{extra}]` ({module})") from None
    return None


def _check_batch_settings() -> None:
    """The SDK's batch span processor rejects some OTEL_BSP_* combinations with a ValueError
    that names no variable; check them up front so install() fails with a clear message."""
    values = {}
    for name, default in (
        ("OTEL_BSP_MAX_QUEUE_SIZE", 2048),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
    ):
        raw = os.environ.get(name)
        try:
            values[name] = int(raw) if raw else default
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected a whole number") from None
        if values[name] <= 0:
            raise ConfigError(f"{name}={raw!r}: must be a positive whole number")
    if values["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] > values["OTEL_BSP_MAX_QUEUE_SIZE"]:
        raise ConfigError(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={values['OTEL_BSP_MAX_EXPORT_BATCH_SIZE']} must not "
            f"exceed OTEL_BSP_MAX_QUEUE_SIZE={values['OTEL_BSP_MAX_QUEUE_SIZE']}"
        )


def push_readers(config: Config, drops: DropCounter) -> list[Any]:
    """A guarded periodic reader for each metrics exporter that pushes (OTLP, console)."""
    readers: list[Any] = []
    chosen = config.metrics_exporters
    if "none" in chosen:
        return readers
    for exporter in ("otlp", "console"):
        if exporter in chosen:
            guard = ExportGuard("metrics", config.export_timeout_s, drops)
            inner = metric_exporter(config, exporter)
            exporter_log_filter.attach()
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            from ._sdk import GuardedMetricExporter

            readers.append(
                PeriodicExportingMetricReader(
                    GuardedMetricExporter(inner, guard),
                    export_timeout_millis=config.export_timeout_s * 1000,
                )
            )
    return readers


def metric_exporter(config: Config, kind: str) -> MetricExporter:
    """The SDK's metric exporter for ``kind`` (``otlp`` over the configured protocol, or
    ``console``)."""
    if kind == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    protocol = config.otlp_protocol.replace("/", "_")
    module = _need(_OTLP_MODULES[protocol][0], _OTLP_EXTRA[protocol], "metrics exporter otlp")
    exporter: MetricExporter = module.OTLPMetricExporter()
    return exporter


def span_processors(config: Config, drops: DropCounter) -> list[Any]:
    """A guarded, drop-counting batch processor for each configured traces exporter."""
    processors: list[Any] = []
    chosen = config.traces_exporters
    if "none" in chosen:
        return processors
    for kind in chosen:
        inner: SpanExporter
        if kind == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            inner = ConsoleSpanExporter()
        else:
            protocol = config.otlp_protocol.replace("/", "_")
            module = _need(
                _OTLP_MODULES[protocol][1], _OTLP_EXTRA[protocol], "traces exporter otlp"
            )
            inner = module.OTLPSpanExporter()
            exporter_log_filter.attach()
        guard = ExportGuard("traces", config.export_timeout_s, drops)
        from ._sdk import CountingBatchSpanProcessor, GuardedSpanExporter

        processors.append(
            CountingBatchSpanProcessor(
                GuardedSpanExporter(inner, guard),
                drops,
                export_timeout_millis=config.export_timeout_s * 1000,
            )
        )
    return processors


def registry_reader() -> tuple[Any, Any]:
    """A PrometheusMetricReader and the registry it fills."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=True)
    try:
        # otel_scope_* labels on every series add nothing here: one scope, ours
        reader = PrometheusMetricReader(registry=registry, scope_info_enabled=False)
    except TypeError:  # older exporter: no registry argument, uses the global one
        from prometheus_client import REGISTRY

        registry = REGISTRY
        reader = PrometheusMetricReader()
    return reader, registry
