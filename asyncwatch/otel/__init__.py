"""OpenTelemetry: the MeterProvider and exporters asyncwatch runs (the embedded ``/metrics``
endpoint, OTLP), spans' tracer, and the bridge that turns every subsystem's ``Point``s into
the SDK's data model at collection time.
"""

from ._bridge import MetricsBridge, ProcessSampler
from ._guard import DropCounter
from ._telemetry import Telemetry

__all__ = ["DropCounter", "MetricsBridge", "ProcessSampler", "Telemetry"]
