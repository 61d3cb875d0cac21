"""asyncwatch's process metrics against opentelemetry-instrumentation-system-metrics.

    pip install opentelemetry-instrumentation-system-metrics   # not a dependency
    python benchmarks/process_metrics.py

Prints, for each: the import time it adds (asyncwatch's sampler is imported with asyncwatch
anyway, so 0), the median time of one collection, and the series one collection yields. The
instrumentor is configured with its process.* and cpython.* metrics only (asyncwatch exports
no system.* metrics). The docs' metric reference (docs/reference/metrics.md) gives the
figures and the decision.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

ROUNDS = 200

CHILD = r"""
import statistics, sys, time
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
import asyncwatch.otel._bridge
mode, rounds = sys.argv[1], int(sys.argv[2])
start = time.perf_counter()
if mode == "system-metrics":
    from opentelemetry.instrumentation import system_metrics as sm
    imported = time.perf_counter() - start
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    config = {k: v for k, v in sm._DEFAULT_CONFIG.items() if k.startswith(("process.", "cpython."))}
    sm.SystemMetricsInstrumentor(config=config).instrument(meter_provider=provider)
    def collect():
        data = reader.get_metrics_data()
        return [(m.name, p.attributes) for rm in data.resource_metrics for sm_ in rm.scope_metrics
                for m in sm_.metrics for p in m.data.data_points]
else:
    imported = 0.0
    sampler = asyncwatch.otel._bridge.ProcessSampler()
    def collect():
        return [(d.name, a) for d, a, _, _ in sampler.points()]
series = collect()
times = []
for _ in range(rounds):
    t = time.perf_counter(); collect(); times.append(time.perf_counter() - t)
names = sorted({name for name, _ in series})
median_us = statistics.median(times) * 1e6
print(f"{mode}|{imported * 1000:.0f}|{median_us:.0f}|{len(series)}|{len(names)}")
"""


def main() -> int:
    try:
        importlib.import_module("opentelemetry.instrumentation.system_metrics")
    except ImportError:
        print("pip install opentelemetry-instrumentation-system-metrics first")
        return 1
    print("| process metrics | import adds (ms) | one collection (us, median) | series | names |")
    print("|---|---|---|---|---|")
    for mode in ("asyncwatch", "system-metrics"):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(ROUNDS)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        print("| " + " | ".join(out.split("|")) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
