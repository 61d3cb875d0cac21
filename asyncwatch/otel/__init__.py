"""OpenTelemetry: the MeterProvider and exporters asyncwatch runs (the embedded ``/metrics``
endpoint, OTLP), spans' tracer, and the bridge that turns every subsystem's ``Point``s into
the SDK's data model at collection time.
"""
