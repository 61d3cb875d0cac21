"""OpenTelemetry set-up: the providers asyncwatch adopts or builds, their readers, and the
embedded ``/metrics`` endpoint (``Telemetry``).

* If the app already set SDK Meter/Tracer providers (itself, or through
  ``opentelemetry-instrument``), asyncwatch uses them: its metrics are merged into each of the
  app's metric readers, its spans go to the app's tracer provider, and it starts no exporter
  of its own. Otherwise it builds private providers (never global, so the app can still set
  its own later) with the exporters the configuration names.
* The embedded default is a Prometheus ``/metrics`` endpoint on 127.0.0.1:9464. A busy port
  is one clear log line (or the next free port within ``prometheus_port_span``), not a crash.
  Providers of asyncwatch's own that are only pulled from (this endpoint, the app's /metrics
  page) or that export nothing are built at their first use (first scrape, first span), so a
  short program never loads the SDK; push exporters are built at start. The endpoint stops
  at once (no poll interval), and a push exporter's final export is bounded like any other.
* Every push export runs through an ``ExportGuard`` (``_guard``): one export in flight at a
  time, on a worker thread, abandoned after ``export_timeout_s``; what could not be sent is
  counted in ``asyncwatch.export.dropped``. Shutdown is bounded the same way, so a dead,
  black-holed or resetting collector can neither block the app nor hold up its exit.

The exporters and readers the configuration names are built in ``_exporters``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._core.config import Config
from ._bridge import MetricsBridge
from ._exporters import check_exporters, push_readers, registry_reader, span_processors
from ._guard import DropCounter, exporter_log_filter, note_exit, run_with_deadline

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource

logger = logging.getLogger("asyncwatch")

# uninstall(timeout_s=...) is kept within these (inf: "as long as it takes", up to an hour)
_MIN_SHUTDOWN_S, _MAX_SHUTDOWN_S = 0.01, 3600.0


class Telemetry:
    """Owns the OTel providers, readers, exporters and the embedded endpoint."""

    def __init__(
        self,
        config: Config,
        bridge: MetricsBridge,
        drops: DropCounter,
        on_error: Callable[[str, BaseException], None],
        version: str,
        extra_readers: Sequence[Any] = (),
        tracer_provider: Any = None,
    ) -> None:
        self.config = config
        self.extra_readers = list(extra_readers)
        self.given_tracer_provider = tracer_provider
        self.bridge = bridge
        self.drops = drops
        self.on_error = on_error
        self.version = version
        self.resource: Resource | None = None
        self.meter_provider: Any = None
        self.tracer_provider: Any = None
        self.prometheus_url: str | None = None
        self._own_meter_provider = False
        self._own_tracer_provider = False
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self._wrapped_readers: list[tuple[Any, Any, Any]] = []
        self._tracer: Any = None
        self.started = False
        # Whether a span started now goes anywhere: the app's or a given tracer provider, or a
        # traces exporter of asyncwatch's own. Set by start(), read per request by the ASGI
        # middleware (a plain attribute: that check runs for every request).
        self.exports_spans = False
        # Filled by the Prometheus reader: what an app-served /metrics page renders.
        self._prometheus_registry: Any = None
        self._app_provider_reader: Any = None
        # Providers of asyncwatch's own that only pull (the /metrics endpoint, the app's
        # /metrics page) or export nothing are built at their first use, not at start: a
        # program that ends before anything scrapes it never loads the OpenTelemetry SDK.
        self._lock = threading.Lock()
        self._meter_deferred = False
        self._tracer_deferred = False

    @property
    def prometheus_registry(self) -> Any:
        """The ``CollectorRegistry`` an app-served /metrics page renders (None if none)."""
        self._ensure_meter_provider()
        return self._prometheus_registry

    # ---------------------------------------------------------------- start

    def check(self) -> None:
        """Fail fast (ConfigError) if a configured exporter's package is missing."""
        check_exporters(self.config)

    def start(self) -> None:
        """Build or adopt providers and start exporters. Idempotent.

        Only what pushes (OTLP, console, readers given to install()) is built here; a
        provider of asyncwatch's own that is only pulled from is built at its first use (the
        first scrape, the first task span), see ``_ensure_meter_provider``.
        """
        if self.started:
            return
        self.started = True
        self.resource = None
        # The app's provider can only be an SDK one if the app imported the SDK (or names one
        # in the environment): otherwise the API's modules are not even imported here.
        sdk_metrics = sys.modules.get("opentelemetry.sdk.metrics")
        existing: Any = None
        if sdk_metrics is not None or "OTEL_PYTHON_METER_PROVIDER" in os.environ:
            from opentelemetry import metrics

            existing = metrics.get_meter_provider()
            sdk_metrics = sys.modules.get("opentelemetry.sdk.metrics")
        if (
            sdk_metrics is not None
            and isinstance(existing, sdk_metrics.MeterProvider)
            and not self.extra_readers
        ):
            self.meter_provider = existing
            self._adopt_readers(existing)
        else:
            self._own_meter_provider = True
            chosen = self.config.metrics_exporters
            if "none" not in chosen and "prometheus" in chosen:
                self._serve_prometheus()
            pushes = "none" not in chosen and ("otlp" in chosen or "console" in chosen)
            if pushes or self.extra_readers:
                self._make_meter_provider()
            else:
                self._meter_deferred = True
        given = self.given_tracer_provider
        existing_tp = given
        sdk_trace = sys.modules.get("opentelemetry.sdk.trace")
        if given is None and (sdk_trace is not None or "OTEL_PYTHON_TRACER_PROVIDER" in os.environ):
            from opentelemetry import trace

            existing_tp = trace.get_tracer_provider()
            sdk_trace = sys.modules.get("opentelemetry.sdk.trace")
        if given is not None or (
            sdk_trace is not None and isinstance(existing_tp, sdk_trace.TracerProvider)
        ):
            self.tracer_provider = existing_tp
        else:
            self._own_tracer_provider = True
            if "none" in self.config.traces_exporters:
                self._tracer_deferred = True  # spans that go nowhere: made if one is wanted
            else:
                self._make_tracer_provider()
        self.exports_spans = (
            not self._own_tracer_provider or "none" not in self.config.traces_exporters
        )

    def _resource(self) -> Resource:
        if self.resource is None:
            from ._sdk import make_resource

            self.resource = make_resource()
        return self.resource

    def _make_meter_provider(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider

        resource = self._resource()
        readers: list[Any] = []
        chosen = self.config.metrics_exporters
        if ("none" not in chosen and "prometheus" in chosen) or self.config.http_metrics_path:
            # the embedded endpoint's, or (with no endpoint of ours) the app's own /metrics
            # page's Prometheus text
            reader, self._prometheus_registry = registry_reader()
            readers.append(reader)
        readers += push_readers(self.config, self.drops) + self.extra_readers
        self.meter_provider = MeterProvider(
            resource=resource, metric_readers=readers, shutdown_on_exit=False
        )
        for reader in readers:
            self._wrap_collect(reader, resource)

    def _make_tracer_provider(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        self.tracer_provider = TracerProvider(resource=self._resource(), shutdown_on_exit=False)
        for processor in span_processors(self.config, self.drops):
            self.tracer_provider.add_span_processor(processor)

    def _ensure_meter_provider(self) -> None:
        """Build the deferred MeterProvider now (first scrape or first read of the registry)."""
        if not self._meter_deferred:
            return
        with self._lock:
            if self._meter_deferred:
                self._make_meter_provider()
                self._meter_deferred = False  # only now: others wait on the lock till it is built

    def _served_registry(self) -> Any:
        """What the embedded endpoint serves: the registry, built at the first request."""
        try:
            self._ensure_meter_provider()
        except Exception as exc:
            self.on_error("telemetry_start", exc)
        return self._prometheus_registry

    def tracer(self) -> Any:
        """asyncwatch's tracer (from the app's provider if it set one)."""
        if self._tracer is None:
            if self._tracer_deferred:
                with self._lock:
                    if self._tracer_deferred:
                        self._make_tracer_provider()
                        self._tracer_deferred = False
            if self.tracer_provider is None:
                from opentelemetry import trace

                return trace.get_tracer("asyncwatch", self.version)
            self._tracer = self.tracer_provider.get_tracer("asyncwatch", self.version)
        return self._tracer

    def _serve_prometheus(self) -> None:
        """Open the embedded /metrics endpoint; what it serves is made at its first request."""
        from .._core.hostguard import start_metrics_server

        host, first = self.config.prometheus_host, self.config.prometheus_port
        ports = [0] if first == 0 else range(first, first + self.config.prometheus_port_span + 1)
        error: OSError | None = None
        for port in ports:
            try:
                self._server, self._server_thread = start_metrics_server(
                    host, port, self._served_registry, self.config.allowed_hosts
                )
            except OSError as exc:
                error = exc
                continue
            bound = self._server.server_port
            shown = f"[{host}]" if ":" in host else host
            self.prometheus_url = f"http://{shown}:{bound}/metrics"
            logger.info("asyncwatch: metrics at %s (pid %d)", self.prometheus_url, os.getpid())
            return
        last = list(ports)[-1]
        logger.warning(
            "asyncwatch: cannot serve /metrics on %s port %s%s (%s); metrics are still recorded. "
            "Set ASYNCWATCH_PROMETHEUS_PORT, or ASYNCWATCH_PROMETHEUS_PORT_SPAN to try further "
            "ports (one per worker process).",
            host,
            first,
            f"-{last}" if last != first else "",
            error,
        )

    def _adopt_readers(self, provider: MeterProvider) -> None:
        config = getattr(provider, "_sdk_config", None)
        readers = list(
            getattr(provider, "_metric_readers", None)
            or getattr(config, "metric_readers", ())
            or ()
        )
        resource = getattr(config, "resource", None) or self._resource()
        for reader in readers:
            self._wrap_collect(reader, resource)
        if self.config.http_metrics_path and hasattr(provider, "add_metric_reader"):
            reader, registry = registry_reader()
            provider.add_metric_reader(reader)
            self._wrap_collect(reader, resource)
            self._app_provider_reader = (provider, reader)
            self._prometheus_registry = registry
        elif not readers:
            logger.warning("asyncwatch: the app's MeterProvider has no readers; metrics stay local")

    def _wrap_collect(self, reader: Any, resource: Any) -> None:
        """Merge asyncwatch's metrics into everything ``reader`` collects.

        The SDK gives each reader a ``_collect`` callback (its provider's measurement
        consumer); wrapping it works the same for readers asyncwatch made and the app's own,
        and also when the SDK itself has no instruments (it then returns None).
        """
        original = reader._collect
        if original is None:
            return
        bridge, on_error, pid = self.bridge, self.on_error, os.getpid()

        def collect(_reader: Any, timeout_millis: float = 10_000) -> Any:
            if os.getpid() != pid:  # inherited through fork: the child merges through its own
                return original(_reader, timeout_millis=timeout_millis)
            try:
                data = original(_reader, timeout_millis=timeout_millis)
            except Exception as exc:  # the SDK's own part failed: still serve asyncwatch's
                on_error("collect:sdk", exc)
                data = None
            try:
                return bridge.merge(data, _reader, resource)
            except Exception as exc:
                on_error("collect", exc)
                return data

        reader._collect = collect
        self._wrapped_readers.append((reader, collect, original))

    # ---------------------------------------------------------------- stop

    def shutdown(self, timeout_s: float | None = None, *, at_exit: bool = False) -> None:
        """Stop everything asyncwatch started, within ``timeout_s`` in all. Idempotent.

        At interpreter exit the app's own readers stay wrapped: the app's provider shuts down
        after us (atexit runs last-registered first) and its final export should still carry
        asyncwatch's figures.
        """
        if not self.started:
            return
        self.started = False
        if at_exit:
            note_exit()
        with self._lock:  # nothing deferred is built from here on
            self._meter_deferred = self._tracer_deferred = False
        deadline = timeout_s if timeout_s is not None else self.config.export_timeout_s
        if math.isnan(deadline) or deadline < 0:
            deadline = self.config.export_timeout_s
        # inf would overflow the thread APIs; 0 makes the SDK's shutdown raise
        deadline = min(max(deadline, _MIN_SHUTDOWN_S), _MAX_SHUTDOWN_S)
        if not at_exit:
            self._unwrap_readers()
        self._prometheus_registry = None
        if self._app_provider_reader is not None:
            provider, reader = self._app_provider_reader
            self._app_provider_reader = None
            try:
                provider.remove_metric_reader(reader)
            except Exception as exc:
                self.on_error("shutdown", exc)
        server, thread = self._server, self._server_thread
        self._server = self._server_thread = None
        self.prometheus_url = None
        if server is not None:
            server.shutdown(deadline)  # returns at once: the server has no poll interval
            server.server_close()
            if thread is not None:
                thread.join(deadline)
        stops: list[Callable[[], Any]] = []
        if self._own_meter_provider and self.meter_provider is not None:
            meter_provider = self.meter_provider
            stops.append(lambda: meter_provider.shutdown(timeout_millis=deadline * 1000))
        if self._own_tracer_provider and self.tracer_provider is not None:
            stops.append(self.tracer_provider.shutdown)
        self.meter_provider = self.tracer_provider = self._tracer = None
        self.exports_spans = False
        self._own_meter_provider = self._own_tracer_provider = False
        if stops:

            def stop_all() -> None:
                for stop in stops:
                    try:
                        stop()
                    except Exception:  # e.g. the SDK's "deadline already exceeded"
                        logger.debug("asyncwatch: telemetry shutdown step failed", exc_info=True)

            run_with_deadline(stop_all, deadline, "telemetry shutdown")
        exporter_log_filter.last.clear()

    def _unwrap_readers(self) -> None:
        for reader, collect, original in self._wrapped_readers:
            if reader.__dict__.get("_collect") is collect:
                reader._collect = original
            self.bridge.forget(reader)
        self._wrapped_readers.clear()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's exporters without touching their threads."""
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.server_close()  # our copy of the parent's listening socket
        self._server = self._server_thread = None
        self.prometheus_url = None
        self._unwrap_readers()  # the app's readers are wrapped again on start
        self._prometheus_registry = self._app_provider_reader = None
        self._lock = threading.Lock()  # another thread may have held it at fork time
        self._meter_deferred = self._tracer_deferred = False
        self.resource = None
        self.meter_provider = self.tracer_provider = self._tracer = None
        self.exports_spans = False
        self._own_meter_provider = self._own_tracer_provider = False
        self.started = False
