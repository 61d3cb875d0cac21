"""OpenTelemetry export: names and values through the SDK, temporality, the real endpoint."""

from __future__ import annotations

import asyncio
import logging
import socket
import textwrap
import urllib.request
from typing import Any

import pytest
from opentelemetry.sdk.metrics import Counter, Histogram
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

import asyncwatch
from asyncwatch._core import names as n

from .conftest import collect, free_port, point, python_env, run_python

HERE = __name__


async def ok_task() -> None:
    await asyncio.sleep(0)


async def bad_task() -> None:
    raise ValueError("no")


async def workload() -> None:
    await asyncio.gather(*[ok_task() for _ in range(30)], bad_task(), return_exceptions=True)


def test_task_metrics_reach_an_otel_reader(
    watch: asyncwatch.Watch, reader: InMemoryMetricReader
) -> None:
    """Counts, outcomes and in-flight arrive under the documented names and attributes."""
    asyncio.run(workload())
    metrics = collect(reader)
    key = f"{HERE}.ok_task"
    assert point(metrics[n.TASK_CREATED.name], code__function__name=key).value == 30
    completed = metrics[n.TASK_COMPLETED.name]
    assert point(completed, code__function__name=key, asyncwatch__task__outcome="ok").value == 30
    failed = point(
        completed,
        code__function__name=f"{HERE}.bad_task",
        asyncwatch__task__outcome="error",
    )
    assert failed.value == 1
    assert failed.attributes[n.ERROR_TYPE] == "ValueError"
    assert point(metrics[n.TASK_IN_FLIGHT.name], code__function__name=key).value == 0
    assert point(metrics[n.TASK_PEAK.name], code__function__name=key).value == 30


def test_timing_histograms_use_the_documented_buckets(
    watch: asyncwatch.Watch, reader: InMemoryMetricReader
) -> None:
    """Duration and schedule delay are histograms on TIMING_BOUNDS, counting timed tasks."""
    asyncio.run(workload())
    metrics = collect(reader)
    for mdef in (n.TASK_DURATION, n.TASK_SCHEDULE_DELAY):
        p = point(metrics[mdef.name], code__function__name=f"{HERE}.ok_task")
        assert list(p.explicit_bounds) == list(n.TIMING_BOUNDS)
        assert p.count == 30 == sum(p.bucket_counts)
        assert p.sum > 0
        assert 0 <= p.min <= p.max


def test_process_metrics_are_exported(
    watch: asyncwatch.Watch, reader: InMemoryMetricReader
) -> None:
    """RSS, CPU time and GC collections follow the OTel semantic conventions."""
    metrics = collect(reader)
    assert metrics[n.PROCESS_MEMORY_USAGE.name][0].value > 0
    assert {p.attributes[n.CPU_MODE] for p in metrics[n.PROCESS_CPU_TIME.name]} == {
        "user",
        "system",
    }
    assert {p.attributes[n.GC_GENERATION] for p in metrics[n.GC_COLLECTIONS.name]} == {0, 1, 2}


def test_delta_reader_gets_differences() -> None:
    """A reader that prefers delta temporality sees only what happened since its last read."""
    reader = InMemoryMetricReader(
        preferred_temporality={
            Counter: AggregationTemporality.DELTA,
            Histogram: AggregationTemporality.DELTA,
        }
    )
    asyncwatch.install(
        metrics_exporters=("none",), timed_per_s=float("inf"), metric_readers=[reader]
    )
    asyncio.run(workload())
    first = point(collect(reader)[n.TASK_CREATED.name], code__function__name=f"{HERE}.ok_task")
    asyncio.run(workload())
    asyncio.run(workload())
    second = point(collect(reader)[n.TASK_CREATED.name], code__function__name=f"{HERE}.ok_task")
    assert (first.value, second.value) == (30, 60)
    hist = point(collect(reader)[n.TASK_DURATION.name], code__function__name=f"{HERE}.ok_task")
    assert hist.count == 0


def test_embedded_endpoint_serves_task_metrics() -> None:
    """A real HTTP scrape of the embedded endpoint shows the task metrics."""
    port = free_port()
    watch = asyncwatch.install(prometheus_port=port)
    assert watch.prometheus_url == f"http://127.0.0.1:{port}/metrics"
    asyncio.run(workload())
    with urllib.request.urlopen(watch.prometheus_url, timeout=10) as response:
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    created = families["asyncwatch_task_created"]
    values = {
        s.labels["code_function_name"]: s.value
        for s in created.samples
        if s.name.endswith("_total")
    }
    assert values[f"{HERE}.ok_task"] == 30
    assert "asyncwatch_task_duration_seconds" in families
    assert "target_info" in families


def test_endpoint_listens_on_loopback_only() -> None:
    """The default endpoint is not reachable through another local address."""
    port = free_port()
    asyncwatch.install(prometheus_port=port)
    with socket.socket() as s:
        s.connect(("127.0.0.1", port))
    host_ip = _non_loopback_address()
    if host_ip is None:
        pytest.skip("no non-loopback address on this machine")
    with socket.socket() as s:
        s.settimeout(5)
        with pytest.raises(OSError):
            s.connect((host_ip, port))


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for UDP connect
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else str(address)


