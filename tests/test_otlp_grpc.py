"""OTLP over gRPC (issue 14.7): asyncwatch[otlp-grpc] (in [all]) brings the exporter; metrics
and spans reach a real gRPC receiver; a missing exporter names the right extra."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest

grpc = pytest.importorskip("grpc")

from opentelemetry.proto.collector.metrics.v1 import (  # noqa: E402
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import (  # noqa: E402
    trace_service_pb2,
    trace_service_pb2_grpc,
)

import asyncwatch  # noqa: E402

from .conftest import python_env, run_python, wait_for  # noqa: E402


class GrpcOtlpReceiver(
    metrics_service_pb2_grpc.MetricsServiceServicer, trace_service_pb2_grpc.TraceServiceServicer
):
    """A real OTLP/gRPC receiver (the collector's two services) on a loopback port."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.metric_names: list[set[str]] = []
        self.span_names: list[str] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self.server)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def Export(self, request: Any, context: Any) -> Any:  # the gRPC method name
        with self.lock:
            if isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest):
                self.metric_names.append(
                    {
                        m.name
                        for rm in request.resource_metrics
                        for sm in rm.scope_metrics
                        for m in sm.metrics
                    }
                )
                return metrics_service_pb2.ExportMetricsServiceResponse()
            self.span_names.extend(
                s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans
            )
            return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver() -> Iterator[GrpcOtlpReceiver]:
    r = GrpcOtlpReceiver()
    r.server.start()
    yield r
    r.server.stop(grace=None)


def test_grpc_metrics_and_spans_reach_a_real_receiver(
    monkeypatch: pytest.MonkeyPatch, receiver: GrpcOtlpReceiver
) -> None:
    """With otlp_protocol=grpc, task metrics and spans arrive at a real OTLP/gRPC server."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
    watch = asyncwatch.install(
        metrics_exporters=("otlp",),
        traces_exporters=("otlp",),
        otlp_protocol="grpc",
        task_spans=("*.job",),
        export_timeout_s=5,
    )

    async def job() -> None:
        await asyncio.sleep(0)

    asyncio.run(job())
    wait_for(
        lambda: any("asyncwatch.task.created" in names for names in receiver.metric_names),
        what="metrics over gRPC",
    )
    asyncwatch.uninstall(timeout_s=5)
    wait_for(lambda: any(n.endswith(".job") for n in receiver.span_names), what="the task span")
    assert not watch.drops.counts, watch.drops.counts


def test_missing_grpc_exporter_names_the_otlp_grpc_extra() -> None:
    """Without the gRPC exporter package, install() names asyncwatch[otlp-grpc] (the old
    message sent users to asyncwatch[otlp], which only brings HTTP)."""
    code = (
        "import sys\n"
        "sys.modules['opentelemetry.exporter.otlp.proto.grpc'] = None  # not installed\n"
        "import asyncwatch\n"
        "try:\n"
        "    asyncwatch.install(metrics_exporters=('otlp',), otlp_protocol='grpc')\n"
        "except asyncwatch.ConfigError as exc:\n"
        "    print(exc)\n"
    )
    result = run_python(code, env=python_env())
    assert result.returncode == 0, result.stderr
    assert "pip install asyncwatch[otlp-grpc]" in result.stdout, result.stdout
    assert "otlp_protocol=grpc" in result.stdout


def test_the_all_extra_brings_the_grpc_exporter() -> None:
    """pip install asyncwatch[all] (and [otlp-grpc]) installs the OTLP/gRPC exporter."""
    from importlib.metadata import requires

    reqs = requires("asyncwatch") or []
    assert any(
        r.startswith("opentelemetry-exporter-otlp-proto-grpc") and 'extra == "otlp-grpc"' in r
        for r in reqs
    ), reqs
    everything = next(r for r in reqs if r.startswith("asyncwatch[") and 'extra == "all"' in r)
    assert "otlp-grpc" in everything