def test_busy_port_is_a_log_line_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    """If the port is taken, install() logs which setting to change and keeps recording."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="asyncwatch"):
            watch = asyncwatch.install(prometheus_port=port)
        assert watch.prometheus_url is None
        assert any("ASYNCWATCH_PROMETHEUS_PORT" in r.message for r in caplog.records)
        asyncio.run(workload())
        assert asyncwatch.stats()[f"{HERE}.ok_task"].created == 30


def test_port_span_takes_the_next_free_port() -> None:
    """With prometheus_port_span, a busy port moves the endpoint to a following one."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        watch = asyncwatch.install(prometheus_port=port, prometheus_port_span=20)
        assert watch.prometheus_url is not None
        bound = int(watch.prometheus_url.rsplit(":", 1)[1].split("/")[0])
        assert port < bound <= port + 20


def test_internal_errors_are_a_metric(
    monkeypatch: pytest.MonkeyPatch, reader: InMemoryMetricReader
) -> None:
    """An internal error shows up in asyncwatch.internal.errors by hook."""
    from asyncwatch.tasks._recorder import Shard

    def broken(self: Shard, coro: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(Shard, "stats_for", broken)
    asyncwatch.install(metrics_exporters=("none",), metric_readers=[reader])
    asyncio.run(ok_task())
    errors = collect(reader)[n.INTERNAL_ERRORS.name]
    assert point(errors, asyncwatch__hook="task_factory").value >= 1


def test_apps_own_provider_is_used() -> None:
    """With a global SDK MeterProvider set by the app, asyncwatch merges into its readers."""
    code = textwrap.dedent(
        """
        import asyncio
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        metrics.get_meter("app").create_counter("app.requests").add(3)
        import asyncwatch
        watch = asyncwatch.install()
        async def job():
            pass
        asyncio.run(job())
        names = {m.name for rm in reader.get_metrics_data().resource_metrics
                 for sm in rm.scope_metrics for m in sm.metrics}
        print(sorted(names))
        print("endpoint", watch.prometheus_url)
        asyncwatch.uninstall()
        names = {m.name for rm in reader.get_metrics_data().resource_metrics
                 for sm in rm.scope_metrics for m in sm.metrics}
        print("after", sorted(names))
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "'app.requests'" in lines[0] and "'asyncwatch.task.created'" in lines[0]
    assert lines[1] == "endpoint None"
    assert "asyncwatch.task.created" not in lines[2]


def test_task_spans_nest_under_the_creator(reader: InMemoryMetricReader) -> None:
    """A spanned task is a child of the span current at creation, and current inside it."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    asyncwatch.install(
        metrics_exporters=("none",),
        task_spans=(f"{HERE}.spanned",),
        tracer_provider=provider,
        raise_errors=True,
    )
    tracer = provider.get_tracer("test")
    TRACERS["test"] = tracer

    async def main() -> None:
        with tracer.start_as_current_span("request"):
            await asyncio.create_task(spanned())
            await asyncio.create_task(ok_task())  # not matched: no span

    asyncio.run(main())
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"request", f"{HERE}.spanned", "inner-work"}
    task_span = spans[f"{HERE}.spanned"]
    assert task_span.parent is not None
    assert task_span.parent.span_id == spans["request"].context.span_id
    assert spans["inner-work"].parent is not None
    assert spans["inner-work"].parent.span_id == task_span.context.span_id
    assert task_span.attributes is not None
    assert task_span.attributes[n.OUTCOME] == "ok"
    assert str(task_span.attributes[n.TASK_NAME]).startswith("Task-")


TRACERS: dict[str, Any] = {}


async def spanned() -> None:
    with TRACERS["test"].start_as_current_span("inner-work"):
        await asyncio.sleep(0)


def test_failed_task_span_records_the_exception() -> None:
    """A spanned task that raises gets error status and the exception recorded."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    asyncwatch.install(metrics_exporters=("none",), task_span_ratio=1.0, tracer_provider=provider)

    async def main() -> None:
        await asyncio.gather(bad_task(), return_exceptions=True)

    asyncio.run(main())
    (span,) = [s for s in exporter.get_finished_spans() if s.name == f"{HERE}.bad_task"]
    assert span.status.status_code.name == "ERROR"
    assert any(e.name == "exception" for e in span.events)


def test_final_export_at_exit_without_uninstall() -> None:
    """An app that never calls uninstall() still gets its last metrics and spans out at exit,
    and nothing on stderr (3.12 refuses new threads in atexit handlers: that lost both)."""
    code = textwrap.dedent(
        """
        import asyncio, asyncwatch
        asyncwatch.install(
            metrics_exporters=("console",), traces_exporters=("console",), task_span_ratio=1.0
        )
        async def job():
            await asyncio.sleep(0)
        asyncio.run(job())
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert '"name": "asyncwatch.task.created"' in result.stdout
    assert '"name": "__main__.job"' in result.stdout


def test_dev_environment_variable_sets_metrics_exporter() -> None:
    """ASYNCWATCH_METRICS_EXPORTER=none starts no endpoint at all."""
    result = run_python(
        "import asyncwatch; w = asyncwatch.install(); print(w.prometheus_url)",
        env=python_env(ASYNCWATCH_METRICS_EXPORTER="none"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"


def test_apps_own_tracer_provider_is_used() -> None:
    """With a global SDK TracerProvider set by the app, task spans go to it."""
    code = textwrap.dedent(
        """
        import asyncio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        import asyncwatch
        asyncwatch.install(metrics_exporters=("none",), task_spans=("__main__.job",))
        async def job():
            pass
        asyncio.run(job())
        print(sorted(s.name for s in exporter.get_finished_spans()))
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['__main__.job']"
